// A program outside m2n's tree that uses the installed package, built by tests/install/run.sh both
// through find_package(m2n) and through pkg-config. One process per rank; the rank and the store's
// address come from M2N_RANK / M2N_WORLD_SIZE / M2N_MASTER_PORT, as a launcher would set them.
// Every sender sends one message to every receiver, every receiver answers each sender, and both
// sides check every byte. Exit status 0 only when every byte matched.
#include <cstdio>
#include <cstring>
#include <vector>

#include <m2n/m2n.h>

namespace {

// The byte at `offset` of the message from `src` to `dst`: differs between every pair and offset.
std::byte Expected(int src, int dst, size_t offset) {
  return static_cast<std::byte>((src * 31 + dst * 7 + offset * 13 + offset / 251) & 0xff);
}

int Fail(const char* what, const m2n::Status& status) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, status.ToString().c_str());
  return 1;
}

}  // namespace

int main() {
  constexpr size_t kBytes = 3000;
  m2n::Options options{.num_senders = 2, .num_receivers = 2, .slot_bytes = 4096, .slot_depth = 2};
  auto created = m2n::Group::Create(options);
  if (!created.ok()) return Fail("Group::Create", created.status());
  m2n::Group& group = **created;
  const int rank = group.rank();
  std::vector<int> peers(group.peers().begin(), group.peers().end());
  std::vector<std::byte> buffer(kBytes * peers.size());
  auto region = group.RegisterMemory(buffer.data(), buffer.size());
  if (!region.ok()) return Fail("RegisterMemory", region.status());

  auto send_all = [&]() -> m2n::Status {
    std::vector<m2n::SendRequest> requests;
    for (size_t i = 0; i < peers.size(); ++i) {
      std::byte* data = buffer.data() + i * kBytes;
      for (size_t k = 0; k < kBytes; ++k) data[k] = Expected(rank, peers[i], k);
      requests.push_back({peers[i], data, kBytes});
    }
    return group.Send(requests, m2n::Deadline::AfterMs(20000));
  };
  auto receive_all = [&]() -> int {
    std::vector<m2n::Message> got(peers.size());
    m2n::Status s = group.Receive(peers, got, m2n::Deadline::AfterMs(20000));
    if (!s.ok()) return Fail("Receive", s);
    for (const m2n::Message& m : got) {
      if (m.length != kBytes) return Fail("Receive", m2n::DataLossError("wrong length"));
      for (size_t k = 0; k < kBytes; ++k) {
        if (m.data[k] != Expected(m.peer, rank, k)) {
          std::fprintf(stderr, "consumer: rank %d: byte %zu from rank %d is wrong\n", rank, k,
                       m.peer);
          return 1;
        }
      }
    }
    s = group.Release(got);
    return s.ok() ? 0 : Fail("Release", s);
  };

  const bool sender = group.role() == m2n::Role::kSender;
  if (sender) {
    if (m2n::Status s = send_all(); !s.ok()) return Fail("Send", s);
    if (receive_all() != 0) return 1;
  } else {
    if (receive_all() != 0) return 1;
    if (m2n::Status s = send_all(); !s.ok()) return Fail("Send", s);
  }
  if (m2n::Status s = group.Close(m2n::Deadline::AfterMs(20000)); !s.ok()) return Fail("Close", s);
  std::printf("consumer: rank %d of %d (%s, m2n %s): %zu bytes checked both ways over %s\n", rank,
              group.world_size(), sender ? "sender" : "receiver", m2n::kVersionString,
              kBytes * peers.size(), std::string(group.transport_name()).c_str());
  return 0;
}
