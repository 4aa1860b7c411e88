// Fuzzes the transports' decoders of bytes that come from a peer through the bootstrap store
// (transports/wire.h's WireReader and the formats built on it): a UCX connection address, a verbs
// connection address, a verbs remote key. Each decoder is pure: it parses and checks, and touches
// no device, so it can run here without UCX workers or an RDMA device.
//
// The first input byte picks the decoder, the rest is the peer's bytes. No input may crash or read
// out of bounds; an accepted one must re-encode to bytes that decode to the same fields.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz/fuzz_check.h"
#include "transports/wire.h"
#if M2N_FUZZ_UCX
#include "transports/ucx/endpoint.h"
#endif
#if M2N_FUZZ_VERBS
#include "transports/verbs/endpoint.h"
#include "transports/verbs/memory.h"
#endif

namespace m2n::transport {
namespace {

constexpr int kPeer = 1;

// WireReader on its own: reads of every width and a length-prefixed run, as the formats do.
void FuzzReader(std::span<const std::byte> bytes) {
  WireReader r(bytes);
  const auto n = r.Get<uint16_t>();
  (void)r.Get<uint8_t>();
  (void)r.Get<uint64_t>();
  std::span<const std::byte> run = r.GetBytes(n);
  if (r.ok()) {
    M2N_FUZZ_CHECK(run.size() == n);
    M2N_FUZZ_CHECK(run.data() >= bytes.data() &&
                   run.data() + run.size() <= bytes.data() + bytes.size());
  }
  M2N_FUZZ_CHECK(r.consumed() <= r.size());
  // Once failed, it stays failed.
  if (!r.ok()) {
    (void)r.Get<uint8_t>();
    M2N_FUZZ_CHECK(!r.ok());
  }
}

#if M2N_FUZZ_UCX
void FuzzUcxAddress(std::span<const std::byte> bytes) {
  StatusOr<ucx::PeerAddress> a = ucx::DecodePeerAddress(kPeer, bytes);
  if (!a.ok()) {
    M2N_FUZZ_CHECK(a.status().code() == StatusCode::kDataLoss);
    return;
  }
  Bytes again = ucx::EncodePeerAddress(*a);
  M2N_FUZZ_CHECK(again.size() == bytes.size());
  StatusOr<ucx::PeerAddress> b = ucx::DecodePeerAddress(kPeer, again);
  M2N_FUZZ_CHECK(b.ok());
  M2N_FUZZ_CHECK(b->src_rank == a->src_rank && b->dst_rank == a->dst_rank &&
                 b->max_unpolled == a->max_unpolled && b->err_mode == a->err_mode &&
                 b->ring_address == a->ring_address);
  auto same = [](std::span<const std::byte> x, std::span<const std::byte> y) {
    return x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin());
  };
  M2N_FUZZ_CHECK(same(b->host, a->host) && same(b->ring_rkey, a->ring_rkey));
  for (size_t lane = 0; lane < a->worker_address.size(); ++lane) {
    M2N_FUZZ_CHECK(same(b->worker_address[lane], a->worker_address[lane]));
  }
}
#endif

#if M2N_FUZZ_VERBS
void FuzzVerbsAddress(std::span<const std::byte> bytes) {
  StatusOr<verbs::PeerAddress> a = verbs::DecodePeerAddress(kPeer, bytes);
  if (!a.ok()) {
    M2N_FUZZ_CHECK(a.status().code() == StatusCode::kDataLoss);
    return;
  }
  Bytes again = verbs::EncodePeerAddress(*a);
  M2N_FUZZ_CHECK(again.size() == bytes.size());
  StatusOr<verbs::PeerAddress> b = verbs::DecodePeerAddress(kPeer, again);
  M2N_FUZZ_CHECK(b.ok());
  M2N_FUZZ_CHECK(b->src_rank == a->src_rank && b->dst_rank == a->dst_rank && b->mtu == a->mtu &&
                 b->lid == a->lid && b->qpn == a->qpn && b->psn == a->psn);
}

void FuzzVerbsKey(std::span<const std::byte> bytes) {
  auto region = verbs::VerbsRemoteRegion::Unpack(/*owner=*/nullptr, kPeer, bytes);
  if (!region.ok()) M2N_FUZZ_CHECK(region.status().code() == StatusCode::kDataLoss);
}
#endif

}  // namespace
}  // namespace m2n::transport

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::transport;
  if (size == 0) return 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      FuzzReader(bytes);
      break;
    case 1:
#if M2N_FUZZ_UCX
      FuzzUcxAddress(bytes);
#endif
      break;
    case 2:
#if M2N_FUZZ_VERBS
      FuzzVerbsAddress(bytes);
#endif
      break;
    case 3:
#if M2N_FUZZ_VERBS
      FuzzVerbsKey(bytes);
#endif
      break;
  }
  return 0;
}
