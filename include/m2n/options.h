// Options for a Group: an aggregate with defaults, overridable by M2N_* environment variables.
//
//   m2n::Options options{.num_senders = 2, .num_receivers = 2, .slot_bytes = 1 << 20};
//   auto resolved = m2n::ResolveOptions(options);   // applies M2N_* variables and the launcher's
//                                                   // rank / world size / master address
//
// The table of variables is EnvironmentTable() below (one row per M2N_* variable) and
// docs/configuration.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "m2n/memory.h"
#include "m2n/status.h"

namespace m2n {

// Where the rank, world size and master address come from. Unset fields (-1 / empty / 0) are filled
// by ResolveOptions from, in order: M2N_* variables, torchrun (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT), Open MPI (OMPI_COMM_WORLD_RANK / _SIZE), Slurm (SLURM_PROCID / SLURM_NTASKS).
struct BootstrapOptions {
  int rank = -1;
  int world_size = -1;
  std::string master_addr;  // host running the TCP store (rank 0); default 127.0.0.1
  int master_port = 0;  // default 29517
  // Ranks of one job share this; a rank of another job is refused by the store. Default: derived
  // from the master address and port.
  std::string job_id;
  // The job's secret, the same on every rank (at least 16 bytes; M2N_JOB_KEY or M2N_JOB_KEY_FILE):
  // the store and each rank prove to each other that they hold it when a rank connects, without
  // sending it, so nobody without it can join the job or pose as its store (docs/security.md).
  // Empty: no key; the store then binds loopback unless told otherwise, and warns if it is.
  std::string job_key;
  // How long group creation may take in all: connecting to the store, exchanging addresses.
  std::chrono::milliseconds timeout{30000};
};

struct Options {
  // M senders hold ranks [0, M); N receivers hold ranks [M, M + N). M + N must equal the world
  // size.
  int num_senders = 0;
  int num_receivers = 0;
  // Each rank exposes, for every peer on the other side, `slot_depth` receive slots of
  // `slot_bytes`. A message may be at most slot_bytes long; a sender may have at most slot_depth
  // messages to one receiver that the receiver has not released (its credits).
  size_t slot_bytes = size_t{1} << 20;
  int slot_depth = 4;
  // "auto" picks the best transport built and usable here; or a name from AvailableTransports().
  std::string transport = "auto";
  // Where this rank's receive slots live. kCuda puts them in the memory of the CUDA device current
  // when Create is called (one process per GPU), which the stream-ordered calls need; "auto" then
  // picks a transport that supports it.
  MemoryKind slot_memory = MemoryKind::kHost;
  // How long an idle wait spins before it yields the core (microseconds); 0: yield at once.
  // -1 (auto): 50 us, or 0 when this host has more ranks of the group than online cores, where a
  // spinning rank only holds back the rank it waits for. Group::options() shows the value chosen.
  int spin_us = -1;
  // How often a blocked call asks the bootstrap store whether a peer died (milliseconds).
  int liveness_check_ms = 200;
  // Check every message's payload on arrival (CRC-32C in an 8-byte trailer after the payload in
  // its slot; docs/reliability.md). Off by default: it costs a copy and a CRC per message on the
  // sender and a CRC on the receiver. Host memory only. Every rank must agree.
  bool checksum = false;
  // The RDMA NIC (e.g. "mlx5_0") a NIC transport must use; empty: the one nearest to this rank's
  // GPU (or CPUs) in the machine's topology (hwloc), else the transport's own choice.
  std::string nic;
  // The CPU (OS index) a transport's proxy thread is pinned to; -1: a core near both the GPU and
  // the NIC, from the topology (m2n/topology.h shows the choice).
  int proxy_core = -1;
  BootstrapOptions bootstrap;
  // Set by ResolveOptions on what it returns (so also on Group::options()): such options are final,
  // and resolving them again (as Group::Create does) only checks them. Copy a group's options,
  // change the port, and Create a second group: the launcher's M2N_MASTER_PORT does not send it
  // back to the first group's store. Set it yourself to keep the environment out altogether.
  bool resolved = false;
};

// One row of the environment table.
struct EnvironmentVariable {
  std::string_view name;
  std::string_view field;
  std::string_view meaning;
};
std::span<const EnvironmentVariable> EnvironmentTable();

// Applies M2N_* variables over `options` (a variable wins over a field left at its default, and
// over a field set in code too: it is the operator's override), then fills rank, world size and the
// master address from the launcher's variables. Errors name the variable and the bad value. Options
// with `resolved` set are only checked (no variable is read); the result has `resolved` set.
StatusOr<Options> ResolveOptions(const Options& options);

// One line per field, for logs and the m2n_perf header.
std::string DescribeOptions(const Options& options);

}  // namespace m2n
