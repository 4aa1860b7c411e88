// Python buffers to m2n and back, without copies. In: anything nanobind's ndarray accepts (the
// buffer protocol: numpy, bytearray, memoryview; DLPack: torch tensors on CPU or GPU), as one
// C-contiguous run of bytes. Out: a received message as a numpy (host) or torch (GPU) view of its
// slot, which keeps the message object, and through it the Group, alive.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>

#include "m2n/group.h"
#include "m2n/memory.h"

namespace m2n::python {

namespace nb = nanobind;

// What any accepted array is: read-only views are fine, the data is only read or registered.
using AnyArray = nb::ndarray<nb::ro>;

struct Bytes {
  std::byte* data = nullptr;
  size_t size = 0;
  MemoryKind kind = MemoryKind::kHost;
};

// The bytes of `array`; raises m2n.InvalidArgumentError (naming `what`) when they are not one
// contiguous run or not on the CPU or a CUDA device.
Bytes BytesOf(const AnyArray& array, const char* what);

// A CUDA stream from Python: None (the legacy default stream), an int (a cudaStream_t), or any
// object with a `cuda_stream` attribute (torch.cuda.Stream, cupy's streams).
Stream StreamOf(nb::handle stream);

// A uint8 view of [data, data + size) that keeps `owner` alive: numpy for host memory, a torch
// tensor on the current CUDA device for device memory.
nb::object ViewOf(std::byte* data, size_t size, MemoryKind kind, nb::handle owner);

}  // namespace m2n::python
