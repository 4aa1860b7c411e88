// MemoryRegion as a user holds it, through the public headers only: a default-constructed handle is
// an empty one (valid() false, data() null, size() 0) that a region can later be moved into.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "m2n/m2n.h"

namespace m2n {
namespace {

TEST(MemoryRegionTest, DefaultConstructedIsEmpty) {
  MemoryRegion region;
  EXPECT_FALSE(region.valid());
  EXPECT_FALSE(static_cast<bool>(region));
  EXPECT_EQ(region.data(), nullptr);
  EXPECT_EQ(region.size(), 0u);
  EXPECT_EQ(region.kind(), MemoryKind::kHost);
}

TEST(MemoryRegionTest, EmptyHandlesMoveAndHoldPlaces) {
  std::vector<MemoryRegion> regions(3);  // places to fill later, as a user's struct would hold them
  MemoryRegion moved = std::move(regions[0]);
  EXPECT_FALSE(moved.valid());
  regions[1] = std::move(moved);
  EXPECT_FALSE(regions[1].valid());
  EXPECT_EQ(regions[1].data(), nullptr);
}

}  // namespace
}  // namespace m2n
