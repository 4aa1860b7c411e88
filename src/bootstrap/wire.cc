#include "bootstrap/wire.h"

#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

namespace m2n::bootstrap::wire {
namespace {

constexpr size_t kLengthBytes = 4;  // the u32 before every string, byte value and list

// Body limits per type, from the field limits: a string costs its length prefix plus its bytes.
constexpr size_t kMaxHelloBody = kLengthBytes + kMaxJobIdBytes + 4 + 4;
constexpr size_t kMaxErrorBody = 2 + kLengthBytes + kMaxErrorTextBytes;
constexpr size_t kMaxSetBody = kLengthBytes + kMaxKeyBytes + kLengthBytes + kMaxValueBytes;
constexpr size_t kMaxKeyAndI64Body = kLengthBytes + kMaxKeyBytes + 8;
constexpr size_t kMaxValueBody = kLengthBytes + kMaxValueBytes;
constexpr size_t kMaxWaitBody = kLengthBytes + kMaxWaitKeys * (kLengthBytes + kMaxKeyBytes) + 8;
constexpr size_t kMaxRanksBody = kLengthBytes + kMaxRanks * 4;
static_assert(kMaxSetBody <= UINT32_MAX, "a body length must fit the header's u32");
static_assert(kHeaderBytes + kMaxSetBody == kMaxFrameBytes);
static_assert(kMaxWaitBody <= kMaxSetBody && kMaxRanksBody <= kMaxSetBody && kMaxErrorBody <= kMaxSetBody,
              "SET must be the largest frame");

bool IsKnownType(uint16_t raw) {
  return raw >= static_cast<uint16_t>(MessageType::kHello) &&
         raw <= static_cast<uint16_t>(MessageType::kGoodbye);
}

// The codes an ERROR may carry: every non-OK code of status.h.
bool IsKnownErrorCode(uint16_t raw) {
  switch (static_cast<StatusCode>(raw)) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kNotFound:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kAborted:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented:
    case StatusCode::kInternal:
    case StatusCode::kUnavailable:
    case StatusCode::kDataLoss:
      return true;
    case StatusCode::kOk:
      return false;
  }
  return false;
}

void PutU16(Bytes& out, uint16_t v) {
  out.push_back(static_cast<std::byte>(v));
  out.push_back(static_cast<std::byte>(v >> 8));
}
void PutU32(Bytes& out, uint32_t v) {
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<std::byte>(v >> shift));
}
void PutU64(Bytes& out, uint64_t v) {
  for (int shift = 0; shift < 64; shift += 8) out.push_back(static_cast<std::byte>(v >> shift));
}
void PutI32(Bytes& out, int32_t v) { PutU32(out, static_cast<uint32_t>(v)); }
void PutI64(Bytes& out, int64_t v) { PutU64(out, static_cast<uint64_t>(v)); }
void PutBytes(Bytes& out, std::span<const std::byte> bytes) {
  PutU32(out, static_cast<uint32_t>(bytes.size()));
  out.insert(out.end(), bytes.begin(), bytes.end());
}
void PutString(Bytes& out, std::string_view s) {
  PutBytes(out, std::as_bytes(std::span<const char>(s.data(), s.size())));
}

uint16_t LoadU16(const std::byte* p) {
  return static_cast<uint16_t>(std::to_integer<uint16_t>(p[0]) | std::to_integer<uint16_t>(p[1]) << 8);
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

Status TooLong(std::string_view what, size_t size, size_t max) {
  return InvalidArgumentError("bootstrap: " + std::string(what) + " of " + std::to_string(size) +
                              " bytes exceeds the maximum of " + std::to_string(max));
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
      status_ = DataLossError("bootstrap: truncated " + MessageTypeName(type_) + " body: " + field + " " +
                              std::to_string(n) + " needs at least " + std::to_string(n * min_item_bytes) +
                              " bytes but only " + std::to_string(left) + " remain");
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
      status_ =
          DataLossError("bootstrap: truncated " + MessageTypeName(type_) + " body: '" + field + "' needs " +
                        std::to_string(n) + " bytes but only " + std::to_string(left) + " remain");
      return nullptr;
    }
    const std::byte* p = body_.data() + pos_;
    pos_ += n;
    return p;
  }
  void Fail(const std::string& what) {
    if (status_.ok()) status_ = DataLossError("bootstrap: bad " + MessageTypeName(type_) + " body: " + what);
  }

  MessageType type_;
  std::span<const std::byte> body_;
  size_t pos_ = 0;
  Status status_;
};

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
// Spelled out for compilers without C++20's aggregate deduction (clang before 17, which the fuzz
// build uses).
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace

std::string MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "HELLO";
    case MessageType::kHelloOk:
      return "HELLO_OK";
    case MessageType::kError:
      return "ERROR";
    case MessageType::kOk:
      return "OK";
    case MessageType::kSet:
      return "SET";
    case MessageType::kGet:
      return "GET";
    case MessageType::kValue:
      return "VALUE";
    case MessageType::kAdd:
      return "ADD";
    case MessageType::kInt:
      return "INT";
    case MessageType::kWait:
      return "WAIT";
    case MessageType::kDeadRanks:
      return "DEAD_RANKS";
    case MessageType::kRanks:
      return "RANKS";
    case MessageType::kGoodbye:
      return "GOODBYE";
  }
  return "UNKNOWN(" + std::to_string(static_cast<uint16_t>(type)) + ")";
}

MessageType TypeOf(const Message& message) {
  return std::visit(Overloaded{
                        [](const Hello&) { return MessageType::kHello; },
                        [](const HelloOk&) { return MessageType::kHelloOk; },
                        [](const ErrorReply&) { return MessageType::kError; },
                        [](const OkReply&) { return MessageType::kOk; },
                        [](const SetRequest&) { return MessageType::kSet; },
                        [](const GetRequest&) { return MessageType::kGet; },
                        [](const ValueReply&) { return MessageType::kValue; },
                        [](const AddRequest&) { return MessageType::kAdd; },
                        [](const IntReply&) { return MessageType::kInt; },
                        [](const WaitRequest&) { return MessageType::kWait; },
                        [](const DeadRanksRequest&) { return MessageType::kDeadRanks; },
                        [](const RanksReply&) { return MessageType::kRanks; },
                        [](const Goodbye&) { return MessageType::kGoodbye; },
                    },
                    message);
}

size_t MaxBodyBytes(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return kMaxHelloBody;
    case MessageType::kError:
      return kMaxErrorBody;
    case MessageType::kSet:
      return kMaxSetBody;
    case MessageType::kGet:
    case MessageType::kAdd:
      return kMaxKeyAndI64Body;
    case MessageType::kValue:
      return kMaxValueBody;
    case MessageType::kInt:
      return 8;
    case MessageType::kWait:
      return kMaxWaitBody;
    case MessageType::kRanks:
      return kMaxRanksBody;
    case MessageType::kHelloOk:
    case MessageType::kOk:
    case MessageType::kDeadRanks:
    case MessageType::kGoodbye:
      return 0;
  }
  return 0;
}

StatusOr<Bytes> EncodeFrame(const Message& message) {
  // Limits first, so no partial frame is built for a message the peer would refuse.
  Status limits = std::visit(
      Overloaded{
          [](const Hello& m) {
            return m.job_id.size() > kMaxJobIdBytes ? TooLong("job id", m.job_id.size(), kMaxJobIdBytes)
                                                    : OkStatus();
          },
          [](const ErrorReply& m) {
            if (!IsKnownErrorCode(static_cast<uint16_t>(m.code))) {
              return InvalidArgumentError("bootstrap: an ERROR must carry a known, non-OK code");
            }
            return m.text.size() > kMaxErrorTextBytes
                       ? TooLong("error text", m.text.size(), kMaxErrorTextBytes)
                       : OkStatus();
          },
          [](const SetRequest& m) {
            if (m.key.size() > kMaxKeyBytes) return TooLong("key", m.key.size(), kMaxKeyBytes);
            return m.value.size() > kMaxValueBytes ? TooLong("value", m.value.size(), kMaxValueBytes)
                                                   : OkStatus();
          },
          [](const GetRequest& m) {
            return m.key.size() > kMaxKeyBytes ? TooLong("key", m.key.size(), kMaxKeyBytes) : OkStatus();
          },
          [](const AddRequest& m) {
            return m.key.size() > kMaxKeyBytes ? TooLong("key", m.key.size(), kMaxKeyBytes) : OkStatus();
          },
          [](const ValueReply& m) {
            return m.value.size() > kMaxValueBytes ? TooLong("value", m.value.size(), kMaxValueBytes)
                                                   : OkStatus();
          },
          [](const WaitRequest& m) {
            if (m.keys.size() > kMaxWaitKeys) {
              return InvalidArgumentError("bootstrap: a WAIT of " + std::to_string(m.keys.size()) +
                                          " keys exceeds the maximum of " + std::to_string(kMaxWaitKeys));
            }
            for (const std::string& key : m.keys) {
              if (key.size() > kMaxKeyBytes) return TooLong("key", key.size(), kMaxKeyBytes);
            }
            return OkStatus();
          },
          [](const RanksReply& m) {
            return m.ranks.size() > kMaxRanks
                       ? InvalidArgumentError("bootstrap: a RANKS list of " + std::to_string(m.ranks.size()) +
                                              " exceeds the maximum of " + std::to_string(kMaxRanks))
                       : OkStatus();
          },
          [](const auto&) { return OkStatus(); },
      },
      message);
  M2N_RETURN_IF_ERROR(limits);

  // The header goes first with a zero length, patched once the body is written, and the buffer is
  // sized for a large value up front, so a 64 MiB value is copied once.
  size_t large = 0;
  if (const auto* set = std::get_if<SetRequest>(&message)) large = set->key.size() + set->value.size();
  if (const auto* value = std::get_if<ValueReply>(&message)) large = value->value.size();
  Bytes frame;
  frame.reserve(kHeaderBytes + 2 * kLengthBytes + large + 64);
  PutU32(frame, kMagic);
  PutU16(frame, kVersion);
  PutU16(frame, static_cast<uint16_t>(TypeOf(message)));
  PutU32(frame, 0);
  Bytes& body = frame;  // the body's fields are appended right after the header
  std::visit(Overloaded{
                 [&](const Hello& m) {
                   PutString(body, m.job_id);
                   PutI32(body, m.rank);
                   PutI32(body, m.world_size);
                 },
                 [&](const ErrorReply& m) {
                   PutU16(body, static_cast<uint16_t>(m.code));
                   PutString(body, m.text);
                 },
                 [&](const SetRequest& m) {
                   PutString(body, m.key);
                   PutBytes(body, m.value);
                 },
                 [&](const GetRequest& m) {
                   PutString(body, m.key);
                   PutI64(body, m.timeout_ms);
                 },
                 [&](const ValueReply& m) { PutBytes(body, m.value); },
                 [&](const AddRequest& m) {
                   PutString(body, m.key);
                   PutI64(body, m.delta);
                 },
                 [&](const IntReply& m) { PutI64(body, m.value); },
                 [&](const WaitRequest& m) {
                   PutU32(body, static_cast<uint32_t>(m.keys.size()));
                   for (const std::string& key : m.keys) PutString(body, key);
                   PutI64(body, m.timeout_ms);
                 },
                 [&](const RanksReply& m) {
                   PutU32(body, static_cast<uint32_t>(m.ranks.size()));
                   for (int32_t rank : m.ranks) PutI32(body, rank);
                 },
                 // HELLO_OK, OK, DEAD_RANKS, GOODBYE: no body.
                 [](const auto&) {},
             },
             message);

  const uint32_t body_bytes = static_cast<uint32_t>(frame.size() - kHeaderBytes);
  for (int i = 0; i < 4; ++i) frame[8 + i] = static_cast<std::byte>(body_bytes >> (8 * i));
  return frame;
}

StatusOr<FrameHeader> DecodeHeader(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderBytes) {
    return DataLossError("bootstrap: truncated frame header: " + std::to_string(bytes.size()) + " of " +
                         std::to_string(kHeaderBytes) + " bytes");
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
    return FailedPreconditionError("bootstrap: peer speaks protocol version " + std::to_string(version) +
                                   ", this build speaks " + std::to_string(kVersion));
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

StatusOr<Message> DecodeBody(MessageType type, std::span<const std::byte> body) {
  BodyReader r(type, body);
  Message message;
  switch (type) {
    case MessageType::kHello: {
      Hello m;
      r.String("job_id", kMaxJobIdBytes, &m.job_id);
      r.I32("rank", &m.rank);
      r.I32("world_size", &m.world_size);
      message = std::move(m);
      break;
    }
    case MessageType::kHelloOk:
      message = HelloOk{};
      break;
    case MessageType::kError: {
      ErrorReply m;
      uint16_t code = 0;
      if (r.U16("code", &code) && !IsKnownErrorCode(code)) {
        return DataLossError("bootstrap: bad ERROR body: unknown status code " + std::to_string(code));
      }
      m.code = static_cast<StatusCode>(code);
      r.String("text", kMaxErrorTextBytes, &m.text);
      message = std::move(m);
      break;
    }
    case MessageType::kOk:
      message = OkReply{};
      break;
    case MessageType::kSet: {
      SetRequest m;
      r.String("key", kMaxKeyBytes, &m.key);
      r.Blob("value", kMaxValueBytes, &m.value);
      message = std::move(m);
      break;
    }
    case MessageType::kGet: {
      GetRequest m;
      r.String("key", kMaxKeyBytes, &m.key);
      r.I64("timeout_ms", &m.timeout_ms);
      message = std::move(m);
      break;
    }
    case MessageType::kValue: {
      ValueReply m;
      r.Blob("value", kMaxValueBytes, &m.value);
      message = std::move(m);
      break;
    }
    case MessageType::kAdd: {
      AddRequest m;
      r.String("key", kMaxKeyBytes, &m.key);
      r.I64("delta", &m.delta);
      message = std::move(m);
      break;
    }
    case MessageType::kInt: {
      IntReply m;
      r.I64("value", &m.value);
      message = m;
      break;
    }
    case MessageType::kWait: {
      WaitRequest m;
      size_t n = 0;
      // Each key costs at least its length prefix, which bounds `n` by the bytes present.
      if (r.Count("key count", kMaxWaitKeys, kLengthBytes, &n)) {
        m.keys.resize(n);
        for (size_t i = 0; i < n && r.String("key", kMaxKeyBytes, &m.keys[i]); ++i) {
        }
      }
      r.I64("timeout_ms", &m.timeout_ms);
      message = std::move(m);
      break;
    }
    case MessageType::kDeadRanks:
      message = DeadRanksRequest{};
      break;
    case MessageType::kRanks: {
      RanksReply m;
      size_t n = 0;
      if (r.Count("rank count", kMaxRanks, 4, &n)) {
        m.ranks.resize(n);
        for (size_t i = 0; i < n && r.I32("rank", &m.ranks[i]); ++i) {
        }
      }
      message = std::move(m);
      break;
    }
    case MessageType::kGoodbye:
      message = Goodbye{};
      break;
    default:
      return DataLossError("bootstrap: unknown message type " + std::to_string(static_cast<uint16_t>(type)));
  }
  M2N_RETURN_IF_ERROR(r.Finish());
  return message;
}

StatusOr<Message> DecodeFrame(std::span<const std::byte> frame) {
  M2N_ASSIGN_OR_RETURN(FrameHeader header, DecodeHeader(frame));
  std::span<const std::byte> rest = frame.subspan(kHeaderBytes);
  if (rest.size() < header.body_bytes) {
    return DataLossError("bootstrap: truncated " + MessageTypeName(header.type) + " frame: body of " +
                         std::to_string(header.body_bytes) + " bytes announced, " +
                         std::to_string(rest.size()) + " present");
  }
  if (rest.size() > header.body_bytes) {
    return DataLossError("bootstrap: " + std::to_string(rest.size() - header.body_bytes) +
                         " bytes after the end of a " + MessageTypeName(header.type) + " frame");
  }
  return DecodeBody(header.type, rest);
}

}  // namespace m2n::bootstrap::wire
