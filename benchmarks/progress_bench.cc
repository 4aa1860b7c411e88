// Micro-benchmark of one Group::Progress() round with nothing to do: a 1 x 1 group over UCX (shared
// memory), the peer a forked process that waits in a barrier meanwhile. This is what a rank that
// neither sends nor receives pays per call, and the floor under every blocking call's poll loop.
#include "progress_bench.h"

#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "harness.h"
#include "m2n/m2n.h"

namespace m2n::bench {
namespace {

struct Peer {
  std::unique_ptr<Group> group;  // rank 0 (sender), this process
  pid_t child = -1;  // rank 1 (receiver)
};
Peer* peer = nullptr;

Options ProgressOptions(int rank, int port) {
  Options o = testing::TestOptions(1, 1, rank, port);
  o.transport = "ucx";
  o.slot_bytes = 4096;
  return o;
}

// Rank 1: joins, then waits in a barrier until rank 0 has finished measuring.
[[noreturn]] void RunPeer(int port) {
  auto g = Group::Create(ProgressOptions(1, port));
  if (!g.ok()) {
    std::fprintf(stderr, "progress peer: %s\n", g.status().ToString().c_str());
    _exit(1);
  }
  Status s = (*g)->Barrier(Deadline::AfterMs(600000));
  if (s.ok()) s = (*g)->Close(Deadline::AfterMs(20000));
  _exit(s.ok() ? 0 : 1);
}

// Forks the peer (before this process makes any m2n object) and creates rank 0.
Status Start() {
  const int port = testing::FreePort();
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) RunPeer(port);
  auto g = Group::Create(ProgressOptions(0, port));
  peer = new Peer{nullptr, child};
  if (!g.ok()) return g.status();
  peer->group = std::move(g).value();
  return OkStatus();
}

void BM_ProgressIdle(benchmark::State& state) {
  if (peer == nullptr) {
    if (Status s = Start(); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
  }
  if (peer->group == nullptr) {
    state.SkipWithError("the 1 x 1 group could not be created");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(peer->group->Progress().ok());
}
BENCHMARK(BM_ProgressIdle);

}  // namespace

int StopProgressPeer() {
  if (peer == nullptr) return 0;
  Status s = OkStatus();
  if (peer->group) {
    s = peer->group->Barrier(Deadline::AfterMs(20000));
    if (s.ok()) s = peer->group->Close(Deadline::AfterMs(20000));
    peer->group.reset();
  }
  int wstatus = 0;
  waitpid(peer->child, &wstatus, 0);
  const bool peer_ok = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
  if (!s.ok() || !peer_ok) {
    std::fprintf(stderr, "progress benchmark: %s; peer status %d\n", s.ToString().c_str(), wstatus);
    return 1;
  }
  return 0;
}

}  // namespace m2n::bench
