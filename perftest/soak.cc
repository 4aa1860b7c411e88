#include "soak.h"

#include <unistd.h>

#include <algorithm>

#include "host_barrier.h"

namespace m2n::perf {
namespace {

double Mib(size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

uint64_t MessagesPerSweep(const PerfConfig& config, int senders, int receivers, size_t sizes) {
  const uint64_t pairs = static_cast<uint64_t>(senders) * static_cast<uint64_t>(receivers);
  const uint64_t per_size =
      static_cast<uint64_t>(config.warmup_iters) + 2 * static_cast<uint64_t>(config.iters);
  return pairs * per_size * sizes;
}

int SoakSweeps(const PerfConfig& config, int senders, int receivers, size_t sizes) {
  if (config.soak_messages == 0) return 1;
  const uint64_t per_sweep =
      std::max<uint64_t>(1, MessagesPerSweep(config, senders, receivers, sizes));
  return static_cast<int>(
      std::max<uint64_t>(1, (config.soak_messages + per_sweep - 1) / per_sweep));
}

size_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0;
  unsigned long resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

SoakMonitor::SoakMonitor(int rank, int sweeps, uint64_t messages_per_sweep, double every_s)
    : rank_(rank),
      sweeps_(sweeps),
      messages_per_sweep_(messages_per_sweep),
      every_s_(every_s),
      rss_start_(ResidentBytes()),
      start_ns_(NowNs()),
      last_print_ns_(start_ns_) {}

void SoakMonitor::AfterSweep(std::FILE* out, int sweep, uint64_t wrong) {
  if (sweep == 0) rss_first_ = ResidentBytes();
  if (rank_ != 0) return;
  const int64_t now = NowNs();
  const bool last = sweep + 1 == sweeps_;
  if (!last && static_cast<double>(now - last_print_ns_) / 1e9 < every_s_) return;
  last_print_ns_ = now;
  std::fprintf(
      out, "# soak: sweep %d of %d, %llu messages, #wrong %llu, rank 0 RSS %.1f MiB, %.0f s\n",
      sweep + 1, sweeps_, static_cast<unsigned long long>(messages_per_sweep_ * (sweep + 1)),
      static_cast<unsigned long long>(wrong), Mib(ResidentBytes()),
      static_cast<double>(now - start_ns_) / 1e9);
  std::fflush(out);
}

void SoakMonitor::Finish(std::FILE* out, uint64_t wrong, double elapsed_s) const {
  const size_t end = ResidentBytes();
  // One write per line, so the ranks' lines do not interleave mid-line on a shared stdout.
  std::fprintf(out,
               "# soak rank %d: RSS start %.1f MiB, after sweep 1 %.1f MiB, end %.1f MiB "
               "(end - after sweep 1: %+.1f MiB)\n",
               rank_, Mib(rss_start_), Mib(rss_first_), Mib(end),
               (static_cast<double>(end) - static_cast<double>(rss_first_)) / (1 << 20));
  if (rank_ == 0) {
    std::fprintf(
        out, "# soak: %llu messages in %d sweeps, %.1f s, #wrong %llu\n",
        static_cast<unsigned long long>(messages_per_sweep_ * static_cast<uint64_t>(sweeps_)),
        sweeps_, elapsed_s, static_cast<unsigned long long>(wrong));
  }
  std::fflush(out);
}

}  // namespace m2n::perf
