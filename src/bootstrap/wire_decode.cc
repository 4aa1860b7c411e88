// The bootstrap wire format's decoder (wire.h): headers, bodies and whole frames, trusting
// nothing. A BodyReader reads one body's fields in order and keeps the first failure.
#include <cstdio>
#include <string>
#include <utility>

#include "bootstrap/wire.h"

namespace m2n::bootstrap::wire {
namespace {

bool IsKnownType(uint16_t raw) {
  return raw >= static_cast<uint16_t>(MessageType::kHello) &&
         raw <= static_cast<uint16_t>(MessageType::kProof);
}

uint16_t LoadU16(const std::byte* p) {
  return static_cast<uint16_t>(std::to_integer<uint16_t>(p[0]) | std::to_integer<uint16_t>(p[1])
                                                                     << 8);
}
uint32_t LoadU32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | std::to_integer<uint32_t>(p[i]);
  return v;
}
uint64_t LoadU64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | std::to_integer<uint64_t>(p[i]);
  return v;
}

// Reads the fields of one body in order. The first failure is kept in status() and every later
// read fails too, so a decoder can read all fields and check once.
class BodyReader {
 public:
  BodyReader(MessageType type, std::span<const std::byte> body) : type_(type), body_(body) {}

  bool U16(const char* field, uint16_t* out) {
    const std::byte* p = Take(field, 2);
    if (p != nullptr) *out = LoadU16(p);
    return p != nullptr;
  }
  bool U32(const char* field, uint32_t* out) {
    const std::byte* p = Take(field, 4);
    if (p != nullptr) *out = LoadU32(p);
    return p != nullptr;
  }
  bool I32(const char* field, int32_t* out) {
    const std::byte* p = Take(field, 4);
    if (p != nullptr) *out = static_cast<int32_t>(LoadU32(p));
    return p != nullptr;
  }
  bool I64(const char* field, int64_t* out) {
    const std::byte* p = Take(field, 8);
    if (p != nullptr) *out = static_cast<int64_t>(LoadU64(p));
    return p != nullptr;
  }
  // A u32 count of items of at least `min_item_bytes` each, checked against `max` and against the
  // bytes left before the caller allocates anything for it.
  bool Count(const char* field, size_t max, size_t min_item_bytes, size_t* out) {
    uint32_t n = 0;
    if (!U32(field, &n)) return false;
    if (n > max) {
      Fail(std::string(field) + " of " + std::to_string(n) + " exceeds the maximum of " +
           std::to_string(max));
      return false;
    }
    size_t left = body_.size() - pos_;
    if (size_t{n} * min_item_bytes > left) {
      status_ = DataLossError("bootstrap: truncated " + MessageTypeName(type_) + " body: " + field +
                              " " + std::to_string(n) + " needs at least " +
                              std::to_string(n * min_item_bytes) + " bytes but only " +
                              std::to_string(left) + " remain");
      return false;
    }
    *out = n;
    return true;
  }
  bool Blob(const char* field, size_t max, Bytes* out) {
    size_t n = 0;
    if (!Count(field, max, 0, &n)) return false;  // Take() checks the bytes
    const std::byte* p = Take(field, n);
    if (p != nullptr) out->assign(p, p + n);
    return p != nullptr;
  }
  // A byte field that must be exactly `size` long (a nonce, a MAC).
  bool Fixed(const char* field, size_t size, Bytes* out) {
    if (!Blob(field, size, out)) return false;
    if (out->size() == size) return true;
    Fail(std::string(field) + " of " + std::to_string(out->size()) + " bytes; it must be " +
         std::to_string(size));
    return false;
  }
  bool String(const char* field, size_t max, std::string* out) {
    size_t n = 0;
    if (!Count(field, max, 0, &n)) return false;  // Take() checks the bytes
    const std::byte* p = Take(field, n);
    if (p != nullptr) out->assign(reinterpret_cast<const char*>(p), n);
    return p != nullptr;
  }

  // The result of the whole decode: the first failure, or kDataLoss if bytes are left over.
  Status Finish() {
    if (status_.ok() && pos_ != body_.size()) {
      Fail(std::to_string(body_.size() - pos_) + " unexpected bytes after the last field");
    }
    return status_;
  }

 private:
  const std::byte* Take(const char* field, size_t n) {
    if (!status_.ok()) return nullptr;
    size_t left = body_.size() - pos_;
    if (n > left) {
      status_ = DataLossError("bootstrap: truncated " + MessageTypeName(type_) + " body: '" +
                              field + "' needs " + std::to_string(n) + " bytes but only " +
                              std::to_string(left) + " remain");
      return nullptr;
    }
    const std::byte* p = body_.data() + pos_;
    pos_ += n;
    return p;
  }
  void Fail(const std::string& what) {
    if (status_.ok())
      status_ = DataLossError("bootstrap: bad " + MessageTypeName(type_) + " body: " + what);
  }

  MessageType type_;
  std::span<const std::byte> body_;
  size_t pos_ = 0;
  Status status_;
};

// One reader per body with fields; each leaves any failure in `r` for DecodeBody to check once.
Hello ReadHello(BodyReader& r) {
  Hello m;
  r.String("job_id", kMaxJobIdBytes, &m.job_id);
  r.I32("rank", &m.rank);
  r.I32("world_size", &m.world_size);
  r.Fixed("nonce", kNonceBytes, &m.nonce);
  return m;
}

StatusOr<ErrorReply> ReadError(BodyReader& r) {
  ErrorReply m;
  uint16_t code = 0;
  if (r.U16("code", &code) && !IsKnownErrorCode(code)) {
    return DataLossError("bootstrap: bad ERROR body: unknown status code " + std::to_string(code));
  }
  m.code = static_cast<StatusCode>(code);
  r.String("text", kMaxErrorTextBytes, &m.text);
  return m;
}

SetRequest ReadSet(BodyReader& r) {
  SetRequest m;
  r.String("key", kMaxKeyBytes, &m.key);
  r.Blob("value", kMaxValueBytes, &m.value);
  return m;
}

GetRequest ReadGet(BodyReader& r) {
  GetRequest m;
  r.String("key", kMaxKeyBytes, &m.key);
  r.I64("timeout_ms", &m.timeout_ms);
  return m;
}

AddRequest ReadAdd(BodyReader& r) {
  AddRequest m;
  r.String("key", kMaxKeyBytes, &m.key);
  r.I64("delta", &m.delta);
  return m;
}

WaitRequest ReadWait(BodyReader& r) {
  WaitRequest m;
  size_t n = 0;
  // Each key costs at least its length prefix, which bounds `n` by the bytes present.
  if (r.Count("key count", kMaxWaitKeys, kLengthBytes, &n)) {
    m.keys.resize(n);
    for (size_t i = 0; i < n && r.String("key", kMaxKeyBytes, &m.keys[i]); ++i) {
    }
  }
  r.I64("timeout_ms", &m.timeout_ms);
  return m;
}

RanksReply ReadRanks(BodyReader& r) {
  RanksReply m;
  size_t n = 0;
  if (r.Count("rank count", kMaxRanks, 4, &n)) {
    m.ranks.resize(n);
    for (size_t i = 0; i < n && r.I32("rank", &m.ranks[i]); ++i) {
    }
  }
  return m;
}

}  // namespace

StatusOr<FrameHeader> DecodeHeader(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderBytes) {
    return DataLossError("bootstrap: truncated frame header: " + std::to_string(bytes.size()) +
                         " of " + std::to_string(kHeaderBytes) + " bytes");
  }
  uint32_t magic = LoadU32(bytes.data());
  if (magic != kMagic) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%08x", magic);
    return DataLossError(std::string("bootstrap: bad magic ") + hex +
                         " (not an m2n bootstrap peer; expected 'M2NS')");
  }
  uint16_t version = LoadU16(bytes.data() + 4);
  if (version != kVersion) {
    return FailedPreconditionError("bootstrap: peer speaks protocol version " +
                                   std::to_string(version) + ", this build speaks " +
                                   std::to_string(kVersion));
  }
  uint16_t raw_type = LoadU16(bytes.data() + 6);
  if (!IsKnownType(raw_type)) {
    return DataLossError("bootstrap: unknown message type " + std::to_string(raw_type));
  }
  FrameHeader header{static_cast<MessageType>(raw_type), LoadU32(bytes.data() + 8)};
  size_t max = MaxBodyBytes(header.type);
  if (header.body_bytes > max) {
    return DataLossError("bootstrap: " + MessageTypeName(header.type) + " body of " +
                         std::to_string(header.body_bytes) + " bytes exceeds the maximum of " +
                         std::to_string(max));
  }
  return header;
}

// Longer than a screen on purpose: one case per message type, each a few reads, so that the whole
// wire format of the bodies reads in one place (splitting it would scatter the format).
StatusOr<Message> DecodeBody(MessageType type, std::span<const std::byte> body) {
  BodyReader r(type, body);
  Message message;
  switch (type) {
    case MessageType::kHello:
      message = ReadHello(r);
      break;
    case MessageType::kHelloOk:
      message = HelloOk{};
      break;
    case MessageType::kError: {
      M2N_ASSIGN_OR_RETURN(message, ReadError(r));
      break;
    }
    case MessageType::kOk:
      message = OkReply{};
      break;
    case MessageType::kSet:
      message = ReadSet(r);
      break;
    case MessageType::kGet:
      message = ReadGet(r);
      break;
    case MessageType::kValue: {
      ValueReply m;
      r.Blob("value", kMaxValueBytes, &m.value);
      message = std::move(m);
      break;
    }
    case MessageType::kAdd:
      message = ReadAdd(r);
      break;
    case MessageType::kInt: {
      IntReply m;
      r.I64("value", &m.value);
      message = m;
      break;
    }
    case MessageType::kWait:
      message = ReadWait(r);
      break;
    case MessageType::kDeadRanks:
      message = DeadRanksRequest{};
      break;
    case MessageType::kRanks:
      message = ReadRanks(r);
      break;
    case MessageType::kGoodbye:
      message = Goodbye{};
      break;
    case MessageType::kChallenge: {
      Challenge m;
      r.Fixed("nonce", kNonceBytes, &m.nonce);
      r.Fixed("mac", kMacBytes, &m.mac);
      message = std::move(m);
      break;
    }
    case MessageType::kProof: {
      Proof m;
      r.Fixed("mac", kMacBytes, &m.mac);
      message = std::move(m);
      break;
    }
    default:
      return DataLossError("bootstrap: unknown message type " +
                           std::to_string(static_cast<uint16_t>(type)));
  }
  M2N_RETURN_IF_ERROR(r.Finish());
  return message;
}

StatusOr<Message> DecodeFrame(std::span<const std::byte> frame) {
  M2N_ASSIGN_OR_RETURN(FrameHeader header, DecodeHeader(frame));
  std::span<const std::byte> rest = frame.subspan(kHeaderBytes);
  if (rest.size() < header.body_bytes) {
    return DataLossError("bootstrap: truncated " + MessageTypeName(header.type) +
                         " frame: body of " + std::to_string(header.body_bytes) +
                         " bytes announced, " + std::to_string(rest.size()) + " present");
  }
  if (rest.size() > header.body_bytes) {
    return DataLossError("bootstrap: " + std::to_string(rest.size() - header.body_bytes) +
                         " bytes after the end of a " + MessageTypeName(header.type) + " frame");
  }
  return DecodeBody(header.type, rest);
}

}  // namespace m2n::bootstrap::wire
