// How a test suite that runs over every transport (group_suite, bad_input_suite) is pointed at one:
// a name for the test names, the transport, and the variables each rank sets before creating its
// Group. A suite's instantiation file (group_ucx_test.cc, group_verbs_test.cc, ...) lists its
// setups; the suite skips, with the reason, a setup whose transport cannot run here.
#pragma once

#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace m2n::testing {

struct TransportSetup {
  std::string name;  // in test names: "shm", "tcp", "rc"
  std::string transport;  // M2N_TRANSPORT: "ucx", "verbs"
  std::vector<std::pair<std::string, std::string>> env = {};
  // Per-pair message count of the credit-pressure test (slower transports run fewer).
  int credit_messages = 10000;
  // Variables removed before `env` is set: the library's own choice (UCX_TLS unset).
  std::vector<std::string> unset = {};
};

inline void PrintTo(const TransportSetup& setup, std::ostream* os) {
  *os << setup.transport << "_" << setup.name;
}

// Sets M2N_TRANSPORT and the setup's variables, less its `unset` ones, in this process (a rank,
// before Group::Create).
void ApplySetup(const TransportSetup& setup);

// Empty when the setup's transport is compiled in and its probe passes here; else why not
// ("the verbs transport cannot run here: verbs: no RDMA device here ..."). Runs the probe in a
// child process, so that the test process itself opens no device before it forks its ranks.
std::string SkipReason(const TransportSetup& setup);

}  // namespace m2n::testing
