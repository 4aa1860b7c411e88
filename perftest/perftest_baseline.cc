#include "perftest_baseline.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace m2n::perf {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* dir = opendir(path.c_str())) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
    }
    closedir(dir);
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool OnPath(const std::string& tool) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (access((dir + "/" + tool).c_str(), X_OK) == 0) return true;
  }
  return false;
}

int FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Whether something listens on TCP `port` (/proc/net/tcp{,6}, state 0A). Connecting to find out
// would be taken by the perftest server as its client.
bool Listening(int port) {
  char hex[8];
  std::snprintf(hex, sizeof hex, ":%04X", port);
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      if (state == "0A" && local.size() >= 5 && local.compare(local.size() - 5, 5, hex) == 0)
        return true;
    }
  }
  return false;
}

// A child running `argv` with stdout and stderr into a pipe.
struct Child {
  pid_t pid = -1;
  int fd = -1;
  std::string output;
  int status = -1;  // waitpid status once reaped
};

Child Start(const std::vector<std::string>& argv) {
  Child child;
  int fds[2];
  if (pipe(fds) != 0) return child;
  std::fflush(nullptr);
  child.pid = fork();
  if (child.pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  child.fd = fds[0];
  return child;
}

// Reads output and reaps; kills the child at the deadline. True when it exited 0.
bool Finish(Child& child, SteadyClock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now())
            .count();
    if (left <= 0) {
      kill(child.pid, SIGKILL);
      child.output += "\n(killed: no result within the time limit)";
      break;
    }
    pollfd pfd{child.fd, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, 100))) > 0) {
      char chunk[4096];
      const ssize_t n = read(child.fd, chunk, sizeof chunk);
      if (n <= 0) break;  // EOF: the child closed its output
      child.output.append(chunk, static_cast<size_t>(n));
    }
  }
  close(child.fd);
  waitpid(child.pid, &child.status, 0);
  return WIFEXITED(child.status) && WEXITSTATUS(child.status) == 0;
}

// The numbers of the result line that starts with `bytes`.
std::vector<double> ResultLine(const std::string& output, size_t bytes) {
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream tokens(line);
    std::string first;
    if (!(tokens >> first) || first != std::to_string(bytes)) continue;
    std::vector<double> values = {static_cast<double>(bytes)};
    std::string token;
    while (tokens >> token) {
      char* end = nullptr;
      const double v = std::strtod(token.c_str(), &end);
      if (end == token.c_str()) break;
      values.push_back(v);
    }
    if (values.size() >= 5) return values;
  }
  return {};
}

std::string Tail(const std::string& text) {
  return text.size() <= 600 ? text : "..." + text.substr(text.size() - 600);
}

// Runs one tool's server and client at `bytes`; the client's output.
StatusOr<std::string> RunPair(const PerftestSetup& setup, const std::string& tool, size_t bytes,
                              int iters, const std::vector<std::string>& extra) {
  const auto deadline = SteadyClock::now() + std::chrono::milliseconds(setup.timeout_ms);
  const int port = FreeTcpPort();
  std::vector<std::string> argv = {tool,
                                   "-d",
                                   setup.device,
                                   "-i",
                                   std::to_string(setup.port),
                                   "-x",
                                   std::to_string(setup.gid_index),
                                   "-s",
                                   std::to_string(bytes),
                                   "-n",
                                   std::to_string(iters),
                                   "-p",
                                   std::to_string(port),
                                   "-F"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Child server = Start(argv);
  if (server.pid < 0) return InternalError("perftest baseline: starting " + tool + " failed");
  while (!Listening(port) && SteadyClock::now() < deadline) {
    if (waitpid(server.pid, &server.status, WNOHANG) == server.pid) {
      server.pid = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::vector<std::string> client_argv = argv;
  client_argv.push_back(setup.address);
  Child client = Start(client_argv);
  const bool client_ok = client.pid >= 0 && Finish(client, deadline);
  bool server_ok = false;
  if (server.pid >= 0) {
    server_ok = Finish(server, deadline + std::chrono::seconds(2));
  } else {
    close(server.fd);
  }
  if (!client_ok || !server_ok) {
    return UnavailableError("perftest baseline: " + tool + " at " + std::to_string(bytes) +
                            " B on " + setup.device + " GID " + std::to_string(setup.gid_index) +
                            " failed; client said: " + Tail(client.output) +
                            (server_ok ? "" : "; server said: " + Tail(server.output)));
  }
  return client.output;
}

}  // namespace

StatusOr<PerftestSetup> ResolvePerftestSetup(const PerfConfig& config) {
  PerftestSetup setup;
  setup.iters = std::max(5, config.iters);
  setup.timeout_ms = config.timeout_ms;
  const char* address = std::getenv("M2N_PERFTEST_ADDR");
  setup.address = address != nullptr && *address != '\0' ? address : "127.0.0.1";
  for (const char* tool : {"ib_write_lat", "ib_write_bw"}) {
    if (!OnPath(tool)) {
      return UnavailableError(std::string("--baseline perftest: ") + tool +
                              " is not on PATH (apt-get install perftest)");
    }
  }
  const std::string root = "/sys/class/infiniband";
  const char* wanted = std::getenv("M2N_VERBS_DEVICE");
  const char* wanted_port = std::getenv("M2N_VERBS_PORT");
  std::string devices;
  for (const std::string& device : ListDir(root)) {
    devices += (devices.empty() ? "" : ", ") + device;
    if (wanted != nullptr && *wanted != '\0' && device != wanted) continue;
    for (const std::string& port : ListDir(root + "/" + device + "/ports")) {
      if (wanted_port != nullptr && *wanted_port != '\0' && port != wanted_port) continue;
      if (ReadLine(root + "/" + device + "/ports/" + port + "/state").find("ACTIVE") ==
          std::string::npos)
        continue;
      setup.device = device;
      setup.port = std::atoi(port.c_str());
      break;
    }
    if (!setup.device.empty()) break;
  }
  if (setup.device.empty()) {
    return UnavailableError(
        "--baseline perftest: no RDMA device with an active port" +
        (devices.empty() ? std::string(" (/sys/class/infiniband is empty)") : " among " + devices) +
        (wanted != nullptr ? std::string(" matching M2N_VERBS_DEVICE=") + wanted : ""));
  }
  const std::string port_dir = root + "/" + setup.device + "/ports/" + std::to_string(setup.port);
  if (const char* gid = std::getenv("M2N_VERBS_GID_INDEX");
      gid != nullptr && *gid != '\0' && std::atoi(gid) >= 0) {
    setup.gid_index = std::atoi(gid);
  } else if (ReadLine(port_dir + "/link_layer") == "Ethernet") {
    // As the verbs transport chooses: RoCE v2 of an IPv4 address, else RoCE v2, else anything.
    int best = -1, best_rank = 0;
    for (const std::string& index : ListDir(port_dir + "/gids")) {
      const std::string gid = ReadLine(port_dir + "/gids/" + index);
      if (gid.empty() || gid.find_first_not_of("0:") == std::string::npos) continue;
      const bool v2 = ReadLine(port_dir + "/gid_attrs/types/" + index) == "RoCE v2";
      const bool ipv4 = gid.rfind("0000:0000:0000:0000:0000:ffff:", 0) == 0;
      const int rank = v2 ? (ipv4 ? 3 : 2) : 1;
      if (rank > best_rank) {
        best_rank = rank;
        best = std::atoi(index.c_str());
      }
    }
    if (best < 0)
      return UnavailableError("--baseline perftest: " + setup.device + " has no usable GID");
    setup.gid_index = best;
  }
  setup.gid = ReadLine(port_dir + "/gids/" + std::to_string(setup.gid_index));
  return setup;
}

StatusOr<Row> RunPerftestSize(const PerftestSetup& setup, size_t bytes) {
  Row row;
  row.bytes = bytes;
  row.impl = "perftest";
  M2N_ASSIGN_OR_RETURN(std::string lat, RunPair(setup, "ib_write_lat", bytes, setup.iters, {}));
  // #bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
  const std::vector<double> l = ResultLine(lat, bytes);
  if (l.size() < 8)
    return DataLossError("perftest baseline: no result line in ib_write_lat's output: " +
                         Tail(lat));
  row.latency.max_us = l[3];
  row.latency.p50_us = l[4];
  row.latency.mean_us = l[5];
  row.latency.p99_us = l[7];
  row.latency.samples = static_cast<int>(l[1]);
  // Bandwidth: as many iterations as -n, but no more than 64 MB a size (Soft-RoCE moves ~50 MB/s).
  const int bw_iters = static_cast<int>(std::clamp<size_t>(
      (size_t{64} << 20) / std::max<size_t>(bytes, 1), 5, static_cast<size_t>(setup.iters)));
  M2N_ASSIGN_OR_RETURN(std::string bw,
                       RunPair(setup, "ib_write_bw", bytes, bw_iters, {"--report_gbits"}));
  // #bytes #iterations BW_peak[Gb/sec] BW_average[Gb/sec] MsgRate[Mpps]
  const std::vector<double> b = ResultLine(bw, bytes);
  if (b.size() < 5)
    return DataLossError("perftest baseline: no result line in ib_write_bw's output: " + Tail(bw));
  row.gbps = b[3] / 8.0;
  row.mmsg_per_s = b[4];
  return row;
}

StatusOr<std::vector<Row>> ReportPerftestBaseline(const PerfConfig& config,
                                                  const std::vector<Row>& m2n_rows,
                                                  std::FILE* out) {
  if (config.use_cuda)
    return InvalidArgumentError("--baseline perftest measures host memory: drop --use_cuda");
  M2N_ASSIGN_OR_RETURN(PerftestSetup setup, ResolvePerftestSetup(config));
  std::fprintf(
      out,
      "# baseline perftest: ib_write_lat / ib_write_bw, RC, 1 QP, %s port %d GID[%d] %s, %d "
      "iterations "
      "(bw: <= 64 MB a size), client to %s\n"
      "#   perftest p50 = t_typical (median round trip / 2), p99 = 99%% percentile, max = t_max; "
      "GB/s = BW average; one pair, whatever M x N\n",
      setup.device.c_str(), setup.port, setup.gid_index, setup.gid.c_str(), setup.iters,
      setup.address.c_str());
  PrintTableHead(out, /*with_impl=*/true);
  std::vector<Row> rows;
  for (const Row& m2n : m2n_rows) {
    if (m2n.impl != "m2n") continue;
    auto baseline = RunPerftestSize(setup, m2n.bytes);
    if (!baseline.ok()) return baseline.status();
    PrintRow(out, m2n, /*with_impl=*/true);
    PrintRow(out, *baseline, /*with_impl=*/true);
    PrintRatioRow(out, m2n, *baseline);
    std::fflush(out);
    rows.push_back(*baseline);
  }
  return rows;
}

}  // namespace m2n::perf
