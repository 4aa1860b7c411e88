// What every fuzz target shares: the check that turns a broken invariant into a crash libFuzzer
// reports (and the seed replay test fails on), with the reason on stderr.
#pragma once

#include <cstdio>
#include <cstdlib>

#define M2N_FUZZ_CHECK(cond)                                                              \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
