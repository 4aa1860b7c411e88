// Reading and writing routing traces (trace.h). Errors name the file and what is wrong in it.
#include "offload/trace.h"

#include <cstdint>
#include <cstring>
#include <fstream>

namespace moe::offload {
namespace {

constexpr char kMagic[8] = {'M', '2', 'N', 'T', 'R', 'A', 'C', 'E'};

class Reader {
 public:
  explicit Reader(const std::string& path) : in_(path, std::ios::binary) {}
  bool open() const { return static_cast<bool>(in_); }
  bool Bytes(void* out, size_t n) {
    return static_cast<bool>(in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n)));
  }
  bool Int(int32_t* v) { return Bytes(v, sizeof(*v)); }

 private:
  std::ifstream in_;
};

template <typename T>
void Put(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(v));
}

m2n::Status ReadRequest(Reader& r, const Trace& t, const std::string& what, TraceRequest* q) {
  int32_t kind_len = 0, held_out = 0, tokens = 0;
  if (!r.Int(&kind_len) || kind_len < 0 || kind_len > 256)
    return m2n::DataLossError(what + ": bad request kind");
  q->kind.resize(static_cast<size_t>(kind_len));
  if (!r.Bytes(q->kind.data(), q->kind.size()) || !r.Int(&held_out) || !r.Int(&tokens) ||
      tokens < 0 || tokens > (1 << 24)) {
    return m2n::DataLossError(what + ": truncated request header");
  }
  q->held_out = held_out != 0;
  q->tokens = tokens;
  q->embedding.resize(static_cast<size_t>(t.embed_dim));
  q->gates.resize(static_cast<size_t>(tokens) * static_cast<size_t>(t.layers) *
                  static_cast<size_t>(t.experts));
  if (!r.Bytes(q->embedding.data(), q->embedding.size() * 4) ||
      !r.Bytes(q->gates.data(), q->gates.size() * 4)) {
    return m2n::DataLossError(what + ": truncated (a request's gates end early)");
  }
  return m2n::OkStatus();
}

}  // namespace

m2n::StatusOr<Trace> ReadTrace(const std::string& path) {
  const std::string what = "trace " + path;
  Reader r(path);
  if (!r.open()) return m2n::NotFoundError(what + ": cannot open");
  char magic[8];
  int32_t version = 0, requests = 0;
  Trace t;
  if (!r.Bytes(magic, 8) || std::memcmp(magic, kMagic, 8) != 0)
    return m2n::InvalidArgumentError(what + ": not a routing trace (no M2NTRACE magic)");
  if (!r.Int(&version) || version != 1)
    return m2n::InvalidArgumentError(what + ": version " + std::to_string(version) +
                                     ", this build reads 1");
  if (!r.Int(&t.layers) || !r.Int(&t.experts) || !r.Int(&t.top_k) || !r.Int(&t.embed_dim) ||
      !r.Int(&requests) || t.layers <= 0 || t.experts <= 0 || t.top_k <= 0 || t.top_k > t.experts ||
      t.embed_dim < 0 || requests < 0) {
    return m2n::DataLossError(what + ": bad header");
  }
  t.requests.resize(static_cast<size_t>(requests));
  for (TraceRequest& q : t.requests) {
    if (auto s = ReadRequest(r, t, what, &q); !s.ok()) return s;
  }
  return t;
}

m2n::Status WriteTrace(const std::string& path, const Trace& t) {
  std::ofstream out(path, std::ios::binary);
  if (!out) return m2n::UnavailableError("trace " + path + ": cannot create");
  out.write(kMagic, 8);
  Put(out, uint32_t{1});
  for (int v : {t.layers, t.experts, t.top_k, t.embed_dim, static_cast<int>(t.requests.size())})
    Put(out, int32_t{v});
  for (const TraceRequest& q : t.requests) {
    Put(out, static_cast<int32_t>(q.kind.size()));
    out.write(q.kind.data(), static_cast<std::streamsize>(q.kind.size()));
    Put(out, int32_t{q.held_out ? 1 : 0});
    Put(out, int32_t{q.tokens});
    out.write(reinterpret_cast<const char*>(q.embedding.data()),
              static_cast<std::streamsize>(q.embedding.size() * 4));
    out.write(reinterpret_cast<const char*>(q.gates.data()),
              static_cast<std::streamsize>(q.gates.size() * 4));
  }
  if (!out) return m2n::UnavailableError("trace " + path + ": write failed");
  return m2n::OkStatus();
}

}  // namespace moe::offload
