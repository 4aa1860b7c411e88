// safetensors files: an 8-byte little-endian header length, a JSON header
//   {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//   "__metadata__": {...}}
// and the tensors' bytes (offsets relative to the end of the header). A checkpoint is a folder of
// such files, with model.safetensors.index.json ({"weight_map": {"name": "file"}}) when there are
// several, as public MoE checkpoints are laid out.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"

namespace moe {

enum class Dtype { kF32, kBF16, kF16 };
const char* DtypeName(Dtype dtype);
size_t DtypeBytes(Dtype dtype);

uint16_t FloatToBf16(float f);  // round to nearest even
float Bf16ToFloat(uint16_t b);
float F16ToFloat(uint16_t h);

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // in the file, absolute
  uint64_t end = 0;
  int64_t elements() const;
};

class SafetensorsFile {
 public:
  // Reads and checks the header: every tensor's dtype, shape and offsets against the file's size.
  static m2n::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(const std::string& name) const;
  // The tensor converted to fp32, row-major.
  m2n::Status ReadFloat(const TensorInfo& info, std::span<float> out) const;

 private:
  SafetensorsFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
  std::map<std::string, TensorInfo> tensors_;
};

// A folder of safetensors files (or one file).
class Checkpoint {
 public:
  static m2n::StatusOr<Checkpoint> Open(const std::string& path);
  // Reads `name` into `out`, which must have the expected shape; errors name the tensor, file and
  // both shapes.
  m2n::Status Read(const std::string& name, std::span<const int64_t> shape,
                   std::span<float> out) const;
  size_t tensor_count() const { return where_.size(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsFile*> where_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;
};
// Writes one safetensors file, converting to `dtype`.
m2n::Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                             Dtype dtype);

}  // namespace moe
