// Buffer conversions between Python arrays and m2n (buffers.h).
#include "buffers.h"

#include <cstdint>
#include <string>

#include "errors.h"
#include "m2n/status.h"

namespace m2n::python {

Bytes BytesOf(const AnyArray& array, const char* what) {
  const int32_t device = array.device_type();
  MemoryKind kind;
  if (device == nb::device::cpu::value) {
    kind = MemoryKind::kHost;
  } else if (device == nb::device::cuda::value) {
    kind = MemoryKind::kCuda;
  } else {
    ThrowStatus(InvalidArgumentError(std::string(what) + ": the array is on DLPack device type " +
                                     std::to_string(device) + "; m2n takes CPU or CUDA memory"));
  }
  // C-contiguous: each dimension's stride (in elements) is the product of the later extents.
  int64_t expected = 1;
  for (size_t d = array.ndim(); d-- > 0;) {
    if (array.shape(d) != 1 && array.stride(d) != expected) {
      ThrowStatus(InvalidArgumentError(
          std::string(what) + ": the array is not contiguous (dimension " + std::to_string(d) +
          " has stride " + std::to_string(array.stride(d)) +
          "); m2n sends one run of bytes: pass a contiguous array"));
    }
    expected *= static_cast<int64_t>(array.shape(d));
  }
  auto* data = static_cast<std::byte*>(const_cast<void*>(array.data()));
  return Bytes{data, array.nbytes(), kind};
}

Stream StreamOf(nb::handle stream) {
  if (stream.is_none()) return nullptr;
  nb::handle handle = stream;
  nb::object attribute;
  if (nb::hasattr(stream, "cuda_stream")) {
    attribute = stream.attr("cuda_stream");
    handle = attribute;
  }
  if (!nb::isinstance<nb::int_>(handle)) {
    ThrowStatus(
        InvalidArgumentError("stream: expected None, an int (cudaStream_t) or an object with "
                             "`cuda_stream` (torch.cuda.Stream), got " +
                             std::string(nb::type_name(stream.type()).c_str())));
  }
  return reinterpret_cast<Stream>(nb::cast<uintptr_t>(handle));
}

nb::object ViewOf(std::byte* data, size_t size, MemoryKind kind, nb::handle owner) {
  const size_t shape[1] = {size};
  if (kind == MemoryKind::kHost) {
    return nb::cast(nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(data, 1, shape, owner));
  }
  // Device slots live on the device that was current when the Group was created (Options::
  // slot_memory); torch says which one that is.
  const int device_id =
      nb::cast<int>(nb::module_::import_("torch").attr("cuda").attr("current_device")());
  return nb::cast(nb::ndarray<nb::pytorch, uint8_t, nb::ndim<1>>(
      data, 1, shape, owner, nullptr, nb::dtype<uint8_t>(), nb::device::cuda::value, device_id));
}

}  // namespace m2n::python
