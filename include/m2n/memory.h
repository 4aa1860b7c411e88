// Registered memory. A MemoryRegion is a move-only handle: destroying it deregisters the memory.
// Every buffer a Group sends from must lie inside a region registered with that Group.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

namespace m2n {

enum class MemoryKind : int {
  kHost = 0,  // pageable or pinned host memory
  kCuda = 1,  // CUDA device memory (GPU path; a transport says whether it supports it)
};
std::string_view MemoryKindName(MemoryKind kind);

class Group;

// A default-constructed (or moved-from) MemoryRegion is an empty handle: valid() and the bool
// conversion are false, data() is null, size() is 0, kind() is kHost, and destroying it does
// nothing. It holds a place (a member, a vector element) until a region from
// Group::RegisterMemory is moved into it.
class MemoryRegion {
 public:
  MemoryRegion() noexcept;  // out of line: users see Impl only as a name
  MemoryRegion(MemoryRegion&&) noexcept;
  MemoryRegion& operator=(MemoryRegion&&) noexcept;
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  ~MemoryRegion();

  bool valid() const { return impl_ != nullptr; }
  explicit operator bool() const { return valid(); }
  std::byte* data() const;
  size_t size() const;
  MemoryKind kind() const;

  struct Impl;  // owned by the Group's registry; opaque to users

 private:
  friend class Group;
  explicit MemoryRegion(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace m2n
