// Writes the seed corpora under fuzz/corpus/<target>/ from the real encoders, so the seeds are
// frames and addresses this build actually sends (plus a few classic bad ones). Run it after a
// format changes:  cmake --build build --target fuzz_make_corpus && build/fuzz/fuzz_make_corpus
// fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bootstrap/wire.h"
#include "protocol/config_check.h"
#include "transports/wire.h"
#if M2N_FUZZ_UCX
#include "transports/ucx/endpoint.h"
#endif
#if M2N_FUZZ_VERBS
#include "transports/verbs/endpoint.h"
#endif

namespace m2n {
namespace {

namespace fs = std::filesystem;
using bootstrap::Bytes;
namespace wire = bootstrap::wire;

Bytes ToBytes(const std::string& s) {
  Bytes out(s.size());
  for (size_t i = 0; i < s.size(); ++i) out[i] = static_cast<std::byte>(s[i]);
  return out;
}

class Writer {
 public:
  explicit Writer(fs::path root) : root_(std::move(root)) {}
  void Write(const std::string& target, const std::string& name, const Bytes& bytes) {
    fs::create_directories(root_ / target);
    std::ofstream out(root_ / target / name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s/%s\n", target.c_str(), name.c_str());
      ok_ = false;
    }
    ++written_;
  }
  bool ok() const { return ok_; }
  int written() const { return written_; }

 private:
  fs::path root_;
  bool ok_ = true;
  int written_ = 0;
};

Bytes Frame(const wire::Message& message) {
  StatusOr<Bytes> frame = wire::EncodeFrame(message);
  if (!frame.ok()) {
    std::fprintf(stderr, "cannot encode a seed: %s\n", frame.status().ToString().c_str());
    std::exit(1);
  }
  return *frame;
}

// A nonce or MAC-sized field of one repeated byte.
Bytes Nonce(uint8_t fill) { return Bytes(wire::kNonceBytes, std::byte{fill}); }

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

void StoreFrames(Writer& w) {
  const std::string t = "store_frame";
  const wire::Hello hello{"m2n@127.0.0.1:29500", 1, 4, Nonce(0x4e)};
  w.Write(t, "hello", Frame(hello));
  w.Write(t, "challenge", Frame(wire::Challenge{Nonce(0x53), Nonce(0xa5)}));
  w.Write(t, "proof", Frame(wire::Proof{Nonce(0x5a)}));
  w.Write(t, "hello_ok", Frame(wire::HelloOk{}));
  w.Write(t, "error",
          Frame(wire::ErrorReply{StatusCode::kDeadlineExceeded, "timed out; still missing: 'k'"}));
  w.Write(t, "ok", Frame(wire::OkReply{}));
  w.Write(t, "set", Frame(wire::SetRequest{"m2n/addr/0/2", ToBytes("address bytes")}));
  w.Write(t, "get", Frame(wire::GetRequest{"m2n/slots/2", 30000}));
  w.Write(t, "value", Frame(wire::ValueReply{ToBytes("value")}));
  w.Write(t, "add", Frame(wire::AddRequest{"m2n/barrier/connected", 1}));
  w.Write(t, "int", Frame(wire::IntReply{4}));
  w.Write(t, "wait", Frame(wire::WaitRequest{{"a", "bb", "ccc"}, 1000}));
  w.Write(t, "dead_ranks", Frame(wire::DeadRanksRequest{}));
  w.Write(t, "ranks", Frame(wire::RanksReply{{1, 3}}));
  w.Write(t, "goodbye", Frame(wire::Goodbye{}));
  // A client's whole session as one stream, and the stream cut mid-frame.
  Bytes session = Concat({Frame(hello), Frame(wire::SetRequest{"k", ToBytes("v")}),
                          Frame(wire::GetRequest{"k", 0}), Frame(wire::Goodbye{})});
  w.Write(t, "session", session);
  w.Write(t, "session_truncated", Bytes(session.begin(), session.end() - 5));
  // Bad ones: another version, an oversize length, a body longer than its fields, not m2n at all.
  Bytes version = Frame(hello);
  version[4] = std::byte{1};
  w.Write(t, "bad_version", version);
  Bytes oversize = Frame(wire::SetRequest{"k", ToBytes("v")});
  for (int i = 0; i < 4; ++i) oversize[8 + i] = std::byte{0xff};
  w.Write(t, "bad_oversize_length", oversize);
  Bytes padded = Frame(wire::GetRequest{"k", 0});
  padded.push_back(std::byte{0});
  padded[8] = static_cast<std::byte>(std::to_integer<int>(padded[8]) + 1);
  w.Write(t, "bad_trailing_byte", padded);
  w.Write(t, "bad_http", ToBytes("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
}

// A connection's bytes for store_session: byte 0 bit 0 set = after the handshake of rank byte 1.
void StoreSessions(Writer& w) {
  const std::string t = "store_session";
  auto after_hello = [](uint8_t rank, std::initializer_list<Bytes> frames) {
    Bytes out{std::byte{1}, static_cast<std::byte>(rank)};
    for (const Bytes& f : frames) out.insert(out.end(), f.begin(), f.end());
    return out;
  };
  auto bare = [](const Bytes& bytes) {
    Bytes out{std::byte{0}, std::byte{0}};
    out.insert(out.end(), bytes.begin(), bytes.end());
    return out;
  };
  w.Write(t, "set_get",
          after_hello(
              1, {Frame(wire::SetRequest{"k", ToBytes("v")}), Frame(wire::GetRequest{"k", 0})}));
  w.Write(t, "add_add",
          after_hello(2, {Frame(wire::AddRequest{"n", 1}), Frame(wire::AddRequest{"n", -3})}));
  w.Write(t, "wait_missing", after_hello(3, {Frame(wire::WaitRequest{{"a", "b"}, 50})}));
  w.Write(t, "get_held_then_close", after_hello(0, {Frame(wire::GetRequest{"never", 100000})}));
  w.Write(t, "dead_ranks_goodbye",
          after_hello(1, {Frame(wire::DeadRanksRequest{}), Frame(wire::Goodbye{})}));
  w.Write(t, "second_hello", after_hello(1, {Frame(wire::Hello{"fuzz-job", 2, 4, Nonce(1)})}));
  w.Write(t, "second_proof", after_hello(1, {Frame(wire::Proof{Nonce(2)})}));
  w.Write(t, "server_only_type", after_hello(1, {Frame(wire::OkReply{})}));
  w.Write(t, "stranger_hello_other_job", bare(Frame(wire::Hello{"other-job", 1, 4, Nonce(3)})));
  w.Write(t, "stranger_set", bare(Frame(wire::SetRequest{"k", ToBytes("v")})));
  w.Write(t, "stranger_noise", bare(ToBytes("GET / HTTP/1.1\r\n\r\n")));
}

// A connection's bytes for store_hello: byte 0 % 3 picks bare, after a HELLO of the job as rank
// byte 1 % 6 - 1 (its PROOF is the fuzzer's), or after a HELLO of another job / world size.
void StoreHellos(Writer& w) {
  const std::string t = "store_hello";
  auto start = [](uint8_t how, uint8_t rank, std::initializer_list<Bytes> frames) {
    Bytes out{static_cast<std::byte>(how), static_cast<std::byte>(rank)};
    for (const Bytes& f : frames) out.insert(out.end(), f.begin(), f.end());
    return out;
  };
  const Bytes hello = Frame(wire::Hello{"fuzz-hello-job", 1, 4, Nonce(7)});
  w.Write(t, "bare_hello_and_guessed_proof", start(0, 0, {hello, Frame(wire::Proof{Nonce(0)})}));
  w.Write(t, "bare_proof_first", start(0, 0, {Frame(wire::Proof{Nonce(9)})}));
  w.Write(t, "bare_set", start(0, 0, {Frame(wire::SetRequest{"m2n/addr/0/1", ToBytes("evil")})}));
  w.Write(t, "wrong_proof", start(1, 2, {Frame(wire::Proof{Nonce(0)})}));
  w.Write(t, "set_instead_of_proof",
          start(1, 3, {Frame(wire::SetRequest{"m2n/addr/1/0", ToBytes("evil")})}));
  w.Write(t, "second_hello_instead_of_proof", start(1, 4, {hello}));
  w.Write(t, "proof_then_requests",
          start(1, 1,
                {Frame(wire::Proof{Nonce(1)}), Frame(wire::GetRequest{"k", 0}),
                 Frame(wire::Goodbye{})}));
  w.Write(t, "rank_outside_world", start(1, 5, {}));
  const Bytes proof = Frame(wire::Proof{Nonce(0)});
  w.Write(t, "half_proof", start(1, 2, {Bytes(proof.begin(), proof.begin() + 20)}));
  w.Write(t, "other_job", start(2, 1, {}));
  w.Write(t, "other_world_size", start(2, 0, {}));
}

void Config(Writer& w) {
  const std::string t = "config";
  const protocol::Fingerprint fp = {{"m2n_version", "0.1.0"},  {"world_size", "4"},
                                    {"num_senders", "2"},      {"num_receivers", "2"},
                                    {"slot_bytes", "4194304"}, {"slot_depth", "4"},
                                    {"transport", "ucx"},      {"slot_memory", "host"},
                                    {"checksum", "off"},       {"immediate_format", "2"}};
  protocol::Fingerprint other = fp;
  other[4].second = "8192";
  // A build that encodes immediates another way (src/protocol/immediate.h kImmediateFormat).
  protocol::Fingerprint other_format = fp;
  other_format.back().second = "1";
  const std::string text = protocol::EncodeFingerprint(fp);
  w.Write(t, "one", ToBytes(text));
  w.Write(t, "two_equal", ToBytes(text + '\0' + text));
  w.Write(t, "two_differ", ToBytes(text + '\0' + protocol::EncodeFingerprint(other)));
  w.Write(t, "two_sizes", ToBytes(text + '\0' + "m2n_version=0.1.0\n"));
  w.Write(t, "two_immediate_formats",
          ToBytes(text + '\0' + protocol::EncodeFingerprint(other_format)));
  w.Write(t, "bad_truncated", ToBytes(text.substr(0, text.size() - 3)));
  w.Write(t, "bad_no_field", ToBytes("=4\n"));
}

void TransportWire(Writer& w) {
  const std::string t = "transport_wire";
  auto tagged = [](uint8_t which, const Bytes& body) {
    Bytes out{static_cast<std::byte>(which)};
    out.insert(out.end(), body.begin(), body.end());
    return out;
  };
  Bytes reader_seed;
  transport::WireWriter rw(reader_seed);
  rw.Put<uint16_t>(3);
  rw.Put<uint8_t>(1);
  rw.Put<uint64_t>(42);
  rw.PutBytes(ToBytes("abc"));
  w.Write(t, "reader", tagged(0, reader_seed));
#if M2N_FUZZ_UCX
  {
    const Bytes host = ToBytes("host-a/boot-id");
    const Bytes rkey = ToBytes("packed rkey bytes");
    const Bytes worker = ToBytes("worker address bytes");
    transport::ucx::PeerAddress a;
    a.src_rank = 0;
    a.dst_rank = 2;
    a.max_unpolled = 64;
    a.host = host;
    a.ring_rkey = rkey;
    for (auto& lane : a.worker_address) lane = worker;
    for (size_t i = 0; i < a.ring_address.size(); ++i)
      a.ring_address[i] = 0x7f0000001000 + 4096 * i;
    const Bytes encoded = transport::ucx::EncodePeerAddress(a);
    w.Write(t, "ucx_address", tagged(1, encoded));
    w.Write(t, "ucx_address_truncated", tagged(1, Bytes(encoded.begin(), encoded.end() - 7)));
  }
#endif
#if M2N_FUZZ_VERBS
  {
    transport::verbs::PeerAddress a;
    a.src_rank = 1;
    a.dst_rank = 3;
    a.max_unpolled = 32;
    a.link_layer = 2;
    a.mtu = 3;
    a.lid = 0;
    for (int i = 0; i < 16; ++i) a.gid.raw[i] = static_cast<uint8_t>(i);
    a.qpn.fill(0x123);
    a.psn.fill(0x456);
    const Bytes encoded = transport::verbs::EncodePeerAddress(a);
    w.Write(t, "verbs_address", tagged(2, encoded));
    w.Write(t, "verbs_address_truncated", tagged(2, Bytes(encoded.begin(), encoded.end() - 4)));
    a.num_qps = transport::verbs::kMaxQps;  // with the stream path's QPs
    w.Write(t, "verbs_address_stream", tagged(2, transport::verbs::EncodePeerAddress(a)));
  }
  {
    // A verbs remote key: "M2NK", version 1, pad, address, size, rkey (memory.cc).
    Bytes key;
    transport::WireWriter kw(key);
    kw.Put<uint32_t>(0x4B4E324D);
    kw.Put<uint16_t>(1);
    kw.Put<uint16_t>(0);
    kw.Put<uint64_t>(0x7f0000002000);
    kw.Put<uint64_t>(1 << 20);
    kw.Put<uint32_t>(0x1234);
    w.Write(t, "verbs_key", tagged(3, key));
  }
#endif
}

}  // namespace
}  // namespace m2n

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT   (e.g. fuzz/corpus)\n", argv[0]);
    return 2;
  }
  m2n::Writer w{std::filesystem::path(argv[1])};
  m2n::StoreFrames(w);
  m2n::StoreSessions(w);
  m2n::StoreHellos(w);
  m2n::Config(w);
  m2n::TransportWire(w);
  std::printf("%d seeds written under %s\n", w.written(), argv[1]);
  return w.ok() ? 0 : 1;
}
