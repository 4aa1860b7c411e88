// Unit tests of the protocol logic: immediate encoding, slot and credit accounting, the
// configuration check. No transport, no processes.
#include <gtest/gtest.h>

#include <vector>

#include "protocol/checksum.h"
#include "protocol/config_check.h"
#include "protocol/immediate.h"
#include "protocol/slots.h"

namespace m2n::protocol {
namespace {

TEST(ImmediateTest, RoundTripsEveryField) {
  for (ImmKind kind : {ImmKind::kData, ImmKind::kAck}) {
    for (int slot : {0, 1, 511, kMaxSlots - 1}) {
      for (uint32_t sequence : {0u, 1u, 777u, kSequenceModulus - 1}) {
        for (int writer : {0, 1, 12345, kMaxRanks - 1}) {
          const int reader = writer ^ 5;
          uint32_t bits = EncodeImmediate({kind, slot, sequence}, writer, reader);
          auto back = DecodeImmediate(bits, writer, reader);
          ASSERT_TRUE(back.ok()) << back.status().ToString();
          EXPECT_EQ(back->kind, kind);
          EXPECT_EQ(back->slot, slot);
          EXPECT_EQ(back->sequence, sequence);
        }
      }
    }
  }
  // The sequence wraps: message 4096 carries 0.
  auto wrapped =
      DecodeImmediate(EncodeImmediate({ImmKind::kData, 3, kSequenceModulus + 2}, 1, 2), 1, 2);
  ASSERT_TRUE(wrapped.ok());
  EXPECT_EQ(wrapped->sequence, 2u);
}

TEST(ImmediateTest, RejectsUnknownKind) {
  // A kind that does not exist, with a check that matches, so that the kind is what is refused.
  uint32_t bits = EncodeImmediate({static_cast<ImmKind>(3), 0, 0}, 0, 1);
  auto bad = DecodeImmediate(bits, 0, 1);
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("unknown kind"), std::string::npos)
      << bad.status().message();
}

// Every flip of one, two or three bits fails the check, and so does an immediate read as coming
// from another writer or meant for another reader.
TEST(ImmediateTest, CheckCatchesCorruptionAndMisattribution) {
  const uint32_t good = EncodeImmediate({ImmKind::kData, 17, 4000}, 3, 9);
  ASSERT_TRUE(DecodeImmediate(good, 3, 9).ok());
  for (int a = 0; a < 32; ++a) {
    for (int b = a; b < 32; ++b) {
      for (int c = b; c < 32; ++c) {
        uint32_t bits = good ^ (1u << a) ^ (b != a ? 1u << b : 0) ^ (c != b ? 1u << c : 0);
        auto bad = DecodeImmediate(bits, 3, 9);
        ASSERT_FALSE(bad.ok()) << "bits " << a << " " << b << " " << c;
        EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
      }
    }
  }
  auto other_writer = DecodeImmediate(good, 4, 9);
  EXPECT_EQ(other_writer.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(other_writer.status().message().find("fails its check"), std::string::npos);
  EXPECT_EQ(DecodeImmediate(good, 3, 10).status().code(), StatusCode::kDataLoss);
}

// Readers that exercise the seed: the ends of the rank range, a block of 256 apart, and 263
// (0x107, the CRC's own polynomial), whose pair with writer 0 had seed 0 in immediate format 1.
const int kSampleReaders[] = {
    0, 1, 2, 254, 255, 256, 257, 263, 511, 4096, kMaxRanks - 256, kMaxRanks - 1};

// A lost or zero-filled ring entry must never pass for a pair's first immediate (data, slot 0,
// sequence 0). Every pair of ranks below 2048 (every seed many times over), and every writer up to
// kMaxRanks with the sampled readers (the full 2^40 pairs would take hours; the seed depends on the
// pair only through (writer + 2 * reader) mod 255, which these cover entirely).
TEST(ImmediateTest, NoPairsFirstImmediateIsAllZeros) {
  const Immediate first{ImmKind::kData, 0, 0};
  for (int writer = 0; writer < 2048; ++writer) {
    for (int reader = 0; reader < 2048; ++reader) {
      ASSERT_NE(EncodeImmediate(first, writer, reader), 0u)
          << "writer " << writer << ", reader " << reader;
    }
  }
  for (int writer = 0; writer < kMaxRanks; ++writer) {
    for (int reader : kSampleReaders) {
      ASSERT_NE(EncodeImmediate(first, writer, reader), 0u)
          << "writer " << writer << ", reader " << reader;
      ASSERT_NE(EncodeImmediate(first, reader, writer), 0u)
          << "writer " << reader << ", reader " << writer;
    }
  }
}

// Writers 256 apart (what a rank truncated to 8 bits confuses) never share a seed, nor do readers,
// so an immediate attributed to the wrong one of them always fails; nor do any 255 writers in a
// row.
TEST(ImmediateTest, SeedsDifferForRanks256ApartAndForNeighbours) {
  for (int reader : kSampleReaders) {
    for (int writer = 0; writer + 256 < kMaxRanks; ++writer) {
      ASSERT_NE(ImmediateSeed(writer, reader), ImmediateSeed(writer + 256, reader))
          << "writers " << writer << " and " << writer + 256 << ", reader " << reader;
      ASSERT_NE(ImmediateSeed(reader, writer), ImmediateSeed(reader, writer + 256))
          << "writer " << reader << ", readers " << writer << " and " << writer + 256;
    }
    for (int start : {0, 7, 1000, kMaxRanks - 255}) {
      std::vector<bool> seen(256, false);
      for (int writer = start; writer < start + 255; ++writer) {
        const uint8_t seed = ImmediateSeed(writer, reader);
        ASSERT_FALSE(seen[seed]) << "writer " << writer << " repeats a seed among the 255 from "
                                 << start;
        seen[seed] = true;
      }
    }
  }
  const uint32_t bits = EncodeImmediate({ImmKind::kData, 5, 9}, 300, 7);
  EXPECT_EQ(DecodeImmediate(bits, 300 - 256, 7).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeImmediate(bits, 300 + 256, 7).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeImmediate(bits, 7, 300).status().code(), StatusCode::kDataLoss);
}

TEST(ChecksumTest, Crc32cMatchesKnownValuesInPiecesAndWhole) {
  const char* text = "123456789";
  EXPECT_EQ(Crc32c(text, 9), 0xE3069283u);  // the standard check value of CRC-32C
  EXPECT_EQ(Crc32c(text + 4, 5, Crc32c(text, 4)), 0xE3069283u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  // Long buffers at every alignment: the wide path agrees with the byte path.
  std::vector<uint8_t> data(4096 + 16);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
  for (size_t start = 0; start < 16; ++start) {
    uint32_t whole = Crc32c(data.data() + start, 4096);
    uint32_t bytewise = 0;
    for (size_t i = 0; i < 4096; ++i) bytewise = Crc32c(data.data() + start + i, 1, bytewise);
    EXPECT_EQ(whole, bytewise) << "start " << start;
  }
}

TEST(ReceiveSlotsTest, DeliversInArrivalOrderWithSequences) {
  ReceiveSlots slots(/*peer=*/2, /*depth=*/3, /*slot_bytes=*/100);
  ASSERT_TRUE(slots.OnArrival(1, 10).ok());
  ASSERT_TRUE(slots.OnArrival(0, 20).ok());
  EXPECT_EQ(slots.queued(), 2u);
  auto a = slots.Deliver();
  EXPECT_EQ(a.slot, 1);
  EXPECT_EQ(a.length, 10u);
  EXPECT_EQ(a.sequence, 0u);
  auto b = slots.Deliver();
  EXPECT_EQ(b.slot, 0);
  EXPECT_EQ(b.sequence, 1u);
  EXPECT_EQ(slots.in_use(), 2);
  // Out-of-order release is fine.
  EXPECT_TRUE(slots.Release(0, 1).ok());
  EXPECT_TRUE(slots.Release(1, 0).ok());
  EXPECT_EQ(slots.in_use(), 0);
}

TEST(ReceiveSlotsTest, RefusesWritesIntoBusySlotsAndOversizeOnes) {
  ReceiveSlots slots(2, 2, 100);
  ASSERT_TRUE(slots.OnArrival(0, 1).ok());
  Status busy = slots.OnArrival(0, 1);
  EXPECT_EQ(busy.code(), StatusCode::kDataLoss);
  EXPECT_NE(busy.message().find("credit was violated"), std::string::npos);
  EXPECT_EQ(slots.OnArrival(1, 101).code(), StatusCode::kDataLoss);
  EXPECT_EQ(slots.OnArrival(2, 1).code(), StatusCode::kDataLoss);
  EXPECT_EQ(slots.OnArrival(-1, 1).code(), StatusCode::kDataLoss);
}

TEST(ReceiveSlotsTest, DoubleReleaseAndStaleReleaseAreRefused) {
  ReceiveSlots slots(2, 1, 100);
  ASSERT_TRUE(slots.OnArrival(0, 1).ok());
  auto first = slots.Deliver();
  // Not yet delivered is not releasable either.
  ASSERT_TRUE(slots.Release(first.slot, first.sequence).ok());
  Status again = slots.Release(first.slot, first.sequence);
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(again.message().find("already released"), std::string::npos);
  // The slot is reused by a newer message; releasing the old message again must not free it.
  ASSERT_TRUE(slots.OnArrival(0, 2).ok());
  auto second = slots.Deliver();
  EXPECT_EQ(slots.Release(first.slot, first.sequence).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(slots.Release(second.slot, second.sequence).ok());
  EXPECT_EQ(slots.Release(7, 0).code(), StatusCode::kInvalidArgument);
}

TEST(ReceiveSlotsTest, ReleaseAllFreesQueuedAndDelivered) {
  ReceiveSlots slots(0, 4, 8);
  ASSERT_TRUE(slots.OnArrival(2, 1).ok());
  ASSERT_TRUE(slots.OnArrival(3, 1).ok());
  (void)slots.Deliver();
  auto freed = slots.ReleaseAll();
  EXPECT_EQ(freed, (std::vector<int>{2, 3}));
  EXPECT_EQ(slots.in_use(), 0);
  EXPECT_EQ(slots.queued(), 0u);
}

TEST(CreditsTest, OneCreditPerSlotRoundRobin) {
  Credits credits(/*peer=*/5, /*depth=*/3);
  EXPECT_EQ(credits.available(), 3);
  EXPECT_EQ(credits.Take(), 0);
  EXPECT_EQ(credits.Take(), 1);
  EXPECT_EQ(credits.Take(), 2);
  EXPECT_EQ(credits.available(), 0);
  ASSERT_TRUE(credits.OnAck(1).ok());
  EXPECT_EQ(credits.available(), 1);
  EXPECT_EQ(credits.Take(), 1);
  ASSERT_TRUE(credits.OnAck(0).ok());
  ASSERT_TRUE(credits.OnAck(2).ok());
  // Round robin: after slot 1, the next free slot from there is 2, then 0.
  EXPECT_EQ(credits.Take(), 2);
  EXPECT_EQ(credits.Take(), 0);
}

TEST(CreditsTest, AckForAnIdleSlotIsRefused) {
  Credits credits(5, 2);
  Status s = credits.OnAck(0);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("rank 5"), std::string::npos);
  EXPECT_EQ(credits.OnAck(9).code(), StatusCode::kDataLoss);
}

Fingerprint Config(const std::string& slot_bytes, const std::string& transport = "ucx") {
  return {{"num_senders", "2"}, {"slot_bytes", slot_bytes}, {"transport", transport}};
}

TEST(ConfigCheckTest, EqualConfigsPass) {
  EXPECT_TRUE(CheckFingerprints({Config("4096"), Config("4096"), Config("4096")}).ok());
}

TEST(ConfigCheckTest, MismatchNamesFieldValuesAndRanks) {
  Status s =
      CheckFingerprints({Config("4096"), Config("4096"), Config("8192"), Config("8192", "tcp")});
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(
                "slot_bytes is 4096 on rank 0 but 8192 on rank 2 (and differs on 1 more rank(s))"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("transport is ucx on rank 0 but tcp on rank 3"), std::string::npos)
      << s.message();
}

TEST(ConfigCheckTest, EncodingRoundTripsAndRejectsGarbage) {
  Fingerprint fp = Config("4096");
  auto back = DecodeFingerprint(EncodeFingerprint(fp));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, fp);
  EXPECT_EQ(DecodeFingerprint("slot_bytes=1").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeFingerprint("=1\n").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeFingerprint("noequals\n").status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace m2n::protocol
