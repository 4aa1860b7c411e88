// WireTest: the bootstrap store's wire codec (src/bootstrap/wire.h): every type round trips, and
// bad magic, versions, types, sizes, truncations and trailing bytes are refused with a clear
// status; random and mutated input never crashes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/store.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "sanitized.h"
#include "bootstrap_test_util.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;
using wire::MessageType;

std::vector<Message> OneOfEachType() {
  Bytes binary = {std::byte{0}, std::byte{0xff}, std::byte{0x80}, std::byte{0}, std::byte{7}};
  return {
      wire::Hello{"job-42", 3, 8, TestNonce()},
      wire::HelloOk{},
      wire::ErrorReply{StatusCode::kDeadlineExceeded, "timed out; still missing: 'k'"},
      wire::OkReply{},
      wire::SetRequest{"addr/3", binary},
      wire::GetRequest{"addr/3", 1500},
      wire::ValueReply{binary},
      wire::AddRequest{"count", -9'000'000'000},
      wire::IntReply{-1},
      wire::WaitRequest{{"a", "bb", ""}, 0},
      wire::DeadRanksRequest{},
      wire::RanksReply{{0, 5, 2'000'000}},
      wire::Goodbye{},
      wire::Challenge{TestNonce(), Bytes(wire::kMacBytes, std::byte{0xab})},
      wire::Proof{Bytes(wire::kMacBytes, std::byte{0xcd})},
  };
}

TEST(WireTest, EveryTypeRoundTrips) {
  std::vector<Message> messages = OneOfEachType();
  ASSERT_EQ(messages.size(), 15u);
  for (const Message& message : messages) {
    StatusOr<Bytes> frame = wire::EncodeFrame(message);
    ASSERT_OK(frame.status());
    StatusOr<Message> back = wire::DecodeFrame(*frame);
    ASSERT_OK(back.status());
    EXPECT_EQ(*back, message) << wire::MessageTypeName(wire::TypeOf(message));
  }
}

TEST(WireTest, HeaderIsLittleEndianAndPacked) {
  StatusOr<Bytes> frame = wire::EncodeFrame(wire::GetRequest{"k", 0x0102030405060708});
  ASSERT_OK(frame.status());
  // magic 'M2NS', version 2, type GET (6), body = u32 1 + "k" + i64.
  const std::vector<uint8_t> expected = {'M', '2', 'N', 'S', 2, 0, 6, 0, 13, 0, 0, 0, 1,
                                         0,   0,   0,   'k', 8, 7, 6, 5, 4,  3, 2, 1};
  ASSERT_EQ(frame->size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(std::to_integer<uint8_t>((*frame)[i]), expected[i]) << "byte " << i;
  }
}

TEST(WireTest, RejectsBadMagic) {
  Bytes frame = ValidFrame(wire::OkReply{});
  frame[0] = std::byte{'X'};
  StatusOr<Message> decoded = wire::DecodeFrame(frame);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "bad magic")) << decoded.status().ToString();
}

TEST(WireTest, RejectsOtherVersionWithAClearMessage) {
  Bytes frame = ValidFrame(wire::Hello{"j", 0, 1, TestNonce()});
  frame[4] = std::byte{1};
  StatusOr<wire::FrameHeader> header = wire::DecodeHeader(frame);
  EXPECT_EQ(header.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(header.status().message(),
            "bootstrap: peer speaks protocol version 1, this build speaks 2");
}

TEST(WireTest, RejectsUnknownType) {
  for (uint16_t type : {uint16_t{0}, uint16_t{16}, uint16_t{0xffff}}) {
    Bytes frame = ValidFrame(wire::OkReply{});
    frame[6] = static_cast<std::byte>(type);
    frame[7] = static_cast<std::byte>(type >> 8);
    StatusOr<Message> decoded = wire::DecodeFrame(frame);
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
    EXPECT_TRUE(
        Contains(decoded.status().message(), "unknown message type " + std::to_string(type)))
        << decoded.status().ToString();
  }
}

TEST(WireTest, RejectsOversizedBodyFromTheHeaderAlone) {
  // A header announcing 4 GiB must be refused before anyone waits for (or allocates) the body.
  Bytes frame = ValidFrame(wire::SetRequest{"k", ToBytes("v")});
  PutU32At(frame, 8, 0xffffffffu);
  StatusOr<wire::FrameHeader> header =
      wire::DecodeHeader(std::span(frame).first(wire::kHeaderBytes));
  EXPECT_EQ(header.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(header.status().message(), "exceeds the maximum"))
      << header.status().ToString();

  // Each type has its own bound: an INT is 8 bytes, nothing more.
  Bytes integer = ValidFrame(wire::IntReply{1});
  PutU32At(integer, 8, 9);
  EXPECT_EQ(wire::DecodeHeader(integer).status().code(), StatusCode::kDataLoss);
}

TEST(WireTest, RejectsOversizedFieldsInsideTheBody) {
  // A key length of 2000 inside a body whose total length is within the GET bound.
  Bytes frame = ValidFrame(wire::GetRequest{"k", 0});
  PutU32At(frame, wire::kHeaderBytes, 2000);
  StatusOr<Message> decoded = wire::DecodeFrame(frame);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "exceeds the maximum of 1024"))
      << decoded.status().ToString();

  // A WAIT claiming 4000 keys in a 20-byte body is refused before 4000 strings are allocated.
  Bytes wait = ValidFrame(wire::WaitRequest{{"a"}, 0});
  PutU32At(wait, wire::kHeaderBytes, 4000);
  decoded = wire::DecodeFrame(wait);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "truncated WAIT body"))
      << decoded.status().ToString();
}

TEST(WireTest, EveryTruncationIsDataLossNamingWhatWasShort) {
  for (const Message& message : OneOfEachType()) {
    Bytes frame = ValidFrame(message);
    for (size_t cut = 0; cut < frame.size(); ++cut) {
      StatusOr<Message> decoded = wire::DecodeFrame(std::span(frame).first(cut));
      EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss)
          << wire::MessageTypeName(wire::TypeOf(message)) << " cut at " << cut;
    }
  }
  // A body (not a frame) that is cut names the field.
  Bytes frame = ValidFrame(wire::SetRequest{"key", ToBytes("0123456789")});
  std::span<const std::byte> body = std::span(frame).subspan(wire::kHeaderBytes);
  StatusOr<Message> decoded = wire::DecodeBody(MessageType::kSet, body.first(body.size() - 3));
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(decoded.status().message(),
            "bootstrap: truncated SET body: 'value' needs 10 bytes but only 7 remain");
}

TEST(WireTest, RejectsTrailingBytes) {
  Bytes frame = ValidFrame(wire::IntReply{5});
  frame.push_back(std::byte{0});
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  // An extra byte inside a body: the body decoder finds it.
  Bytes get = ValidFrame(wire::GetRequest{"k", 1});
  get.push_back(std::byte{0});
  StatusOr<Message> decoded =
      wire::DecodeBody(MessageType::kGet, std::span(get).subspan(wire::kHeaderBytes));
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "1 unexpected bytes"))
      << decoded.status().ToString();
}

TEST(WireTest, ErrorCarriesOnlyKnownNonOkCodes) {
  Bytes frame = ValidFrame(wire::ErrorReply{StatusCode::kInternal, "x"});
  frame[wire::kHeaderBytes] = std::byte{99};
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  frame[wire::kHeaderBytes] = std::byte{0};  // kOk
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(wire::EncodeFrame(wire::ErrorReply{StatusCode::kOk, "x"}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(WireTest, EncoderRefusesWhatTheDecoderWouldReject) {
  EXPECT_EQ(wire::EncodeFrame(wire::GetRequest{std::string(1025, 'k'), 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_OK(wire::EncodeFrame(wire::GetRequest{std::string(1024, 'k'), 0}).status());
  EXPECT_EQ(
      wire::EncodeFrame(wire::Hello{std::string(1025, 'j'), 0, 1, TestNonce()}).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      wire::EncodeFrame(wire::WaitRequest{std::vector<std::string>(wire::kMaxWaitKeys + 1, "k"), 0})
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      wire::EncodeFrame(wire::SetRequest{"k", Bytes(wire::kMaxValueBytes + 1)}).status().code(),
      StatusCode::kInvalidArgument);
  // The largest legal frame round-trips.
  StatusOr<Bytes> largest =
      wire::EncodeFrame(wire::SetRequest{std::string(1024, 'k'), Bytes(wire::kMaxValueBytes)});
  ASSERT_OK(largest.status());
  EXPECT_EQ(largest->size(), wire::kMaxFrameBytes);
  EXPECT_OK(wire::DecodeFrame(*largest).status());
}

TEST(WireTest, RandomAndMutatedInputNeverCrashes) {
  std::mt19937 rng(12345);
  std::vector<Bytes> seeds;
  for (const Message& m : OneOfEachType()) seeds.push_back(ValidFrame(m));
  for (int i = 0; i < 20000; ++i) {
    Bytes input;
    if (i % 2 == 0) {
      input.resize(rng() % 64);
      for (auto& b : input) b = static_cast<std::byte>(rng());
    } else {
      input = seeds[rng() % seeds.size()];
      int flips = 1 + rng() % 4;
      for (int f = 0; f < flips && !input.empty(); ++f)
        input[rng() % input.size()] = static_cast<std::byte>(rng());
      if (rng() % 4 == 0) input.resize(rng() % (input.size() + 1));
    }
    StatusOr<Message> decoded = wire::DecodeFrame(input);
    if (decoded.ok()) {
      // Whatever decodes must encode back to the same bytes: the format has one spelling per
      // message.
      StatusOr<Bytes> again = wire::EncodeFrame(*decoded);
      ASSERT_OK(again.status());
      EXPECT_EQ(*again, input);
    }
  }
}

}  // namespace
}  // namespace m2n::bootstrap
