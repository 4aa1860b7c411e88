// GPU tests of the expert-parallel layer's stream-ordered calls (m2n/ep.h: DispatchOnStream,
// ReceiveDispatchOnStream, CombineOnStream, ReceiveCombineOnStream) over cuda_ipc with device
// slots, every rank a process; on a machine with one GPU all ranks share it. They skip, saying
// why, without a CUDA device, and while Group::device_group() is not served (branch dev wires it).
//   DispatchAndCombine: shapes 1x1, 2x2, 3x1, 1x3, 2x3 in bf16 and fp32 (and odd row sizes, many
//     blocks per peer), every routing kind of ep_reference.h (random, all tokens to one expert,
//     both experts of a token on one rank, no tokens, the most tokens, a rank that receives
//     nothing), two calls in flight; rows, sources, counts (device and host copy) and outputs
//     equal the plain reference bit for bit, which ep_ucx_test checks the host path against: the
//     device path's results equal the host path's.
//   GraphCapture: one layer (dispatch .. experts .. combine) captured per rank, replayed 20 times.
//   CreditPressure: 40 calls enqueued at once against expert ranks that start 300 ms late.
//   BadCalls: the errors a caller sees, a bad expert id and a bad device token count found on the
//     device included. (Half of DispatchAndCombine's calls pass their token count in device
//     memory.)
//   ReceiverNeverComes: the bounded device wait gives up and the next call says so.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "ep_gpu_kernels.h"
#include "ep_reference.h"
#include "gpu_test_util.h"
#include "harness.h"
#include "m2n/m2n.h"

namespace m2n::testing {

// gtest prints a case by its name (found by argument-dependent lookup, so beside EpCase).
void PrintTo(const EpCase& c, std::ostream* os) { *os << EpCaseName(c); }

namespace {

constexpr int kNotWired = 77;  // a rank's exit code when Group::device_group() is not served

std::string NoGpuReason() {
  static const std::string reason = AskInChild(NoCudaDevice);
  return reason;
}

#define SKIP_WITHOUT_GPU() SKIP_IF_MISSING(NoGpuReason())

// Skips when every rank found the device-side API unserved; otherwise every rank must pass.
void Judge(const std::vector<RankOutcome>& outcomes) {
  bool unwired = !outcomes.empty();
  for (const RankOutcome& o : outcomes) unwired = unwired && o.exit_code == kNotWired;
  if (unwired) {
    GTEST_SKIP() << "Group::device_group() is not served by this build's cuda_ipc (branch dev)";
  }
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

bool Contains(const Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

size_t RowBytes(const EpCase& c) {
  return size_t(c.options.hidden) * DataTypeBytes(c.options.dtype);
}

struct Rank {
  std::unique_ptr<Group> group;
  std::unique_ptr<ExpertParallel> ep;
  cudaStream_t stream = nullptr;
};

// The group (device slots over cuda_ipc, slot_bytes as the layer needs, rounded up to 16) and the
// layer. 0, kNotWired, or 1 (printed).
int MakeRank(const EpCase& c, int rank, int port, int depth, Rank* r, int timeout_ms = 20000) {
  auto need = ExpertParallel::SlotBytesNeeded(c.options, c.m, c.n);
  CHILD_OK(need.status());
  Options o = DeviceSlotOptions("cuda_ipc", c.m, c.n, rank, port, (*need + 15) / 16 * 16, depth);
  o.bootstrap.timeout = std::chrono::milliseconds(timeout_ms);
  auto group = Group::Create(o);
  CHILD_OK(group.status());
  r->group = std::move(*group);
  auto ep = ExpertParallel::Create(*r->group, c.options);
  if (ep.status().code() == StatusCode::kUnimplemented) {  // Group::device_group() not served
    fprintf(stderr, "%s\n", ep.status().ToString().c_str());
    return kNotWired;
  }
  CHILD_OK(ep.status());
  r->ep = std::move(*ep);
  CUDA_CHILD_OK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
  return 0;
}

// A routing's inputs and output in device memory.
struct DeviceCall {
  Routing routing;
  std::unique_ptr<DeviceBuffer> x, ids, weights, out;
  std::unique_ptr<DeviceBuffer> count;  // the token count, for DispatchOnStream(device_tokens)
};
int Upload(const EpCase& c, Routing routing, DeviceCall* d) {
  d->routing = std::move(routing);
  const Routing& r = d->routing;
  d->x = std::make_unique<DeviceBuffer>(r.x.size() + 16);
  d->ids = std::make_unique<DeviceBuffer>(r.ids.size() * 4 + 16);
  d->weights = std::make_unique<DeviceBuffer>(r.weights.size() * 4 + 16);
  d->out = std::make_unique<DeviceBuffer>(size_t(c.options.max_tokens) * RowBytes(c) + 16);
  d->count = std::make_unique<DeviceBuffer>(sizeof(int));
  CUDA_CHILD_OK(cudaMemcpy(d->count->data, &r.tokens, sizeof(int), cudaMemcpyHostToDevice));
  CUDA_CHILD_OK(cudaMemcpy(d->x->data, r.x.data(), r.x.size(), cudaMemcpyHostToDevice));
  CUDA_CHILD_OK(cudaMemcpy(d->ids->data, r.ids.data(), r.ids.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHILD_OK(
      cudaMemcpy(d->weights->data, r.weights.data(), r.weights.size() * 4, cudaMemcpyHostToDevice));
  return 0;
}

// device_count: the count passed in device memory instead of as a host value.
Status Dispatch(Rank& rank, const DeviceCall& d, bool device_count = false) {
  const auto* ids = static_cast<const int32_t*>(d.ids->data);
  const auto* weights = static_cast<const float*>(d.weights->data);
  if (device_count) {
    return rank.ep->DispatchOnStream(d.x->data, static_cast<const int*>(d.count->data), ids,
                                     weights, rank.stream);
  }
  return rank.ep->DispatchOnStream(d.x->data, d.routing.tokens, ids, weights, rank.stream);
}

// After the stream is done: call's output against the reference.
int CheckOutput(const EpCase& c, const DeviceCall& d, const char* what, int call) {
  std::vector<std::byte> out(d.routing.x.size());
  CUDA_CHILD_OK(cudaMemcpy(out.data(), d.out->data, out.size(), cudaMemcpyDeviceToHost));
  const std::string diff =
      CompareRows(c, out.data(), ExpectedOutput(c, d.routing).data(), d.routing.tokens);
  CHILD_CHECK(diff.empty(), "call %d (%s): %s", call, what, diff.c_str());
  return 0;
}

const RoutingKind kSchedule[] = {RoutingKind::kRandom,    RoutingKind::kOneExpert,
                                 RoutingKind::kSameRank,  RoutingKind::kNoTokens,
                                 RoutingKind::kMaxTokens, RoutingKind::kSkipLastRank,
                                 RoutingKind::kRandom,    RoutingKind::kMaxTokens};
constexpr int kCalls = sizeof(kSchedule) / sizeof(kSchedule[0]);

// An attention rank: every call of the schedule, two in flight, a third refused; then checks.
// The second call of each pair passes its token count in device memory.
int AttentionRank(const EpCase& c, Rank& r, int rank) {
  std::vector<DeviceCall> calls(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    if (Upload(c, MakeRouting(c, kSchedule[i], rank, uint64_t(i)), &calls[size_t(i)]) != 0)
      return 1;
  }
  for (int call = 0; call < kCalls; call += 2) {
    CHILD_OK(Dispatch(r, calls[size_t(call)]));
    CHILD_OK(Dispatch(r, calls[size_t(call) + 1], /*device_count=*/true));
    CHILD_CHECK(r.ep->calls_in_flight() == 2, "%d calls in flight", r.ep->calls_in_flight());
    Status third = Dispatch(r, calls[size_t(call)]);
    CHILD_CHECK(
        third.code() == StatusCode::kFailedPrecondition && Contains(third, "2 calls are in flight"),
        "%s", third.ToString().c_str());
    CHILD_OK(r.ep->ReceiveCombineOnStream(calls[size_t(call)].out->data, r.stream));
    CHILD_OK(r.ep->ReceiveCombineOnStream(calls[size_t(call) + 1].out->data, r.stream));
  }
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  for (int i = 0; i < kCalls; ++i) {
    if (CheckOutput(c, calls[size_t(i)], RoutingKindName(kSchedule[i]), i) != 0) return 1;
  }
  return 0;
}

// After the stream is done: the batch of `call` against the reference rows. *rows: its rows.
int CheckBatch(const EpCase& c, const DeviceExpertBatch& b, int rank, int call, int* rows) {
  std::vector<Routing> routings;
  for (int a = 0; a < c.m; ++a) routings.push_back(MakeRouting(c, kSchedule[call], a, call));
  const auto want = ExpectedRows(c, rank, routings);
  const size_t L = b.experts.size(), row_bytes = RowBytes(c);
  CHILD_CHECK(L == want.size(), "%zu experts, want %zu", L, want.size());
  std::vector<int> counts(L + 1), offsets(L + 1);
  CUDA_CHILD_OK(cudaMemcpy(counts.data(), b.counts, L * 4, cudaMemcpyDeviceToHost));
  CUDA_CHILD_OK(cudaMemcpy(offsets.data(), b.offsets, (L + 1) * 4, cudaMemcpyDeviceToHost));
  *rows = offsets[L];
  std::vector<ExpertRowSource> sources(static_cast<size_t>(*rows));
  std::vector<std::byte> x(static_cast<size_t>(*rows) * row_bytes);
  CUDA_CHILD_OK(cudaMemcpy(sources.data(), b.sources, sources.size() * sizeof(ExpertRowSource),
                           cudaMemcpyDeviceToHost));
  CUDA_CHILD_OK(cudaMemcpy(x.data(), b.x, x.size(), cudaMemcpyDeviceToHost));
  CHILD_CHECK(b.host_counts[L] == *rows, "host copy: %d rows, device %d", b.host_counts[L], *rows);
  for (size_t l = 0; l < L; ++l) {
    CHILD_CHECK(counts[l] == int(want[l].size()) && b.host_counts[l] == counts[l] &&
                    offsets[l + 1] - offsets[l] == counts[l],
                "call %d expert %d: %d rows (host copy %d), want %zu", call, b.experts[l],
                counts[l], b.host_counts[l], want[l].size());
    for (size_t i = 0; i < want[l].size(); ++i) {
      const size_t row = size_t(offsets[l]) + i;
      const ExpertRowSource& s = sources[row];
      const ExpectedRow& w = want[l][i];
      CHILD_CHECK(
          s.rank == w.rank && s.token == w.token && s.top_k_slot == w.slot && s.weight == w.weight,
          "call %d expert %d row %zu: from (%d, %d, %d), want (%d, %d, %d)", call, b.experts[l], i,
          s.rank, s.token, s.top_k_slot, w.rank, w.token, w.slot);
      const std::string diff = CompareRows(c, x.data() + row * row_bytes, w.x, 1);
      CHILD_CHECK(diff.empty(), "call %d expert %d row %zu: %s", call, b.experts[l], i,
                  diff.c_str());
    }
  }
  return 0;
}

// An expert rank: receives each call, checks it, runs the test's experts on the device, combines.
int ExpertRank(const EpCase& c, Rank& r, int rank) {
  std::unique_ptr<DeviceBuffer> y, experts;
  for (int call = 0; call < kCalls; ++call) {
    DeviceExpertBatch b;
    CHILD_OK(r.ep->ReceiveDispatchOnStream(&b, r.stream));
    if (!y) {
      y = std::make_unique<DeviceBuffer>(size_t(b.max_rows) * RowBytes(c) + 16);
      experts = std::make_unique<DeviceBuffer>(b.experts.size() * 4 + 4);
      CUDA_CHILD_OK(cudaMemcpy(experts->data, b.experts.data(), b.experts.size() * 4,
                               cudaMemcpyHostToDevice));
    }
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    int rows = 0;
    if (CheckBatch(c, b, rank, call, &rows) != 0) return 1;
    CUDA_CHILD_OK(LaunchApplyExperts(b.x, b.offsets, static_cast<const int*>(experts->data),
                                     int(b.experts.size()), b.max_rows, c.options.hidden,
                                     int(c.options.dtype), y->data, r.stream));
    CHILD_OK(r.ep->CombineOnStream(y->data, r.stream));
  }
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  return 0;
}

int DispatchAndCombine(const EpCase& c, int rank, int port) {
  Rank r;
  if (int made = MakeRank(c, rank, port, 2, &r); made != 0) return made;
  const int code = rank < c.m ? AttentionRank(c, r, rank) : ExpertRank(c, r, rank);
  if (code != 0) return code;
  CHILD_OK(r.group->Progress());
  CHILD_OK(r.group->Close(Deadline::AfterMs(20000)));
  return 0;
}

EpCase MakeCase(int m, int n, DataType dtype, int experts, int top_k,
                std::vector<int> placement = {}, int hidden = 24, int max_tokens = 13) {
  EpCase c{m, n, {}};
  c.options = {.num_experts = experts,
               .top_k = top_k,
               .hidden = hidden,
               .dtype = dtype,
               .max_tokens = max_tokens,
               .placement = std::move(placement)};
  return c;
}

class EpGpu : public ::testing::TestWithParam<EpCase> {};

TEST_P(EpGpu, DispatchAndCombineEveryRoutingKind) {
  SKIP_WITHOUT_GPU();
  const EpCase& c = GetParam();
  Judge(RunRanks(
      c.m + c.n, [&](int rank, int port) { return DispatchAndCombine(c, rank, port); }, 180));
}

std::vector<EpCase> Cases() {
  std::vector<EpCase> cases;
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat32}) {
    cases.push_back(MakeCase(1, 1, dtype, 4, 2));
    cases.push_back(MakeCase(2, 2, dtype, 8, 2, {3, 2, 3, 2, 2, 3, 3, 2}));  // scattered
    cases.push_back(MakeCase(3, 1, dtype, 8, 8));  // every expert of every token
    cases.push_back(MakeCase(1, 3, dtype, 4, 2, {1, 1, 3, 3}));  // rank 2 holds no expert
    cases.push_back(MakeCase(2, 3, dtype, 8, 3, {4, 2, 4, 3, 2, 4, 4, 2}));
  }
  // Rows of 14 bytes (no 16- or 4-byte words); long rows over many blocks per peer.
  cases.push_back(MakeCase(2, 3, DataType::kBFloat16, 8, 3, {4, 2, 4, 3, 2, 4, 4, 2}, 7));
  cases.push_back(MakeCase(2, 2, DataType::kBFloat16, 16, 4, {}, 4096, 128));
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, EpGpu, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<EpCase>& info) {
                           return EpCaseName(info.param) + "_h" +
                                  std::to_string(info.param.options.hidden);
                         });

// ---------------------------------------------------------------------------------------------

constexpr int kReplays = 20;

// One expert-rank layer step (receive, the test's experts, combine) on r.stream.
struct ExpertStep {
  DeviceExpertBatch batch;
  std::unique_ptr<DeviceBuffer> y, experts;
};
// The step's buffers, before any capture (a capture may not allocate or copy synchronously).
int PrepareExpertStep(const EpCase& c, int rank, ExpertStep* step) {
  std::vector<int> experts;
  for (int e = 0; e < c.options.num_experts; ++e)
    if (ExpertOwner(c, e) == rank) experts.push_back(e);
  const size_t max_rows = size_t(c.m) * size_t(c.options.max_tokens) *
                          size_t(std::min(c.options.top_k, int(experts.size())));
  step->y = std::make_unique<DeviceBuffer>(max_rows * RowBytes(c) + 16);
  step->experts = std::make_unique<DeviceBuffer>(experts.size() * 4 + 4);
  CUDA_CHILD_OK(
      cudaMemcpy(step->experts->data, experts.data(), experts.size() * 4, cudaMemcpyHostToDevice));
  return 0;
}

int EnqueueExpertStep(const EpCase& c, Rank& r, ExpertStep* step) {
  CHILD_OK(r.ep->ReceiveDispatchOnStream(&step->batch, r.stream));
  const DeviceExpertBatch& b = step->batch;
  CHILD_CHECK(step->y != nullptr, "PrepareExpertStep first");
  CUDA_CHILD_OK(LaunchApplyExperts(b.x, b.offsets, static_cast<const int*>(step->experts->data),
                                   int(b.experts.size()), b.max_rows, c.options.hidden,
                                   int(c.options.dtype), step->y->data, r.stream));
  CHILD_OK(r.ep->CombineOnStream(step->y->data, r.stream));
  return 0;
}

// Each rank captures one layer into a graph and replays it kReplays times (the call numbers
// advance on the device), then runs one more call without the graph: outputs and call numbers
// agree with the reference throughout.
int GraphRank(const EpCase& c, int rank, int port) {
  Rank r;
  if (int made = MakeRank(c, rank, port, 2, &r); made != 0) return made;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  DeviceCall call;
  ExpertStep step;
  if (rank < c.m && Upload(c, MakeRouting(c, RoutingKind::kRandom, rank, 0), &call) != 0) return 1;
  if (rank >= c.m && PrepareExpertStep(c, rank, &step) != 0) return 1;
  CUDA_CHILD_OK(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeThreadLocal));
  int captured = 0;
  if (rank < c.m) {
    cudaMemsetAsync(call.out->data, 0, call.routing.x.size(), r.stream);
    Status s = Dispatch(r, call);
    if (s.ok()) s = r.ep->ReceiveCombineOnStream(call.out->data, r.stream);
    captured = s.ok() ? 0 : 1;
    if (!s.ok()) fprintf(stderr, "capture: %s\n", s.ToString().c_str());
  } else {
    captured = EnqueueExpertStep(c, r, &step);
  }
  CUDA_CHILD_OK(cudaStreamEndCapture(r.stream, &graph));
  CHILD_CHECK(captured == 0, "the layer could not be captured");
  CUDA_CHILD_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < kReplays; ++i) CUDA_CHILD_OK(cudaGraphLaunch(exec, r.stream));
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  if (rank < c.m) {
    if (CheckOutput(c, call, "after the replays", kReplays - 1) != 0) return 1;
    CUDA_CHILD_OK(cudaMemset(call.out->data, 0, call.routing.x.size()));
    CHILD_OK(Dispatch(r, call));
    CHILD_OK(r.ep->ReceiveCombineOnStream(call.out->data, r.stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    if (CheckOutput(c, call, "the call after the replays", kReplays) != 0) return 1;
    CHILD_OK(Dispatch(r, call));  // no error was recorded on the device
    CHILD_OK(r.ep->ReceiveCombineOnStream(call.out->data, r.stream));
  } else {
    int rows = 0;
    if (CheckBatch(c, step.batch, rank, 0, &rows) != 0) return 1;
    for (int i = 0; i < 2; ++i)
      if (EnqueueExpertStep(c, r, &step) != 0) return 1;
  }
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  CHILD_OK(r.group->Progress());
  CHILD_OK(r.group->Close(Deadline::AfterMs(20000)));
  return 0;
}

TEST(EpGpuLayer, GraphCaptureAndReplays) {
  SKIP_WITHOUT_GPU();
  const EpCase c = MakeCase(2, 2, DataType::kBFloat16, 8, 2, {3, 2, 3, 2, 2, 3, 3, 2});
  Judge(RunRanks(
      4, [&](int rank, int port) { return GraphRank(c, rank, port); }, 180));
}

// ---------------------------------------------------------------------------------------------

constexpr int kPressureCalls = 40;

// The attention ranks enqueue all their calls at once (two in flight at a time, the host never
// waits); the expert ranks start 300 ms late and answer one call at a time.
int PressureRank(const EpCase& c, int rank, int port) {
  Rank r;
  if (int made = MakeRank(c, rank, port, 2, &r); made != 0) return made;
  if (rank < c.m) {
    std::vector<DeviceCall> calls(kPressureCalls);
    for (int i = 0; i < kPressureCalls; ++i) {
      if (Upload(c, MakeRouting(c, RoutingKind::kRandom, rank, uint64_t(i)), &calls[size_t(i)]))
        return 1;
    }
    for (int i = 0; i < kPressureCalls; i += 2) {
      CHILD_OK(Dispatch(r, calls[size_t(i)]));
      CHILD_OK(Dispatch(r, calls[size_t(i) + 1]));
      CHILD_OK(r.ep->ReceiveCombineOnStream(calls[size_t(i)].out->data, r.stream));
      CHILD_OK(r.ep->ReceiveCombineOnStream(calls[size_t(i) + 1].out->data, r.stream));
    }
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    for (int i = 0; i < kPressureCalls; ++i)
      if (CheckOutput(c, calls[size_t(i)], "under credit pressure", i) != 0) return 1;
  } else {
    ExpertStep step;
    if (PrepareExpertStep(c, rank, &step) != 0) return 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (int i = 0; i < kPressureCalls; ++i) {
      if (EnqueueExpertStep(c, r, &step) != 0) return 1;
      CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    }
  }
  CHILD_OK(r.group->Progress());
  CHILD_OK(r.group->Close(Deadline::AfterMs(20000)));
  return 0;
}

TEST(EpGpuLayer, CreditPressure) {
  SKIP_WITHOUT_GPU();
  const EpCase c = MakeCase(2, 2, DataType::kFloat32, 8, 2);
  Judge(RunRanks(
      4, [&](int rank, int port) { return PressureRank(c, rank, port); }, 180));
}

// ---------------------------------------------------------------------------------------------

// 1 x 1: bad calls, each named; an expert id out of range (or, `bad_count`, a device token count
// above max_tokens) found on the device is named by the next call.
int BadCallsRank(int rank, int port, bool bad_count) {
  const EpCase c = MakeCase(1, 1, DataType::kFloat32, 4, 1);
  Rank r;
  if (int made = MakeRank(c, rank, port, 2, &r); made != 0) return made;
  if (rank == 0) {
    DeviceCall call;
    Routing routing = MakeRouting(c, RoutingKind::kMaxTokens, 0, 0);
    if (!bad_count) routing.ids[5] = 4;
    if (Upload(c, routing, &call) != 0) return 1;
    if (bad_count) {
      const int too_many = 14;
      CUDA_CHILD_OK(
          cudaMemcpy(call.count->data, &too_many, sizeof too_many, cudaMemcpyHostToDevice));
    }
    const std::vector<std::byte> host_x(call.routing.x.size());
    Status s = r.ep->DispatchOnStream(host_x.data(), call.routing.tokens,
                                      static_cast<const int32_t*>(call.ids->data),
                                      static_cast<const float*>(call.weights->data), r.stream);
    CHILD_CHECK(s.code() == StatusCode::kInvalidArgument && Contains(s, "x (a host address)"), "%s",
                s.ToString().c_str());
    s = r.ep->DispatchOnStream(call.x->data, 14, static_cast<const int32_t*>(call.ids->data),
                               static_cast<const float*>(call.weights->data), r.stream);
    CHILD_CHECK(Contains(s, "DispatchOnStream of 14 tokens; this layer takes 0 to max_tokens = 13"),
                "%s", s.ToString().c_str());
    s = r.ep->ReceiveCombineOnStream(call.out->data, r.stream);
    CHILD_CHECK(s.code() == StatusCode::kFailedPrecondition, "%s", s.ToString().c_str());
    DeviceExpertBatch b;
    CHILD_CHECK(Contains(r.ep->ReceiveDispatchOnStream(&b, r.stream), "is for expert ranks"),
                "wrong side not named");
    s = r.ep->Dispatch(call.routing.x.data(), call.routing.tokens, call.routing.ids,
                       call.routing.weights, Deadline::AfterMs(1000));
    CHILD_CHECK(Contains(s, "needs a group with host slots"), "%s", s.ToString().c_str());
    CHILD_OK(Dispatch(r, call, bad_count));  // the bad id / count is found on the device
    CHILD_OK(r.ep->ReceiveCombineOnStream(call.out->data, r.stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    s = Dispatch(r, call);
    const std::string want = bad_count
                                 ? "*device_tokens = 14; this layer takes 0 to max_tokens = 13"
                                 : "topk_ids[5][0] = 4 is not an expert id in [0, 4)";
    CHILD_CHECK(s.code() == StatusCode::kInvalidArgument && Contains(s, want), "%s",
                s.ToString().c_str());
  } else {
    DeviceBuffer y(64);
    Status s = r.ep->CombineOnStream(y.data, r.stream);
    CHILD_CHECK(Contains(s, "no received dispatch is waiting"), "%s", s.ToString().c_str());
    ExpertStep step;
    if (PrepareExpertStep(c, rank, &step) != 0) return 1;
    if (EnqueueExpertStep(c, r, &step) != 0) return 1;
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  }
  CHILD_OK(r.group->Barrier(Deadline::AfterMs(20000)));
  return 0;
}

TEST(EpGpuLayer, BadCallsAreNamed) {
  SKIP_WITHOUT_GPU();
  Judge(RunRanks(
      2, [](int rank, int port) { return BadCallsRank(rank, port, false); }, 120));
}

TEST(EpGpuLayer, ADeviceTokenCountAboveMaxIsNamed) {
  SKIP_WITHOUT_GPU();
  Judge(RunRanks(
      2, [](int rank, int port) { return BadCallsRank(rank, port, true); }, 120));
}

// 1 x 1 with a 3 s device timeout (cuda_ipc_gpu_test's DeviceWaitTimeout): the expert rank never
// receives. The attention rank's combine wait gives up on the device, and its next call returns
// the group's kDeadlineExceeded.
int NeverComesRank(int rank, int port) {
  const EpCase c = MakeCase(1, 1, DataType::kBFloat16, 4, 2);
  Rank r;
  if (int made = MakeRank(c, rank, port, 2, &r, 3000); made != 0) return made;
  if (rank == 1) {
    usleep(5000 * 1000);  // receives nothing
    return 0;
  }
  DeviceCall call;
  if (Upload(c, MakeRouting(c, RoutingKind::kRandom, 0, 0), &call) != 0) return 1;
  CHILD_OK(Dispatch(r, call));
  CHILD_OK(r.ep->ReceiveCombineOnStream(call.out->data, r.stream));
  const auto start = std::chrono::steady_clock::now();
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));  // returns once the device wait gives up
  CHILD_CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(15),
              "the device wait was not bounded");
  Status s = Dispatch(r, call);
  CHILD_CHECK(s.code() == StatusCode::kDeadlineExceeded, "%s", s.ToString().c_str());
  fprintf(stderr, "the attention rank's next call: %s\n", s.ToString().c_str());
  return 0;
}

TEST(EpGpuLayer, AReceiverThatNeverComesIsNamed) {
  SKIP_WITHOUT_GPU();
  Judge(RunRanks(2, NeverComesRank, 120));
}

}  // namespace
}  // namespace m2n::testing
