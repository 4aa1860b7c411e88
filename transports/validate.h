// The checks every transport shares: that its configuration is sound (CheckConfig), and that a
// write lies inside its regions (the rest of this file).
//
// A Write names a local region, a remote region, two offsets and a length, all from the caller.
// Before a transport turns them into pointers (memcpy, ucp_put, an RDMA SGE) it must know that both
// regions are its own kind (a region of another transport must not be static_cast to this one's)
// and that [offset, offset + length) lies inside each of them. The test is written as `length <=
// size && offset <= size - length`, never as `offset + length > size`, which wraps for a huge
// offset or length and lets the write through.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "m2n/status.h"
#include "transports/transport.h"

namespace m2n::transport {

// Checks a transport's Config (rank inside the world, max_unpolled in [1, max_unpolled_limit],
// every peer inside the world and listed once) and returns the index of each rank in
// config.peers (-1: not a peer). Errors are InvalidArgument, beginning "<transport>: rank <r>".
StatusOr<std::vector<int>> CheckConfig(const Config& config, std::string_view transport,
                                       int max_unpolled_limit);

// Whether [offset, offset + length) lies inside [0, size); overflow-safe.
constexpr bool RangeInside(size_t offset, size_t length, size_t size) {
  return length <= size && offset <= size - length;
}

// "<transport>: peer rank <w.peer>: write of <w.length> bytes<why>": how a refused write is named.
std::string WriteText(const Write& w, std::string_view transport, std::string_view why);

// For a write of w.length > 0 bytes: InvalidArgument unless it names both regions, the local one of
// type `local_type` and the remote one of type `remote_type` (the transport's own classes), and
// lies inside both. The message names the transport, the peer, the offset, the length and the
// region's size. After OK, static_cast of w.local and w.remote to those types is safe.
Status ValidateWriteRegions(const Write& w, std::string_view transport,
                            const std::type_info& local_type, const std::type_info& remote_type);

// The host-driven Write of the same bytes as a stream-ordered one, so that SendOnStream is held to
// the same checks as Post.
Write AsWrite(const StreamWrite& w);

}  // namespace m2n::transport
