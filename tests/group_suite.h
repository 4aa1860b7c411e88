// The M x N suite over one transport, in real processes on loopback: shapes, both directions,
// 1 B to 4 MB, credit pressure. The tests are defined once (group_suite.cc); each transport's file
// instantiates them with its setups:
//
//   INSTANTIATE_TEST_SUITE_P(ucx, GroupTest, ::testing::Values(GroupCase{shm, 1, 1}, ...),
//   GroupCaseName);
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "transport_setup.h"

namespace m2n::testing {

struct GroupCase {
  TransportSetup setup;
  int senders = 1;
  int receivers = 1;
};

inline void PrintTo(const GroupCase& c, std::ostream* os) {
  *os << c.setup.transport << "_" << c.setup.name << "_" << c.senders << "x" << c.receivers;
}

// "shm_2x2": the setup's name and the shape.
std::string GroupCaseName(const ::testing::TestParamInfo<GroupCase>& info);

// Every sender sends to every receiver, every receiver answers, all sizes, three rounds.
class GroupTest : public ::testing::TestWithParam<GroupCase> {
 protected:
  void SetUp() override;
};

// Many messages per pair through 2 slots: the sender always waits for credits, the receiver
// releases out of order.
class GroupCreditTest : public ::testing::TestWithParam<GroupCase> {
 protected:
  void SetUp() override;
};

}  // namespace m2n::testing
