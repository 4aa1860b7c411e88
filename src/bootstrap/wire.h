// The framing of every bootstrap store message.
//
//   frame  = header | body
//   header = magic u32 ('M2NS') | version u16 | type u16 | body length u32        (12 bytes)
//   body   = the message's fields in order:
//            i32 / i64 / u16 / u32  little-endian (two's complement for signed)
//            string / bytes         u32 length, then that many bytes
//            list                   u32 count, then the items
//
// Every integer is written byte by byte, so no struct padding or host byte order reaches the wire.
// The codec is pure (bytes in, Status or message out) so it can be unit tested and fuzzed on its
// own. Decoders trust nothing: a wrong magic, an unknown type, a length over the type's maximum, a
// short or over-long body are kDataLoss naming what was wrong; a peer built with another protocol
// version is kFailedPrecondition, since the bytes are fine but the two builds cannot talk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "bootstrap/store.h"
#include "m2n/status.h"

namespace m2n::bootstrap::wire {

// The bytes 'M' '2' 'N' 'S' in wire order, read as a little-endian u32.
inline constexpr uint32_t kMagic = 0x534E324Du;
// Bump on any change to the layout of a header or body.
// 2: HELLO carries a nonce, and CHALLENGE and PROOF complete it (handshake.h).
inline constexpr uint16_t kVersion = 2;
inline constexpr size_t kHeaderBytes = 12;
// The u32 before every string, byte value and list.
inline constexpr size_t kLengthBytes = 4;

// Hard limits, checked by both the encoder (so this build never sends what a peer would refuse)
// and the decoder (so a hostile length cannot make the server allocate without bound).
inline constexpr size_t kMaxKeyBytes = 1024;
inline constexpr size_t kMaxValueBytes = size_t{64} << 20;
inline constexpr size_t kMaxJobIdBytes = 1024;
inline constexpr size_t kMaxErrorTextBytes = size_t{64} << 10;
inline constexpr size_t kMaxWaitKeys = 4096;
inline constexpr size_t kMaxRanks = size_t{1} << 20;
// The handshake's nonces and MACs (HMAC-SHA256): exactly this long, or the body is kDataLoss.
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;
// The largest frame of any type (a SET of the largest key and value); a reader never needs to
// buffer more than this for one frame.
inline constexpr size_t kMaxFrameBytes = kHeaderBytes + 4 + kMaxKeyBytes + 4 + kMaxValueBytes;

// Values are part of the protocol: never renumber, only add.
enum class MessageType : uint16_t {
  kHello = 1,  // client -> server: who I am
  kHelloOk = 2,  // server -> client: accepted
  kError = 3,  // server -> client: a request (or HELLO) failed
  kOk = 4,  // server -> client: SET / WAIT / GOODBYE done
  kSet = 5,
  kGet = 6,
  kValue = 7,  // the answer to GET
  kAdd = 8,
  kInt = 9,  // the answer to ADD
  kWait = 10,
  kDeadRanks = 11,
  kRanks = 12,  // the answer to DEAD_RANKS
  kGoodbye = 13,
  kChallenge = 14,  // server -> client: the store's nonce and its proof that it holds the job key
  kProof = 15,  // client -> server: the rank's proof that it holds the job key
};

// "HELLO", "SET", ...; "UNKNOWN(n)" for a value outside the enum.
std::string MessageTypeName(MessageType type);

struct Hello {
  std::string job_id;
  int32_t rank = -1;
  int32_t world_size = 0;
  Bytes nonce;  // kNonceBytes, fresh for each connection
  bool operator==(const Hello&) const = default;
};
// The answer to a HELLO that names this job: a fresh store nonce, and the store's MAC over both
// nonces, the job id, the rank and the world size (handshake.h).
struct Challenge {
  Bytes nonce;
  Bytes mac;
  bool operator==(const Challenge&) const = default;
};
// The rank's MAC over the same fields, answered by HELLO_OK or a refusal.
struct Proof {
  Bytes mac;
  bool operator==(const Proof&) const = default;
};
struct HelloOk {
  bool operator==(const HelloOk&) const = default;
};
struct ErrorReply {
  // Carried so the client can return the right code (kDeadlineExceeded for a timed-out GET,
  // kFailedPrecondition for a refused HELLO) without parsing text. Never kOk.
  StatusCode code = StatusCode::kInternal;
  std::string text;
  bool operator==(const ErrorReply&) const = default;
};
struct OkReply {
  bool operator==(const OkReply&) const = default;
};
struct SetRequest {
  std::string key;
  Bytes value;
  bool operator==(const SetRequest&) const = default;
};
struct GetRequest {
  std::string key;
  int64_t timeout_ms = 0;  // how long the server may hold the request waiting for `key`
  bool operator==(const GetRequest&) const = default;
};
struct ValueReply {
  Bytes value;
  bool operator==(const ValueReply&) const = default;
};
struct AddRequest {
  std::string key;
  int64_t delta = 0;
  bool operator==(const AddRequest&) const = default;
};
struct IntReply {
  int64_t value = 0;
  bool operator==(const IntReply&) const = default;
};
struct WaitRequest {
  std::vector<std::string> keys;
  int64_t timeout_ms = 0;
  bool operator==(const WaitRequest&) const = default;
};
struct DeadRanksRequest {
  bool operator==(const DeadRanksRequest&) const = default;
};
struct RanksReply {
  std::vector<int32_t> ranks;
  bool operator==(const RanksReply&) const = default;
};
struct Goodbye {
  bool operator==(const Goodbye&) const = default;
};

using Message = std::variant<Hello, HelloOk, ErrorReply, OkReply, SetRequest, GetRequest,
                             ValueReply, AddRequest, IntReply, WaitRequest, DeadRanksRequest,
                             RanksReply, Goodbye, Challenge, Proof>;

MessageType TypeOf(const Message& message);

struct FrameHeader {
  MessageType type = MessageType::kHello;
  uint32_t body_bytes = 0;
};

// The codes an ERROR may carry: every non-OK code of status.h.
bool IsKnownErrorCode(uint16_t raw);

// The largest body a frame of `type` may announce; 0 for an unknown type.
size_t MaxBodyBytes(MessageType type);

// Header and body of `message`. kInvalidArgument when a field exceeds its limit.
StatusOr<Bytes> EncodeFrame(const Message& message);

// Decodes the first kHeaderBytes of `bytes` (fewer is kDataLoss). Checks, in this order: magic,
// version, type, body length <= MaxBodyBytes(type). The version check comes before the type so a
// newer peer with new types gets the version message, which says what to fix.
StatusOr<FrameHeader> DecodeHeader(std::span<const std::byte> bytes);

// Decodes a body of `type` that must be exactly `body`: short is kDataLoss naming the field that
// was cut, bytes left over are kDataLoss too.
StatusOr<Message> DecodeBody(MessageType type, std::span<const std::byte> body);

// Decodes exactly one whole frame (header and body, nothing after).
StatusOr<Message> DecodeFrame(std::span<const std::byte> frame);

}  // namespace m2n::bootstrap::wire
