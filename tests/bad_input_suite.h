// Bad input over one transport (bad_input_suite.cc); each transport's file instantiates it:
//
//   INSTANTIATE_TEST_SUITE_P(ucx, BadInputTest, ::testing::Values(shm), SetupName);
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "transport_setup.h"

namespace m2n::testing {

std::string SetupName(const ::testing::TestParamInfo<TransportSetup>& info);

class BadInputTest : public ::testing::TestWithParam<TransportSetup> {
 protected:
  void SetUp() override;
};

}  // namespace m2n::testing
