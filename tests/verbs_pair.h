// Two in-process ends of a verbs RC connection, for the tests of the verbs proxy thread
// (verbs_stream_test.cc: the stream path; verbs_device_ring_test.cc: the device-side API's ring)
// where test threads play the GPU's part: the device context (the test skips, saying why, without
// one), each end's CQs and its endpoint towards the other end, and the payload pattern both check.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "transports/verbs/context.h"
#include "transports/verbs/endpoint.h"

namespace m2n::transport::verbs::testing {

// One end: its CQs (completions of its own calls; the stream proxy's) and its endpoint. A test's
// side derives from it, so that what the side adds (its proxy) goes before the endpoint and CQs.
struct PairEnd {
  ibv_cq* cq = nullptr;
  ibv_cq* stream_cq = nullptr;
  std::unique_ptr<Endpoint> endpoint;
  PairEnd() = default;
  PairEnd(const PairEnd&) = delete;
  PairEnd& operator=(const PairEnd&) = delete;
  ~PairEnd() {
    endpoint.reset();
    if (cq != nullptr) ibv_destroy_cq(cq);
    if (stream_cq != nullptr) ibv_destroy_cq(stream_cq);
  }
};

class VerbsPairTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    auto options = VerbsOptionsFromEnv();
    ASSERT_TRUE(options.ok()) << options.status().ToString();
    options_ = *options;
    auto ctx = Context::Open(options_);
    if (!ctx.ok()) GTEST_SKIP() << "no RDMA device here (" << ctx.status().ToString() << ")";
    ctx_ = std::move(ctx).value();
  }

  // End `rank` of the pair (0 or 1): its CQs and its endpoint towards rank 1 - rank.
  void MakeEnd(PairEnd& end, int rank) {
    end.cq = ibv_create_cq(ctx_->device(), 256, nullptr, nullptr, 0);
    end.stream_cq = ibv_create_cq(ctx_->device(), 256, nullptr, nullptr, 0);
    ASSERT_NE(end.cq, nullptr);
    ASSERT_NE(end.stream_cq, nullptr);
    auto e =
        Endpoint::Create(ctx_.get(), end.cq, end.stream_cq, /*peer=*/1 - rank, options_, 64, 32);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    end.endpoint = std::move(e).value();
  }

  // Connects ends 0 and 1 (made by MakeEnd) with `depth` slots each way.
  void ConnectEnds(PairEnd& end0, PairEnd& end1, int depth) {
    PairEnd* ends[2] = {&end0, &end1};
    for (int i = 0; i < 2; ++i) {
      const PeerAddress remote =
          ends[1 - i]->endpoint->Address(1 - i, static_cast<uint32_t>(depth));
      ASSERT_TRUE(ends[i]->endpoint->Connect(remote, options_).ok());
    }
  }

  VerbsOptions options_;
  std::shared_ptr<Context> ctx_;
};

// Message n's length (0 B to 64 KB) and its byte i.
inline size_t SizeOf(uint64_t n) {
  static const size_t kSizes[] = {0, 1, 7, 64, 4096, 65536};
  return kSizes[n % 6];
}
inline std::byte Pattern(uint64_t n, size_t i) {
  return static_cast<std::byte>((n * 131 + i * 7 + 1) & 0xff);
}

}  // namespace m2n::transport::verbs::testing
