// m2n_congestion: shows (--dry-run, the default) or applies (--apply) a congestion profile through
// a NIC's sysfs and debugfs files. docs/congestion.md explains the profile and the knobs.
#include <cstdio>
#include <cstring>
#include <string>

#include "congestion/profile.h"

namespace {

void Usage(std::FILE* out) {
  std::fprintf(out,
               "usage: m2n_congestion [--dry-run | --apply] [--root DIR] PROFILE\n"
               "  --dry-run   show each file, its current value and the value wanted (default)\n"
               "  --apply     write the values that differ (needs root for debugfs)\n"
               "  --root DIR  take every sysfs / debugfs path relative to DIR (for tests)\n"
               "PROFILE: key = value lines; see docs/congestion.md and tools/profiles/.\n");
}

}  // namespace

int main(int argc, char** argv) {
  bool apply = false;
  std::string root = "/";
  std::string profile_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--apply") {
      apply = true;
    } else if (arg == "--dry-run") {
      apply = false;
    } else if (arg == "--root" && i + 1 < argc) {
      root = argv[++i];
    } else if (arg == "-h" || arg == "--help") {
      Usage(stdout);
      return 0;
    } else if (!arg.starts_with("-") && profile_path.empty()) {
      profile_path = arg;
    } else {
      std::fprintf(stderr, "m2n_congestion: unexpected argument '%s'\n", arg.c_str());
      Usage(stderr);
      return 2;
    }
  }
  if (profile_path.empty()) {
    Usage(stderr);
    return 2;
  }
  auto profile = m2n::congestion::LoadProfile(profile_path);
  if (!profile.ok()) {
    std::fprintf(stderr, "m2n_congestion: %s\n", profile.status().ToString().c_str());
    return 1;
  }
  auto plan = m2n::congestion::Plan(*profile, root);
  if (!plan.ok()) {
    std::fprintf(stderr, "m2n_congestion: %s\n", plan.status().ToString().c_str());
    return 1;
  }
  if (apply) {
    if (m2n::Status s = m2n::congestion::Apply(*plan); !s.ok()) {
      std::fprintf(stderr, "m2n_congestion: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  std::fputs(m2n::congestion::FormatPlan(*plan, apply).c_str(), stdout);
  return 0;
}
