// The Python face of m2n::Group, m2n::Message and m2n::MemoryRegion (python/src/group.cc binds
// them). Each wrapper holds what must outlive it: a region holds the array it registered and the
// Group; a message holds the Group, so its zero-copy view stays valid until release().
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "m2n/deadline.h"
#include "m2n/group.h"
#include "m2n/memory.h"

namespace m2n::python {

namespace nb = nanobind;

struct PyGroup {
  std::unique_ptr<Group> group;
  // The Group, or m2n.FailedPreconditionError once closed.
  Group& get();
};

struct PyRegion {
  // Empty once deregistered. (An optional, not a default-constructed MemoryRegion: the defaulted
  // constructor in m2n/memory.h needs MemoryRegion::Impl complete, which it is only in src/.)
  std::optional<MemoryRegion> region;
  nb::object buffer;  // the registered array: its memory must not go away while registered
  nb::object group;
  // Kept apart from the region: still answerable after deregister().
  uintptr_t address = 0;
  size_t nbytes = 0;
  std::string kind;
};

struct PyMessage {
  Message message;
  MemoryKind kind = MemoryKind::kHost;
  bool released = false;
  nb::object group;
};

// `seconds` from now (a timeout argument); raises m2n.InvalidArgumentError when negative.
Deadline DeadlineIn(double seconds);

void BindGroup(nb::module_& m);
void BindExpertParallel(nb::module_& m);  // ep.cc

}  // namespace m2n::python
