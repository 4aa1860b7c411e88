// Group::device_group(): the handle of the device-side API (include/m2n/device.h). A placeholder
// until the cuda_ipc transport serves it (branch dev wires it): every group answers kUnimplemented.
#include "group/impl.h"

namespace m2n {

StatusOr<DeviceGroup> Group::device_group() {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  return UnimplementedError(impl_->me() +
                            ": Group::device_group: the device-side API is not wired to a "
                            "transport in this build yet");
}

}  // namespace m2n
