// A congestion profile: the NIC-side knobs of RoCE congestion control (ECN enable per priority,
// DCQCN parameters), read from a `key = value` file and written through the NIC's sysfs and
// debugfs files. docs/congestion.md says what each knob does and what to set for M x N traffic.
//
// Keys:
//   interface = eth2              the netdev of the RDMA port (for the ECN files)
//   pci = 0000:04:00.0            PCI address for debugfs (default: /sys/class/net/<if>/device)
//   ecn.np.priorities = 3[,4...]  priorities 0..7 on which the port acts as notification point
//   ecn.rp.priorities = 3[,4...]  priorities 0..7 on which the port acts as reaction point
//   dcqcn.<param> = <uint>        one file of /sys/kernel/debug/mlx5/<pci>/cc_params/
// Priorities not listed are left as they are. Every path is taken relative to a root directory
// ("/" on a real host), so that tests run against a directory tree.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "m2n/status.h"

namespace m2n::congestion {

struct Setting {
  std::string key;  // as written in the profile, e.g. "dcqcn.rp_ai_rate"
  std::string value;  // normalized, e.g. "5"
  int line = 0;  // 1-based line in the profile
};

struct Profile {
  std::string source;  // file name, for messages
  std::string interface;
  std::string pci;
  std::vector<int> np_priorities;
  std::vector<int> rp_priorities;
  std::vector<Setting> dcqcn;  // key without the "dcqcn." prefix
};

// One file the profile writes: its path (root included), what it holds now and what it should.
struct Change {
  std::string key;
  std::string path;
  std::string current;  // trimmed contents, or "?" + the reason it could not be read
  std::string wanted;
  bool unchanged() const { return current == wanted; }
};

// The DCQCN parameters of mlx5's cc_params directory (drivers/infiniband/hw/mlx5/cong.c).
const std::vector<std::string_view>& KnownDcqcnParameters();

// INVALID_ARGUMENT naming the line for an unknown key, a bad value or a repeated key.
StatusOr<Profile> ParseProfile(std::string_view text, std::string source);
StatusOr<Profile> LoadProfile(const std::string& path);

// Resolves every file under `root` and reads its current value. NOT_FOUND naming the path when a
// file the profile needs does not exist on this NIC; nothing is written.
StatusOr<std::vector<Change>> Plan(const Profile& profile, const std::string& root);

// Writes every change that is not already in place, in order. On the first failure returns an
// error naming the file and the errno text (FAILED_PRECONDITION for permission denied) and saying
// how many files were already written.
Status Apply(const std::vector<Change>& changes);

// One line per change: "path: current -> wanted" (or "= wanted (unchanged)").
std::string FormatPlan(const std::vector<Change>& changes, bool applied);

}  // namespace m2n::congestion
