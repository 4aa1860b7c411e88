// Fixed-width fields for the bytes a transport hands to peers (connection address, packed remote
// key). Peers run the same build on the same kind of host, so fields are copied in host order; the
// version field in each format is what catches a mismatch. Shared by the transports that need it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "transports/transport.h"

namespace m2n::transport {

class WireWriter {
 public:
  explicit WireWriter(Bytes& out) : out_(out) {}
  template <typename T>
  void Put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    // resize + memcpy rather than insert(): GCC 12 at -O3 misreads the latter as an overflow.
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &value, sizeof(T));
  }
  void PutBytes(std::span<const std::byte> bytes) {
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }

 private:
  Bytes& out_;
};

// Reads fields in order; once a read runs past the end, every later read fails too, so a caller
// checks ok() once after reading everything.
class WireReader {
 public:
  explicit WireReader(std::span<const std::byte> in) : in_(in) {}
  template <typename T>
  T Get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T value{};
    if (!ok_ || in_.size() - pos_ < sizeof(T)) {
      ok_ = false;
      return value;
    }
    std::memcpy(&value, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::span<const std::byte> GetBytes(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    auto bytes = in_.subspan(pos_, n);
    pos_ += n;
    return bytes;
  }
  bool ok() const { return ok_; }
  size_t consumed() const { return pos_; }
  size_t size() const { return in_.size(); }

 private:
  std::span<const std::byte> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace m2n::transport
