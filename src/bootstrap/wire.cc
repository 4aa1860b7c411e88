// The bootstrap wire format's names, limits and encoder (wire.h); the decoder is wire_decode.cc.
#include "bootstrap/wire.h"

#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

namespace m2n::bootstrap::wire {
namespace {

// Body limits per type, from the field limits: a string costs its length prefix plus its bytes.
constexpr size_t kMaxHelloBody = kLengthBytes + kMaxJobIdBytes + 4 + 4 + kLengthBytes + kNonceBytes;
constexpr size_t kChallengeBody = kLengthBytes + kNonceBytes + kLengthBytes + kMacBytes;
constexpr size_t kProofBody = kLengthBytes + kMacBytes;
constexpr size_t kMaxErrorBody = 2 + kLengthBytes + kMaxErrorTextBytes;
constexpr size_t kMaxSetBody = kLengthBytes + kMaxKeyBytes + kLengthBytes + kMaxValueBytes;
constexpr size_t kMaxKeyAndI64Body = kLengthBytes + kMaxKeyBytes + 8;
constexpr size_t kMaxValueBody = kLengthBytes + kMaxValueBytes;
constexpr size_t kMaxWaitBody = kLengthBytes + kMaxWaitKeys * (kLengthBytes + kMaxKeyBytes) + 8;
constexpr size_t kMaxRanksBody = kLengthBytes + kMaxRanks * 4;
static_assert(kMaxSetBody <= UINT32_MAX, "a body length must fit the header's u32");
static_assert(kHeaderBytes + kMaxSetBody == kMaxFrameBytes);
static_assert(kMaxWaitBody <= kMaxSetBody && kMaxRanksBody <= kMaxSetBody &&
                  kMaxErrorBody <= kMaxSetBody,
              "SET must be the largest frame");

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

Status TooLong(std::string_view what, size_t size, size_t max) {
  return InvalidArgumentError("bootstrap: " + std::string(what) + " of " + std::to_string(size) +
                              " bytes exceeds the maximum of " + std::to_string(max));
}

Status ExactSize(std::string_view what, size_t size, size_t want) {
  if (size == want) return OkStatus();
  return InvalidArgumentError("bootstrap: a " + std::string(what) + " of " + std::to_string(size) +
                              " bytes; it must be " + std::to_string(want));
}

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
// Spelled out for compilers without C++20's aggregate deduction (clang before 17, which the fuzz
// build uses).
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace

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
    case MessageType::kChallenge:
      return "CHALLENGE";
    case MessageType::kProof:
      return "PROOF";
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
                        [](const Challenge&) { return MessageType::kChallenge; },
                        [](const Proof&) { return MessageType::kProof; },
                    },
                    message);
}

size_t MaxBodyBytes(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return kMaxHelloBody;
    case MessageType::kChallenge:
      return kChallengeBody;
    case MessageType::kProof:
      return kProofBody;
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

namespace {

// kInvalidArgument when a field of `message` exceeds its limit. A screen and two lines on purpose:
// one visitor case per message type, so that every limit of the wire format stands in one place.
Status CheckLimits(const Message& message) {
  return std::visit(
      Overloaded{
          [](const Hello& m) {
            if (m.job_id.size() > kMaxJobIdBytes)
              return TooLong("job id", m.job_id.size(), kMaxJobIdBytes);
            return ExactSize("nonce", m.nonce.size(), kNonceBytes);
          },
          [](const Challenge& m) {
            M2N_RETURN_IF_ERROR(ExactSize("nonce", m.nonce.size(), kNonceBytes));
            return ExactSize("mac", m.mac.size(), kMacBytes);
          },
          [](const Proof& m) { return ExactSize("mac", m.mac.size(), kMacBytes); },
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
            return m.value.size() > kMaxValueBytes
                       ? TooLong("value", m.value.size(), kMaxValueBytes)
                       : OkStatus();
          },
          [](const GetRequest& m) {
            return m.key.size() > kMaxKeyBytes ? TooLong("key", m.key.size(), kMaxKeyBytes)
                                               : OkStatus();
          },
          [](const AddRequest& m) {
            return m.key.size() > kMaxKeyBytes ? TooLong("key", m.key.size(), kMaxKeyBytes)
                                               : OkStatus();
          },
          [](const ValueReply& m) {
            return m.value.size() > kMaxValueBytes
                       ? TooLong("value", m.value.size(), kMaxValueBytes)
                       : OkStatus();
          },
          [](const WaitRequest& m) {
            if (m.keys.size() > kMaxWaitKeys) {
              return InvalidArgumentError("bootstrap: a WAIT of " + std::to_string(m.keys.size()) +
                                          " keys exceeds the maximum of " +
                                          std::to_string(kMaxWaitKeys));
            }
            for (const std::string& key : m.keys) {
              if (key.size() > kMaxKeyBytes) return TooLong("key", key.size(), kMaxKeyBytes);
            }
            return OkStatus();
          },
          [](const RanksReply& m) {
            return m.ranks.size() > kMaxRanks
                       ? InvalidArgumentError(
                             "bootstrap: a RANKS list of " + std::to_string(m.ranks.size()) +
                             " exceeds the maximum of " + std::to_string(kMaxRanks))
                       : OkStatus();
          },
          [](const auto&) { return OkStatus(); },
      },
      message);
}

// Appends the fields of `message` to `body`.
void PutBody(const Message& message, Bytes& body) {
  std::visit(Overloaded{
                 [&](const Hello& m) {
                   PutString(body, m.job_id);
                   PutI32(body, m.rank);
                   PutI32(body, m.world_size);
                   PutBytes(body, m.nonce);
                 },
                 [&](const Challenge& m) {
                   PutBytes(body, m.nonce);
                   PutBytes(body, m.mac);
                 },
                 [&](const Proof& m) { PutBytes(body, m.mac); },
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
}

}  // namespace

StatusOr<Bytes> EncodeFrame(const Message& message) {
  // Limits first, so no partial frame is built for a message the peer would refuse.
  M2N_RETURN_IF_ERROR(CheckLimits(message));

  // The header goes first with a zero length, patched once the body is written, and the buffer is
  // sized for a large value up front, so a 64 MiB value is copied once.
  size_t large = 0;
  if (const auto* set = std::get_if<SetRequest>(&message))
    large = set->key.size() + set->value.size();
  if (const auto* value = std::get_if<ValueReply>(&message)) large = value->value.size();
  Bytes frame;
  frame.reserve(kHeaderBytes + 2 * kLengthBytes + large + 64);
  PutU32(frame, kMagic);
  PutU16(frame, kVersion);
  PutU16(frame, static_cast<uint16_t>(TypeOf(message)));
  PutU32(frame, 0);
  PutBody(message, frame);  // the body's fields go right after the header
  const uint32_t body_bytes = static_cast<uint32_t>(frame.size() - kHeaderBytes);
  for (int i = 0; i < 4; ++i) frame[8 + i] = static_cast<std::byte>(body_bytes >> (8 * i));
  return frame;
}

}  // namespace m2n::bootstrap::wire
