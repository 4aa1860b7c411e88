#include "profile.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

namespace m2n::congestion {
namespace {

std::string_view Trim(std::string_view s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool ParseUint(std::string_view s, unsigned long long max, unsigned long long* out) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size() && *out <= max;
}

std::string ErrnoText(int err) {
  return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")";
}

// "3,4" or "3 4" -> {3, 4}; priorities are 802.1p values 0..7.
StatusOr<std::vector<int>> ParsePriorities(std::string_view value, const std::string& where) {
  std::vector<int> out;
  std::string text(value);
  std::replace(text.begin(), text.end(), ',', ' ');
  std::istringstream in(text);
  std::string item;
  while (in >> item) {
    unsigned long long p = 0;
    if (!ParseUint(item, 7, &p)) {
      return InvalidArgumentError(where + ": priority '" + item + "' is not in 0..7");
    }
    if (std::find(out.begin(), out.end(), static_cast<int>(p)) == out.end())
      out.push_back(static_cast<int>(p));
  }
  if (out.empty()) return InvalidArgumentError(where + ": no priority given (a list of 0..7)");
  return out;
}

// The current contents of `path`, trimmed, or "?" and the reason.
std::string ReadCurrent(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "?" + ErrnoText(errno);
  char buf[256];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  const int err = errno;
  ::close(fd);
  if (n < 0) return "?" + ErrnoText(err);
  return std::string(Trim(std::string_view(buf, static_cast<size_t>(n))));
}

Status NeedFile(const std::string& path, const std::string& key, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISREG(st.st_mode)) return OkStatus();
    return FailedPreconditionError(key + ": " + path + " is not a file");
  }
  const int err = errno;
  if (err == ENOENT || err == ENOTDIR) {
    return NotFoundError(key + ": " + path + " does not exist on this NIC (" + what + ")");
  }
  return FailedPreconditionError(key + ": cannot stat " + path + ": " + ErrnoText(err));
}

// The PCI address of a netdev: the last component of the /sys/class/net/<if>/device link.
StatusOr<std::string> PciOf(const std::string& root, const std::string& interface) {
  const std::string link = root + "/sys/class/net/" + interface + "/device";
  char target[4096];
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n < 0) {
    return NotFoundError("dcqcn: cannot find the PCI address of interface " + interface +
                         ": readlink " + link + ": " + ErrnoText(errno) +
                         "; set pci = <domain:bus:dev.fn> in the profile");
  }
  std::string_view t(target, static_cast<size_t>(n));
  const size_t slash = t.find_last_of('/');
  return std::string(slash == std::string_view::npos ? t : t.substr(slash + 1));
}

}  // namespace

const std::vector<std::string_view>& KnownDcqcnParameters() {
  static const std::vector<std::string_view> kNames = {"rp_clamp_tgt_rate",
                                                       "rp_clamp_tgt_rate_ati",
                                                       "rp_time_reset",
                                                       "rp_byte_reset",
                                                       "rp_threshold",
                                                       "rp_ai_rate",
                                                       "rp_max_rate",
                                                       "rp_hai_rate",
                                                       "rp_min_dec_fac",
                                                       "rp_min_rate",
                                                       "rp_rate_to_set_on_first_cnp",
                                                       "rp_dce_tcp_g",
                                                       "rp_dce_tcp_rtt",
                                                       "rp_rate_reduce_monitor_period",
                                                       "rp_initial_alpha_value",
                                                       "rp_gd",
                                                       "np_min_time_between_cnps",
                                                       "np_cnp_dscp",
                                                       "np_cnp_prio_mode",
                                                       "np_cnp_prio"};
  return kNames;
}

StatusOr<Profile> ParseProfile(std::string_view text, std::string source) {
  Profile p;
  p.source = std::move(source);
  std::vector<std::string> seen;
  int line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t eol = std::min(text.find('\n', pos), text.size());
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (const size_t hash = line.find('#'); hash != std::string_view::npos)
      line = line.substr(0, hash);
    line = Trim(line);
    if (line.empty()) continue;
    const std::string where = p.source + ":" + std::to_string(line_no);
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return InvalidArgumentError(where + ": expected 'key = value', got '" + std::string(line) +
                                  "'");
    }
    const std::string key(Trim(line.substr(0, eq)));
    const std::string value(Trim(line.substr(eq + 1)));
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      return InvalidArgumentError(where + ": " + key + " is set twice");
    }
    seen.push_back(key);
    if (value.empty()) return InvalidArgumentError(where + ": " + key + " has no value");
    if (key == "interface") {
      if (value.find('/') != std::string::npos)
        return InvalidArgumentError(where + ": bad interface name '" + value + "'");
      p.interface = value;
    } else if (key == "pci") {
      if (value.find('/') != std::string::npos)
        return InvalidArgumentError(where + ": bad PCI address '" + value + "'");
      p.pci = value;
    } else if (key == "ecn.np.priorities") {
      M2N_ASSIGN_OR_RETURN(p.np_priorities, ParsePriorities(value, where + ": " + key));
    } else if (key == "ecn.rp.priorities") {
      M2N_ASSIGN_OR_RETURN(p.rp_priorities, ParsePriorities(value, where + ": " + key));
    } else if (key.starts_with("dcqcn.")) {
      const std::string param = key.substr(6);
      const auto& known = KnownDcqcnParameters();
      if (std::find(known.begin(), known.end(), param) == known.end()) {
        return InvalidArgumentError(where + ": unknown DCQCN parameter '" + param +
                                    "' (docs/congestion.md lists the mlx5 cc_params names)");
      }
      unsigned long long v = 0;
      if (!ParseUint(value, 0xffffffffULL, &v)) {
        return InvalidArgumentError(where + ": " + key + " = '" + value +
                                    "' is not an unsigned 32-bit integer");
      }
      p.dcqcn.push_back({param, std::to_string(v), line_no});
    } else {
      return InvalidArgumentError(
          where + ": unknown key '" + key +
          "' (known: interface, pci, ecn.np.priorities, ecn.rp.priorities, dcqcn.<param>)");
    }
  }
  if ((!p.np_priorities.empty() || !p.rp_priorities.empty()) && p.interface.empty()) {
    return InvalidArgumentError(p.source + ": ecn.* needs 'interface = <netdev>'");
  }
  if (!p.dcqcn.empty() && p.pci.empty() && p.interface.empty()) {
    return InvalidArgumentError(p.source +
                                ": dcqcn.* needs 'interface = <netdev>' or 'pci = <address>'");
  }
  return p;
}

StatusOr<Profile> LoadProfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open profile " + path + ": " + ErrnoText(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseProfile(text.str(), path);
}

StatusOr<std::vector<Change>> Plan(const Profile& profile, const std::string& root_in) {
  std::string root = root_in;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (root == "/") root.clear();
  std::vector<Change> changes;
  const auto add = [&](std::string key, std::string path, std::string wanted,
                       const std::string& what) -> Status {
    M2N_RETURN_IF_ERROR(NeedFile(path, key, what));
    changes.push_back({std::move(key), path, ReadCurrent(path), std::move(wanted)});
    return OkStatus();
  };
  const std::string ecn = root + "/sys/class/net/" + profile.interface + "/ecn/";
  for (int prio : profile.np_priorities) {
    M2N_RETURN_IF_ERROR(add("ecn.np.priorities", ecn + "roce_np/enable/" + std::to_string(prio),
                            "1", "no RoCE ECN notification-point control for this interface"));
  }
  for (int prio : profile.rp_priorities) {
    M2N_RETURN_IF_ERROR(add("ecn.rp.priorities", ecn + "roce_rp/enable/" + std::to_string(prio),
                            "1", "no RoCE ECN reaction-point control for this interface"));
  }
  if (!profile.dcqcn.empty()) {
    std::string pci = profile.pci;
    if (pci.empty()) {
      M2N_ASSIGN_OR_RETURN(pci, PciOf(root, profile.interface));
    }
    const std::string dir = root + "/sys/kernel/debug/mlx5/" + pci + "/cc_params/";
    for (const Setting& s : profile.dcqcn) {
      M2N_RETURN_IF_ERROR(add("dcqcn." + s.key, dir + s.key, s.value,
                              "not an mlx5 device, debugfs not mounted, or not run as root"));
    }
  }
  return changes;
}

Status Apply(const std::vector<Change>& changes) {
  size_t written = 0;
  for (const Change& c : changes) {
    if (c.unchanged()) continue;
    const std::string done = " (" + std::to_string(written) + " file(s) written before it)";
    const int fd = ::open(c.path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      const std::string msg =
          c.key + ": cannot open " + c.path + " for writing: " + ErrnoText(err) + done;
      return err == EACCES || err == EPERM ? FailedPreconditionError(msg) : UnavailableError(msg);
    }
    const std::string data = c.wanted + "\n";
    const ssize_t n = ::write(fd, data.data(), data.size());
    const int err = errno;
    ::close(fd);
    if (n != static_cast<ssize_t>(data.size())) {
      const std::string why = n < 0 ? ErrnoText(err) : "short write";
      // The kernel rejects a value out of a parameter's range with EINVAL at write time.
      return (n < 0 && err == EINVAL ? InvalidArgumentError : UnavailableError)(
          c.key + ": writing '" + c.wanted + "' to " + c.path + ": " + why + done);
    }
    ++written;
  }
  return OkStatus();
}

std::string FormatPlan(const std::vector<Change>& changes, bool applied) {
  std::string out;
  size_t todo = 0;
  for (const Change& c : changes) {
    out += c.path + ": ";
    if (c.unchanged()) {
      out += "= " + c.wanted + " (unchanged)\n";
    } else {
      ++todo;
      out += c.current + " -> " + c.wanted + "\n";
    }
  }
  out += std::to_string(changes.size()) + " file(s), " + std::to_string(todo) +
         (applied ? " written" : " to change (dry run: nothing written; --apply writes)") + "\n";
  return out;
}

}  // namespace m2n::congestion
