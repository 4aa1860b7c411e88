// The registry of registered memory: MemoryRegion handles, Group::RegisterMemory (which refuses a
// buffer that overlaps one already registered) and FindRegion, which finds the region a send's
// buffer lies in. The registry lives in the Core that the Group and every region share.
#include <cstdio>

#include "group/impl.h"

namespace m2n {

std::string_view MemoryKindName(MemoryKind kind) {
  return kind == MemoryKind::kHost ? "host" : "cuda";
}

MemoryRegion::Impl::~Impl() {
  if (core) core->regions.erase(reinterpret_cast<uintptr_t>(region->data()));
}

MemoryRegion::MemoryRegion(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MemoryRegion::MemoryRegion() noexcept = default;
MemoryRegion::MemoryRegion(MemoryRegion&&) noexcept = default;
MemoryRegion& MemoryRegion::operator=(MemoryRegion&&) noexcept = default;
MemoryRegion::~MemoryRegion() = default;
std::byte* MemoryRegion::data() const { return impl_ ? impl_->region->data() : nullptr; }
size_t MemoryRegion::size() const { return impl_ ? impl_->region->size() : 0; }
MemoryKind MemoryRegion::kind() const { return impl_ ? impl_->region->kind() : MemoryKind::kHost; }

StatusOr<MemoryRegion> Group::RegisterMemory(void* data, size_t size, MemoryKind kind) {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  if (data == nullptr || size == 0) {
    return InvalidArgumentError(impl_->me() +
                                ": RegisterMemory needs a non-null buffer and size > 0");
  }
  auto address = reinterpret_cast<uintptr_t>(data);
  auto& regions = impl_->core->regions;
  auto next = regions.lower_bound(address);
  bool overlaps = (next != regions.end() && next->first < address + size);
  if (!overlaps && next != regions.begin()) {
    auto prev = std::prev(next);
    overlaps = prev->first + prev->second->region->size() > address;
  }
  if (overlaps) {
    return InvalidArgumentError(
        impl_->me() + ": RegisterMemory: the buffer overlaps a region already registered");
  }
  // Send buffers are only ever the source of writes: no peer gets a key to them.
  auto region = impl_->core->transport->RegisterSource(data, size, kind);
  if (!region.ok()) return region.status().WithContext(impl_->me() + ": RegisterMemory");
  auto handle = std::make_unique<MemoryRegion::Impl>();
  handle->core = impl_->core;
  handle->region = std::move(region).value();
  regions[address] = handle.get();
  return MemoryRegion(std::move(handle));
}

StatusOr<MemoryRegion::Impl*> Group::Impl::FindRegion(const void* data, size_t length) const {
  auto address = reinterpret_cast<uintptr_t>(data);
  auto it = core->regions.upper_bound(address);
  if (it != core->regions.begin()) {
    --it;
    const transport::Region& r = *it->second->region;
    uintptr_t base = reinterpret_cast<uintptr_t>(r.data());
    if (address >= base && address - base <= r.size() && length <= r.size() - (address - base)) {
      return it->second;
    }
  }
  char text[64];
  snprintf(text, sizeof text, "%p", data);
  return InvalidArgumentError(me() + ": buffer [" + text + ", +" + std::to_string(length) +
                              ") is not inside memory registered with this group (RegisterMemory)");
}

}  // namespace m2n
