#include "cli.h"

#include <charconv>
#include <cctype>
#include <limits>
#include <optional>

#include "m2n/group.h"

namespace m2n::perf {
namespace {

// The largest message m2n_perf accepts; every rank holds a few buffers of this size per peer.
constexpr size_t kMaxMessageBytes = size_t{1} << 32;
constexpr int kMaxRanks = 4096;

Status BadValue(std::string_view flag, std::string_view value, std::string_view expected) {
  return InvalidArgumentError("bad value '" + std::string(value) + "' for " + std::string(flag) +
                              ": expected " + std::string(expected));
}

template <typename T>
std::optional<T> ParseInteger(std::string_view text) {
  T value{};
  if (text.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

StatusOr<int64_t> ParseBounded(std::string_view flag, std::string_view text, int64_t lo,
                               int64_t hi) {
  auto value = ParseInteger<int64_t>(text);
  if (!value || *value < lo || *value > hi) {
    return BadValue(flag, text,
                    "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return *value;
}

// One flag of the table: its spellings and whether it takes a value.
struct Flag {
  char short_name;  // 0: none
  std::string_view long_name;
  bool takes_value;
};

constexpr Flag kFlags[] = {
    {'b', "minbytes", true},  {'e', "maxbytes", true},     {'f', "stepfactor", true},
    {'n', "iters", true},     {'w', "warmup_iters", true}, {'M', "senders", true},
    {'N', "receivers", true}, {0, "transport", true},      {'c', "check", false},
    {0, "no-check", false},   {'d', "slot_depth", true},   {0, "json", true},
    {0, "baseline", true},    {0, "latency_mode", true},   {0, "timeout_ms", true},
    {0, "run_timeout", true}, {'h', "help", false},        {0, "inject-corruption", false},
    {0, "spin_us", true},     {0, "use_cuda", false},      {0, "soak", true},
};

const Flag* FindLong(std::string_view name) {
  for (const Flag& flag : kFlags) {
    if (flag.long_name == name) return &flag;
  }
  return nullptr;
}

const Flag* FindShort(char name) {
  for (const Flag& flag : kFlags) {
    if (flag.short_name != 0 && flag.short_name == name) return &flag;
  }
  return nullptr;
}

Status Apply(const Flag& flag, std::string_view value, PerfConfig& config) {
  const std::string name = "--" + std::string(flag.long_name);
  const std::string_view n = flag.long_name;
  if (n == "minbytes" || n == "maxbytes") {
    auto bytes = ParseSize(value);
    if (!bytes.ok()) return BadValue(name, value, bytes.status().message());
    (n == "minbytes" ? config.min_bytes : config.max_bytes) = *bytes;
  } else if (n == "stepfactor") {
    M2N_ASSIGN_OR_RETURN(int64_t f, ParseBounded(name, value, 2, 1024));
    config.step_factor = static_cast<uint64_t>(f);
  } else if (n == "iters") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 1, 10'000'000));
    config.iters = static_cast<int>(v);
  } else if (n == "soak") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 1, 1'000'000'000'000));
    config.soak_messages = static_cast<uint64_t>(v);
  } else if (n == "warmup_iters") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 0, 10'000'000));
    config.warmup_iters = static_cast<int>(v);
  } else if (n == "senders") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 1, kMaxRanks));
    config.senders = static_cast<int>(v);
    config.senders_set = true;
  } else if (n == "receivers") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 1, kMaxRanks));
    config.receivers = static_cast<int>(v);
    config.receivers_set = true;
  } else if (n == "transport") {
    // Checked here, before any rank starts: a name this build lacks is bad usage, not a run that
    // fails on every rank at once.
    std::string expected = "'auto'";
    bool known = value == "auto";
    for (const std::string& t : AvailableTransports()) {
      expected += ", '" + t + "'";
      known = known || value == t;
    }
    if (!known) return BadValue(name, value, "one of this build's transports: " + expected);
    config.transport = std::string(value);
  } else if (n == "check") {
    config.check = true;
  } else if (n == "no-check") {
    config.check = false;
  } else if (n == "slot_depth") {
    M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 1, 4096));
    config.slot_depth = static_cast<int>(v);
  } else if (n == "json") {
    if (value.empty()) return BadValue(name, value, "a file name");
    config.json_path = std::string(value);
  } else if (n == "baseline") {
    if (value == "mpi") {
      config.baseline = Baseline::kMpi;
    } else if (value == "nccl") {
      config.baseline = Baseline::kNccl;
    } else if (value == "perftest") {
      config.baseline = Baseline::kPerftest;
    } else {
      return BadValue(name, value, "'mpi', 'perftest', or 'nccl' (with --use_cuda)");
    }
  } else if (n == "use_cuda") {
    config.use_cuda = true;
  } else if (n == "latency_mode") {
    if (value == "auto") {
      config.latency_mode = LatencyMode::kAuto;
    } else if (value == "oneway") {
      config.latency_mode = LatencyMode::kOneWay;
    } else if (value == "roundtrip") {
      config.latency_mode = LatencyMode::kRoundTrip;
    } else {
      return BadValue(name, value, "auto, oneway or roundtrip");
    }
  } else if (n == "spin_us") {
    if (value == "auto") {
      config.spin_us = -1;
    } else {
      M2N_ASSIGN_OR_RETURN(int64_t v, ParseBounded(name, value, 0, 10'000'000));
      config.spin_us = static_cast<int>(v);
    }
  } else if (n == "timeout_ms") {
    M2N_ASSIGN_OR_RETURN(config.timeout_ms, ParseBounded(name, value, 1, 86'400'000));
  } else if (n == "run_timeout") {
    M2N_ASSIGN_OR_RETURN(config.run_timeout_s, ParseBounded(name, value, 1, 86'400 * 7));
  } else if (n == "help") {
    config.help = true;
  } else if (n == "inject-corruption") {
    config.inject_corruption = true;
  }
  return OkStatus();
}

Status Validate(const PerfConfig& config) {
  if (config.min_bytes > config.max_bytes) {
    return InvalidArgumentError("--minbytes (" + FormatSize(config.min_bytes) +
                                ") is larger than --maxbytes (" + FormatSize(config.max_bytes) +
                                ")");
  }
  if (config.senders + config.receivers > kMaxRanks) {
    return InvalidArgumentError("--senders + --receivers must be at most " +
                                std::to_string(kMaxRanks));
  }
  // Each rank keeps one timestamp per rank per iteration in the host segment.
  const uint64_t stamps = static_cast<uint64_t>(config.iters + config.warmup_iters) *
                          static_cast<uint64_t>(config.senders + config.receivers) * 8;
  if (stamps > (uint64_t{1} << 30)) {
    return InvalidArgumentError(
        "(--iters + --warmup_iters) x ranks is too large: the timestamp table "
        "would exceed 1 GiB; lower --iters");
  }
  return OkStatus();
}

}  // namespace

std::string_view LatencyModeName(LatencyMode mode) {
  switch (mode) {
    case LatencyMode::kAuto:
      return "auto";
    case LatencyMode::kOneWay:
      return "oneway";
    case LatencyMode::kRoundTrip:
      return "roundtrip";
  }
  return "?";
}

StatusOr<size_t> ParseSize(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0) return InvalidArgumentError("a size such as 8, 64K, 4M or 1G");
  auto number = ParseInteger<uint64_t>(text.substr(0, digits));
  if (!number) return InvalidArgumentError("a size such as 8, 64K, 4M or 1G");
  std::string_view suffix = text.substr(digits);
  int shift = 0;
  if (suffix.size() == 1) {
    switch (std::tolower(static_cast<unsigned char>(suffix[0]))) {
      case 'k':
        shift = 10;
        break;
      case 'm':
        shift = 20;
        break;
      case 'g':
        shift = 30;
        break;
      default:
        return InvalidArgumentError("a size with suffix K, M or G (powers of 2)");
    }
  } else if (!suffix.empty()) {
    return InvalidArgumentError("a size with suffix K, M or G (powers of 2)");
  }
  if (*number > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return InvalidArgumentError("a size of at most " + FormatSize(kMaxMessageBytes));
  }
  const uint64_t bytes = *number << shift;
  if (bytes == 0) return InvalidArgumentError("a size of at least 1 byte");
  if (bytes > kMaxMessageBytes) {
    return InvalidArgumentError("a size of at most " + FormatSize(kMaxMessageBytes));
  }
  return static_cast<size_t>(bytes);
}

StatusOr<PerfConfig> ParseCommandLine(std::span<const std::string> args) {
  PerfConfig config;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const Flag* flag = nullptr;
    std::optional<std::string> value;
    if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
      std::string_view body = std::string_view(arg).substr(2);
      const size_t eq = body.find('=');
      flag = FindLong(body.substr(0, eq));
      if (flag == nullptr) return InvalidArgumentError("unknown flag '" + arg + "'");
      if (eq != std::string_view::npos) {
        if (!flag->takes_value) {
          return InvalidArgumentError("flag --" + std::string(flag->long_name) + " takes no value");
        }
        value = std::string(body.substr(eq + 1));
      }
    } else if (arg.size() >= 2 && arg[0] == '-' && arg[1] != '-') {
      flag = FindShort(arg[1]);
      if (flag == nullptr) return InvalidArgumentError("unknown flag '" + arg + "'");
      if (arg.size() > 2) {
        if (!flag->takes_value) return InvalidArgumentError("unknown flag '" + arg + "'");
        value = arg.substr(2);  // -b8, as getopt allows
      }
    } else {
      return InvalidArgumentError("unexpected argument '" + arg + "' (m2n_perf takes only flags)");
    }
    if (flag->takes_value && !value) {
      if (i + 1 >= args.size()) {
        return InvalidArgumentError("flag --" + std::string(flag->long_name) + " needs a value");
      }
      value = args[++i];
    }
    M2N_RETURN_IF_ERROR(Apply(*flag, value.value_or(""), config));
  }
  if (config.help) return config;
  M2N_RETURN_IF_ERROR(Validate(config));
  return config;
}

StatusOr<PerfConfig> ParseCommandLine(int argc, const char* const* argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return ParseCommandLine(args);
}

std::vector<size_t> SweepSizes(const PerfConfig& config) {
  std::vector<size_t> sizes;
  for (uint64_t size = config.min_bytes; size <= config.max_bytes;) {
    sizes.push_back(static_cast<size_t>(size));
    if (size > config.max_bytes / config.step_factor) break;  // the next step would pass max
    size *= config.step_factor;
  }
  return sizes;
}

std::string FormatSize(size_t bytes) {
  static constexpr struct {
    int shift;
    char suffix;
  } kUnits[] = {{30, 'G'}, {20, 'M'}, {10, 'K'}};
  for (const auto& unit : kUnits) {
    const size_t scale = size_t{1} << unit.shift;
    if (bytes >= scale && bytes % scale == 0) return std::to_string(bytes / scale) + unit.suffix;
  }
  return std::to_string(bytes);
}

std::string Usage(std::string_view program) {
  const PerfConfig d;
  std::string u;
  u += "Usage: " + std::string(program) + " [flags]\n";
  u += "M senders x N receivers: per iteration every sender sends one message to every receiver.\n";
  u += "Without a launcher it starts M+N local processes itself; under mpirun, torchrun or srun "
       "it\n";
  u +=
      "joins that job (M+N must equal the job's size; without -M/-N the job is split in half).\n\n";
  u += "Sizes (SIZE accepts K, M, G suffixes: powers of 2):\n";
  u += "  -b, --minbytes SIZE      smallest message (default " + FormatSize(d.min_bytes) + ")\n";
  u += "  -e, --maxbytes SIZE      largest message, also the slot size (default " +
       FormatSize(d.max_bytes) + ")\n";
  u += "  -f, --stepfactor N       multiply the size by N each step (default " +
       std::to_string(d.step_factor) + ")\n";
  u += "Iterations:\n";
  u += "  -n, --iters N            measured iterations per size, and messages per pair in the\n";
  u += "                           bandwidth phase (default " + std::to_string(d.iters) + ")\n";
  u += "  -w, --warmup_iters N     unmeasured iterations per size (default " +
       std::to_string(d.warmup_iters) + ")\n";
  u += "      --soak N             repeat the sweep until N messages (sender to receiver, all "
       "pairs)\n";
  u += "                           have gone; the table shows the first sweep; prints progress, "
       "the\n";
  u += "                           total #wrong and each rank's resident memory (default: one "
       "sweep)\n";
  u += "Shape and library:\n";
  u += "  -M, --senders N          senders, ranks [0, M) (default " + std::to_string(d.senders) +
       ")\n";
  u += "  -N, --receivers N        receivers, ranks [M, M+N) (default " +
       std::to_string(d.receivers) + ")\n";
  u += "      --transport NAME     m2n transport, or 'auto' for the best one usable (default " +
       d.transport + ")\n";
  u += "  -d, --slot_depth N       receive slots per peer, i.e. credits (default " +
       std::to_string(d.slot_depth) + ")\n";
  u += "      --spin_us N|auto     how long a waiting rank spins before yielding the core, for "
       "m2n\n";
  u += "                           and MPI alike; auto: 0 when this host has more ranks than "
       "usable\n";
  u += "                           cores, else m2n's default (default auto; M2N_SPIN_US "
       "overrides)\n";
  u += "Checking and output:\n";
  u += "  -c, --check              check every received byte (default: on)\n";
  u += "      --no-check           do not check received data\n";
  u += "      --json FILE          also write the results as JSON to FILE\n";
  u += "      --baseline mpi       also measure MPI Isend/Irecv in the same run (re-executes "
       "under\n";
  u += "                           mpirun when not already under it)\n";
  u += "      --baseline nccl      with --use_cuda: also measure NCCL grouped ncclSend/ncclRecv\n";
  u += "      --baseline perftest  after the sweep, ib_write_lat / ib_write_bw on the same RDMA\n";
  u += "                           device, per size, with m2n/perftest ratios "
       "(perftest_baseline.h)\n";
  u +=
      "      --use_cuda           device buffers and m2n's stream-ordered calls, one process per\n";
  u += "                           GPU (rank r on GPU r mod the GPUs), every rank on one host\n";
  u += "      --latency_mode MODE  auto: oneway when all ranks share a host, else roundtrip;\n";
  u += "                           oneway: last receiver done - first sender start (one host);\n";
  u += "                           roundtrip: each sender's round trip / 2 (default auto)\n";
  u += "Bounds:\n";
  u += "      --timeout_ms MS      bound on every blocking call of a rank (default " +
       std::to_string(d.timeout_ms) + ")\n";
  u += "      --run_timeout S      bound on a self-started job as a whole (default " +
       std::to_string(d.run_timeout_s) + ")\n";
  u += "  -h, --help               this text\n\n";
  u += "Exit status: 0 success, 1 wrong bytes received, 2 bad usage, 3 run-time failure.\n";
  u += "Environment: M2N_* variables override options (see docs/configuration.md); UCX_TLS "
       "selects\n";
  u += "UCX transports, e.g. UCX_TLS=posix,sysv,self (shared memory) or UCX_TLS=tcp,self.\n";
  return u;
}

}  // namespace m2n::perf
