// The stream-ordered calls of m2n::ExpertParallel (ep.h) in a build without CUDA: a layer on a
// group with device slots is refused at Create, and every call says that CUDA was not built in.
// device_calls.cc is the real thing.
#include "ep/layer.h"

namespace m2n {
namespace ep {

struct DeviceLayer {};

namespace {

Status NotBuilt(const ExpertParallel::Impl& impl, const char* what) {
  return UnimplementedError(impl.me() + ": " + what +
                            ": m2n was built without CUDA, so the stream-ordered expert-parallel "
                            "calls (device memory) are not available");
}

}  // namespace

Status CreateDeviceLayer(ExpertParallel::Impl& impl) {
  return NotBuilt(impl, "a layer on a group with device slots");
}

}  // namespace ep

Status ExpertParallel::DispatchOnStream(const void*, int, const int32_t*, const float*, Stream) {
  return ep::NotBuilt(*impl_, "DispatchOnStream");
}
Status ExpertParallel::DispatchOnStream(const void*, const int*, const int32_t*, const float*,
                                        Stream) {
  return ep::NotBuilt(*impl_, "DispatchOnStream");
}
Status ExpertParallel::ReceiveCombineOnStream(void*, Stream) {
  return ep::NotBuilt(*impl_, "ReceiveCombineOnStream");
}
Status ExpertParallel::ReceiveDispatchOnStream(DeviceExpertBatch*, Stream) {
  return ep::NotBuilt(*impl_, "ReceiveDispatchOnStream");
}
Status ExpertParallel::CombineOnStream(const void*, Stream) {
  return ep::NotBuilt(*impl_, "CombineOnStream");
}

}  // namespace m2n
