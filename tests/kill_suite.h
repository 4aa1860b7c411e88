// Dead peers, in real processes over one transport: SIGKILL a random rank of a running 3 x 3 job,
// many times; every survivor must report the dead rank by number within 2x its call timeout, and
// none may hang or crash. Defined once (kill_suite.cc), instantiated per transport
// (kill_test.cc: ucx shared memory and TCP; kill_verbs_test.cc: verbs, run in the Soft-RoCE VM).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "transport_setup.h"

namespace m2n::testing {

class KillTest : public ::testing::TestWithParam<TransportSetup> {
 protected:
  void SetUp() override;
};

std::string KillSetupName(const ::testing::TestParamInfo<TransportSetup>& info);

}  // namespace m2n::testing
