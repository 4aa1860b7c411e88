// The MPI baseline of `m2n_perf --baseline mpi` (built only when CMake finds MPI): the same M-to-N
// pattern with MPI_Isend / MPI_Irecv, timed by the same driver as m2n.
//   latency phase: senders MPI_Isend to every receiver, receivers MPI_Irecv from every sender, then
//                  wait for all;
//   bandwidth phase: a window of slot_depth outstanding messages per pair, like m2n's credits.
// Waits poll MPI_Testall, spinning for spin_us and then yielding the core between polls, exactly as
// m2n's progress loop does; a deadline bounds them.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "exchange.h"

namespace m2n::perf {

// MPI_Init. Until then the functions below must not be called.
Status MpiInit(int* argc, char*** argv);
void MpiFinalize();
[[noreturn]] void MpiAbort(int code);
int MpiRank();
int MpiWorldSize();
// Rank 0's `value` on every rank.
Status MpiBroadcast(std::string& value);
// "Open MPI v4.1.4, ..." (MPI_Get_library_version, first line).
std::string MpiLibraryVersion();

class MpiExchange : public Exchange {
 public:
  // `peers` as Group::peers(); MPI ranks must equal m2n ranks. Receive buffers: peers x depth x
  // max_bytes, allocated here.
  // spin_us: as Options::spin_us, so that MPI waits like m2n does.
  MpiExchange(std::span<const int> peers, int depth, size_t max_bytes, int64_t timeout_ms,
              int spin_us);
  ~MpiExchange() override;

  std::string_view name() const override { return "MPI"; }
  Status SendToPeers(std::span<const std::byte* const> data, size_t bytes) override;
  Status ReceiveFromPeers(size_t bytes, std::span<std::span<std::byte>> views) override;
  Status ReleaseReceived() override { return OkStatus(); }
  Status StreamSend(size_t bytes, int count, const Source& source) override;
  Status StreamReceive(size_t bytes, int count, const Sink& sink) override;

 private:
  std::byte* ReceiveBuffer(size_t peer_index, int slot);

  std::vector<int> peers_;
  int depth_;
  size_t max_bytes_;
  int64_t timeout_ms_;
  int spin_us_;
  std::byte* receive_memory_ = nullptr;
  // One request per (peer, window slot); opaque MPI_Request storage, so this header needs no mpi.h.
  struct Requests;
  Requests* requests_ = nullptr;
};

}  // namespace m2n::perf
