// The GPU load backend of the expert cache (cache.h), for the timed run of the next GPU session:
// every expert's bytes in pinned host memory, C slots in device memory, loads issued with
// cudaMemcpyAsync on a copy stream of their own and an event recorded per slot, so that a step's
// compute stream waits (cudaStreamWaitEvent) only for the experts it uses while prefetches overlap
// compute. Compiled with CUDA; not yet run (no GPU was lent when it was written).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "m2n/status.h"
#include "offload/cache.h"

namespace moe::offload {

class CudaCopyBackend final : public LoadBackend {
 public:
  static m2n::StatusOr<std::unique_ptr<CudaCopyBackend>> Create(const OffloadShape& shape,
                                                                int slots);
  ~CudaCopyBackend() override;
  CudaCopyBackend(const CudaCopyBackend&) = delete;
  CudaCopyBackend& operator=(const CudaCopyBackend&) = delete;

  std::span<std::byte> Host(ExpertId id);  // pinned; fill before serving
  void* Slot(int slot) const;  // device memory of one slot
  m2n::Status Load(ExpertId id, int slot) override;
  // Makes `stream` (a cudaStream_t) wait for the last load into `slot`; no host wait.
  m2n::Status WaitOn(int slot, void* stream);
  // The step on `stream` has enqueued its reads of `slot`: a later load into it waits for them.
  m2n::Status MarkRead(int slot, void* stream);

 private:
  CudaCopyBackend(const OffloadShape& shape, int slots) : shape_(shape), slots_(slots) {}
  m2n::Status Init();

  OffloadShape shape_;
  int slots_;
  std::byte* host_ = nullptr;
  std::byte* device_ = nullptr;
  void* copy_stream_ = nullptr;
  std::unique_ptr<void*[]> events_;  // per slot: its last load done
  std::unique_ptr<void*[]> read_events_;  // per slot: the last step reading it done
};

}  // namespace moe::offload
