#include "report.h"

#include <algorithm>
#include <cmath>

#include "cli.h"

namespace m2n::perf {
namespace {

std::string Format(const char* format, auto... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer), format, args...);
  return buffer;
}

// A box of "key  value" lines, as wide as its widest line. An empty line draws a rule.
class Box {
 public:
  void Line(const std::string& key, const std::string& value) {
    lines_.push_back(key.empty() ? value : Format("%-11s %s", key.c_str(), value.c_str()));
  }
  void Rule() { lines_.emplace_back(); }
  void Print(std::FILE* out) const {
    size_t width = 0;
    for (const auto& line : lines_) width = std::max(width, line.size());
    const std::string rule = "+" + std::string(width + 2, '-') + "+";
    for (const auto& line : lines_) {
      if (line.empty()) {
        std::fprintf(out, "%s\n", rule.c_str());
      } else {
        std::fprintf(out, "| %s%s |\n", line.c_str(),
                     std::string(width - line.size(), ' ').c_str());
      }
    }
  }

 private:
  std::vector<std::string> lines_;
};

std::string RankRange(int first, int count) {
  return count == 1 ? std::to_string(first)
                    : std::to_string(first) + "-" + std::to_string(first + count - 1);
}

std::string Ratio(double a, double b) {
  if (!(b > 0) || !std::isfinite(a / b)) return "-";
  return Format("%.2fx", a / b);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += Format("\\u%04x", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return Format("%.6g", v);
}

}  // namespace

void PrintHeader(std::FILE* out, const RunInfo& info) {
  Box box;
  box.Rule();
  box.Line("", "m2n_perf: M senders x N receivers, one message per pair per iteration");
  box.Rule();
  box.Line("m2n", info.version);
  box.Line("shape", Format("%d x %d: senders rank %s, receivers rank %s", info.senders,
                           info.receivers, RankRange(0, info.senders).c_str(),
                           RankRange(info.senders, info.receivers).c_str()));
  box.Line("transport", info.transport + (info.transport_requested == info.transport
                                              ? std::string()
                                              : " (requested " + info.transport_requested + ")"));
  box.Line("UCX_TLS", info.ucx_tls.empty() ? "(not set)" : info.ucx_tls);
  box.Line("slots",
           Format("%d x %zu B per peer (depth x bytes)", info.slot_depth, info.slot_bytes));
  box.Line("sizes", FormatSize(info.min_bytes) + " .. " + FormatSize(info.max_bytes) + " B, x" +
                        std::to_string(info.step_factor));
  box.Line("iterations", Format("%d + %d warmup per size; bandwidth: %d messages per pair",
                                info.iters, info.warmup_iters, info.iters));
  box.Line("latency", info.latency_mode + ": " + info.latency_rule);
  box.Line("waiting", info.spin);
  box.Line("check", info.check ? "on (every received byte)" : "off");
  box.Line("host", info.host);
  box.Line("launcher", info.launcher);
  if (!info.gpu.empty()) box.Line("gpu", info.gpu);
  for (size_t i = 0; i < info.topology.size(); ++i) {
    box.Line(i == 0 ? "topology" : "", (i == 0 ? "" : std::string(12, ' ')) + info.topology[i]);
  }
  if (!info.placement.empty()) box.Line("placement", info.placement);
  box.Line("baseline",
           info.baseline == "mpi"    ? "MPI Isend/Irecv, " + info.mpi_library
           : info.baseline == "nccl" ? "grouped ncclSend/ncclRecv, " + info.nccl_library
           : info.baseline == "perftest"
               ? std::string("ib_write_lat / ib_write_bw on the same device, after the sweep")
               : std::string("none"));
  box.Line("units", "us = 1e-6 s; GB/s = 1e9 B/s, all pairs together; Mmsg/s likewise");
  box.Rule();
  box.Print(out);
}

void PrintTableHead(std::FILE* out, bool with_impl) {
  std::fprintf(out, "%12s %s%10s %10s %10s %10s %10s %8s\n", "bytes", with_impl ? "impl     " : "",
               "p50 us", "p99 us", "max us", "GB/s", "Mmsg/s", "#wrong");
}

std::string FormatRow(const Row& row, bool with_impl) {
  std::string impl = with_impl ? Format("%-8s ", row.impl.c_str()) : "";
  return Format("%12zu %s%10.2f %10.2f %10.2f %10.3f %10.4f %8llu", row.bytes, impl.c_str(),
                row.latency.p50_us, row.latency.p99_us, row.latency.max_us, row.gbps,
                row.mmsg_per_s, static_cast<unsigned long long>(row.wrong));
}

void PrintRow(std::FILE* out, const Row& row, bool with_impl) {
  std::fprintf(out, "%s\n", FormatRow(row, with_impl).c_str());
}

void PrintRatioRow(std::FILE* out, const Row& m2n, const Row& mpi) {
  std::fprintf(out, "%12zu %-8s %10s %10s %10s %10s\n", m2n.bytes, ("m2n/" + mpi.impl).c_str(),
               Ratio(m2n.latency.p50_us, mpi.latency.p50_us).c_str(),
               Ratio(m2n.latency.p99_us, mpi.latency.p99_us).c_str(),
               Ratio(m2n.latency.max_us, mpi.latency.max_us).c_str(),
               Ratio(m2n.gbps, mpi.gbps).c_str());
}

void PrintFooter(std::FILE* out, uint64_t total_wrong, double elapsed_s, size_t sizes) {
  std::fprintf(out, "# total #wrong: %llu%s   sizes: %zu   elapsed: %.2f s\n",
               static_cast<unsigned long long>(total_wrong), total_wrong == 0 ? "" : " (FAILED)",
               sizes, elapsed_s);
}

std::string FormatJson(const RunInfo& info, const std::vector<Row>& rows, uint64_t total_wrong,
                       double elapsed_s) {
  std::string j = "{\n  \"tool\": \"m2n_perf\",\n";
  j += "  \"config\": {\n";
  j += "    \"m2n_version\": " + JsonString(info.version) + ",\n";
  j += "    \"senders\": " + std::to_string(info.senders) + ",\n";
  j += "    \"receivers\": " + std::to_string(info.receivers) + ",\n";
  j += "    \"transport\": " + JsonString(info.transport) + ",\n";
  j += "    \"transport_requested\": " + JsonString(info.transport_requested) + ",\n";
  j += "    \"slot_bytes\": " + std::to_string(info.slot_bytes) + ",\n";
  j += "    \"slot_depth\": " + std::to_string(info.slot_depth) + ",\n";
  j += "    \"min_bytes\": " + std::to_string(info.min_bytes) + ",\n";
  j += "    \"max_bytes\": " + std::to_string(info.max_bytes) + ",\n";
  j += "    \"step_factor\": " + std::to_string(info.step_factor) + ",\n";
  j += "    \"iters\": " + std::to_string(info.iters) + ",\n";
  j += "    \"warmup_iters\": " + std::to_string(info.warmup_iters) + ",\n";
  j += "    \"check\": " + std::string(info.check ? "true" : "false") + ",\n";
  j += "    \"host\": " + JsonString(info.host) + ",\n";
  j += "    \"launcher\": " + JsonString(info.launcher) + ",\n";
  j += "    \"ucx_tls\": " +
       (info.ucx_tls.empty() ? std::string("null") : JsonString(info.ucx_tls)) + ",\n";
  j += "    \"latency_mode\": " + JsonString(info.latency_mode) + ",\n";
  j += "    \"latency_rule\": " + JsonString(info.latency_rule) + ",\n";
  j += "    \"spin\": " + JsonString(info.spin) + ",\n";
  j += "    \"baseline\": " + JsonString(info.baseline) + ",\n";
  j += "    \"mpi_library\": " +
       (info.mpi_library.empty() ? std::string("null") : JsonString(info.mpi_library)) + ",\n";
  j += "    \"nccl_library\": " +
       (info.nccl_library.empty() ? std::string("null") : JsonString(info.nccl_library)) + ",\n";
  j += "    \"gpu\": " + (info.gpu.empty() ? std::string("null") : JsonString(info.gpu)) + ",\n";
  j += "    \"topology\": [";
  for (size_t i = 0; i < info.topology.size(); ++i)
    j += (i ? ", " : "") + JsonString(info.topology[i]);
  j += "],\n";
  j += "    \"placement\": " + JsonString(info.placement) + "\n";
  j += "  },\n  \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    j += "    {\"bytes\": " + std::to_string(r.bytes) + ", \"impl\": " + JsonString(r.impl) +
         ", \"p50_us\": " + JsonNumber(r.latency.p50_us) +
         ", \"p99_us\": " + JsonNumber(r.latency.p99_us) +
         ", \"max_us\": " + JsonNumber(r.latency.max_us) +
         ", \"mean_us\": " + JsonNumber(r.latency.mean_us) +
         ", \"samples\": " + std::to_string(r.latency.samples) +
         ", \"gb_per_s\": " + JsonNumber(r.gbps) + ", \"mmsg_per_s\": " + JsonNumber(r.mmsg_per_s) +
         ", \"wrong\": " + std::to_string(r.wrong) + "}";
    j += i + 1 < rows.size() ? ",\n" : "\n";
  }
  j += "  ],\n  \"ratios\": [";
  // m2n / baseline per size, when both rows are there: the first baseline row (MPI, NCCL or
  // perftest) of the same size, whether it follows the m2n row or comes after the sweep.
  bool first = true;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& a = rows[i];
    if (a.impl != "m2n") continue;
    auto match = std::find_if(rows.begin(), rows.end(),
                              [&](const Row& r) { return r.impl != "m2n" && r.bytes == a.bytes; });
    if (match == rows.end()) continue;
    const Row& b = *match;
    auto ratio = [](double x, double y) { return y > 0 ? JsonNumber(x / y) : std::string("null"); };
    j += std::string(first ? "\n" : ",\n") + "    {\"bytes\": " + std::to_string(a.bytes) +
         ", \"p50\": " + ratio(a.latency.p50_us, b.latency.p50_us) +
         ", \"baseline\": " + JsonString(b.impl) +
         ", \"p99\": " + ratio(a.latency.p99_us, b.latency.p99_us) +
         ", \"max\": " + ratio(a.latency.max_us, b.latency.max_us) +
         ", \"gb_per_s\": " + ratio(a.gbps, b.gbps) + "}";
    first = false;
  }
  j += first ? "],\n" : "\n  ],\n";
  j += "  \"total_wrong\": " + std::to_string(total_wrong) + ",\n";
  j += "  \"elapsed_s\": " + JsonNumber(elapsed_s) + "\n}\n";
  return j;
}

}  // namespace m2n::perf
