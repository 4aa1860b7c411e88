// A fault-injecting transport decorator, for tests only: wraps the transport a Group created
// (through GroupFactory, src/group/group_factory.h) and, by a plan, drops, delays, duplicates,
// reorders or corrupts the immediates and ACKs this rank receives, corrupts payloads it sends, or
// fails its posts. Everything else passes through to the real transport underneath, so the data
// path is real: only what the plan names is disturbed.
//
// Faults on immediates act where they arrive (Poll): what a lossy or buggy network or NIC would
// hand the protocol. Payload corruption acts where a write leaves (Post): the write goes from a
// copy with one byte flipped, as if damaged on the wire.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transports/transport.h"

namespace m2n::testing {

enum class Fault {
  kDrop,  // the immediate never arrives
  kDelay,  // it and everything after it on its (peer, lane) arrive delay_us later, in order
  kDuplicate,  // it arrives twice
  kReorder,  // it arrives after the next immediate of its (peer, lane)
  kCorrupt,  // one bit of it is flipped
  kCorruptPayload,  // a posted data write's payload is damaged (one byte flipped)
  kFailPost,  // Post fails
};
std::string FaultName(Fault fault);

// A rule picks events of its kind: immediates arriving on `lane` (kDrop ... kCorrupt), or writes
// posted on `lane` (kCorruptPayload: data writes with a payload; kFailPost: any), from or to
// `peer` (-1: any). It fires on the `nth` such event (counted from 0), or, with nth < 0, on each
// with `probability`.
struct FaultRule {
  Fault fault = Fault::kDrop;
  transport::Lane lane = transport::Lane::kData;
  int peer = -1;
  int64_t nth = -1;
  double probability = 0;
  int delay_us = 1000;  // kDelay
};

struct FaultPlan {
  std::vector<FaultRule> rules;
  uint64_t seed = 1;  // for probabilities and for which bit or byte is flipped
};

// How often each fault fired, by Fault value.
struct FaultCounts {
  uint64_t fired[7] = {};
  uint64_t total() const;
};

// `counts` (may be null) must outlive the returned transport.
std::unique_ptr<transport::Transport> WrapWithFaults(std::unique_ptr<transport::Transport> inner,
                                                     FaultPlan plan, FaultCounts* counts);

}  // namespace m2n::testing
