// The CPU expert FFN (SwiGLU), the one copy shared by the CPU backend's expert side
// (compute/cpu/cpu_compute.cc) and the offloading expert side (offload/offloaded_experts.cc), so
// that offloading changes where an expert's weights live, never its outputs.
#pragma once

#include <span>
#include <vector>

#include "compute/compute.h"
#include "compute/cpu/thread_pool.h"
#include "model/weights.h"

namespace moe::cpu {

// Intermediate buffers of ExpertFfn, kept by the caller so that their memory is reused.
struct FfnScratch {
  std::vector<float> h1, h3;
  std::vector<float> x, y;  // ExpertFfnRouted's gathered rows and their outputs
};

// y[r] = w2 (silu(w1 x[r]) * (w3 x[r])) for the n contiguous rows of x ([n, hidden]), unweighted:
// the caller applies the gate weight. y is [n, hidden] and must not overlap x.
void ExpertFfn(const ExpertWeights& w, const float* x, int n, int hidden, int intermediate,
               float* y, FfnScratch& scratch, ThreadPool& pool);

// One expert over rows routed to it from several inputs (the single process's and the collocated
// step's Forward): gathers the rows, runs ExpertFfn, and adds weight * y into each row's output.
struct RoutedRow {
  int input, row;
  float weight;
};
void ExpertFfnRouted(const ExpertWeights& w, std::span<const RoutedRow> rows,
                     std::span<const ExpertInput> inputs, int hidden, int intermediate,
                     FfnScratch& scratch, ThreadPool& pool);

}  // namespace moe::cpu
