#include "transport_setup.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "transports/transport.h"

namespace m2n::testing {

void ApplySetup(const TransportSetup& setup) {
  setenv("M2N_TRANSPORT", setup.transport.c_str(), 1);
  for (const std::string& name : setup.unset) unsetenv(name.c_str());
  for (const auto& [name, value] : setup.env) setenv(name.c_str(), value.c_str(), 1);
}

namespace {

std::string ProbeHere(const TransportSetup& setup) {
  ApplySetup(setup);
  for (const transport::TransportInfo& info : transport::RegisteredTransports()) {
    if (info.name != setup.transport) continue;
    Status usable = info.probe(MemoryKind::kHost);  // the suites use host slots
    if (usable.ok()) return "";
    return "the " + setup.transport + " transport cannot run here: " + usable.message();
  }
  return "the " + setup.transport +
         " transport is not compiled into this build (see the configure summary)";
}

}  // namespace

std::string SkipReason(const TransportSetup& setup) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string reason = ProbeHere(setup);
    ssize_t ignored = write(fds[1], reason.data(), reason.size());
    (void)ignored;
    _exit(0);
  }
  close(fds[1]);
  std::string reason;
  char chunk[512];
  ssize_t n;
  while ((n = read(fds[0], chunk, sizeof chunk)) > 0) reason.append(chunk, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return "the probe of " + setup.transport + " crashed";
  return reason;
}

}  // namespace m2n::testing
