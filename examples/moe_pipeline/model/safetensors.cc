#include "model/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "model/config.h"
#include "model/json.h"

namespace moe {
namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // the format's own limit

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

m2n::Status ReadFully(int fd, void* data, size_t size, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return m2n::DataLossError(
          path + ": short read at byte " + std::to_string(offset) +
          (n < 0 ? std::string(": ") + std::strerror(errno) : std::string(" (end of file)")));
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return m2n::OkStatus();
}

m2n::StatusOr<Dtype> ParseDtype(const std::string& s, const std::string& where) {
  if (s == "F32") return Dtype::kF32;
  if (s == "BF16") return Dtype::kBF16;
  if (s == "F16") return Dtype::kF16;
  return m2n::InvalidArgumentError(where + ": dtype \"" + s +
                                   "\" is not supported (F32, BF16, F16)");
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

const char* DtypeName(Dtype dtype) {
  switch (dtype) {
    case Dtype::kF32:
      return "F32";
    case Dtype::kBF16:
      return "BF16";
    case Dtype::kF16:
      return "F16";
  }
  return "?";
}

size_t DtypeBytes(Dtype dtype) { return dtype == Dtype::kF32 ? 4 : 2; }

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) return 0x7FC0;  // NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16ToFloat(uint16_t b) {
  const uint32_t bits = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) close(fd_);
}

m2n::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return m2n::NotFoundError("cannot open " + path + ": " + std::strerror(errno));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, fd));
  struct stat st {};
  if (fstat(fd, &st) != 0) return m2n::InternalError("fstat " + path + ": " + std::strerror(errno));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    return m2n::DataLossError(path + ": " + std::to_string(size) +
                              " bytes, too short for a safetensors header");
  }
  unsigned char length_bytes[8];
  M2N_RETURN_IF_ERROR(ReadFully(fd, length_bytes, 8, 0, path));
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  if (header_bytes > kMaxHeaderBytes || header_bytes > size - 8) {
    return m2n::DataLossError(path + ": header length " + std::to_string(header_bytes) +
                              " does not fit the file of " + std::to_string(size) +
                              " bytes (not a safetensors file, or truncated)");
  }
  std::string header(header_bytes, '\0');
  M2N_RETURN_IF_ERROR(ReadFully(fd, header.data(), header.size(), 8, path));
  auto json = Json::Parse(header, path + " (safetensors header)");
  if (!json.ok()) return m2n::DataLossError(json.status().message());
  if (!json->is_object())
    return m2n::DataLossError(path + ": the safetensors header is not a JSON object");
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = size - data_start;
  for (const auto& [name, entry] : json->members()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor \"" + name + "\"";
    const Json* dtype = entry.Find("dtype");
    const Json* shape = entry.Find("shape");
    const Json* offsets = entry.Find("data_offsets");
    if (dtype == nullptr || !dtype->is_string() || shape == nullptr || !shape->is_array() ||
        offsets == nullptr || !offsets->is_array() || offsets->items().size() != 2) {
      return m2n::DataLossError(where + ": needs \"dtype\", \"shape\" and two \"data_offsets\"");
    }
    TensorInfo info;
    info.name = name;
    M2N_ASSIGN_OR_RETURN(info.dtype, ParseDtype(dtype->as_string(), where));
    for (const Json& d : shape->items()) {
      if (!d.is_number() || d.as_number() < 0 || d.as_number() > 1e12) {
        return m2n::DataLossError(where + ": bad shape " + shape->Dump());
      }
      info.shape.push_back(static_cast<int64_t>(d.as_number()));
    }
    const double b = offsets->items()[0].as_number(), e = offsets->items()[1].as_number();
    if (!offsets->items()[0].is_number() || !offsets->items()[1].is_number() || b < 0 || e < b ||
        e > static_cast<double>(data_bytes)) {
      return m2n::DataLossError(where + ": data_offsets " + offsets->Dump() + " lie outside the " +
                                std::to_string(data_bytes) + " data bytes (truncated file?)");
    }
    info.begin = data_start + static_cast<uint64_t>(b);
    info.end = data_start + static_cast<uint64_t>(e);
    const uint64_t want = static_cast<uint64_t>(info.elements()) * DtypeBytes(info.dtype);
    if (info.end - info.begin != want) {
      return m2n::DataLossError(where + ": " + std::to_string(info.end - info.begin) +
                                " bytes for shape " + ShapeString(info.shape) + " of " +
                                DtypeName(info.dtype) + " (" + std::to_string(want) + " expected)");
    }
    file->tensors_.emplace(name, std::move(info));
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

m2n::Status SafetensorsFile::ReadFloat(const TensorInfo& info, std::span<float> out) const {
  if (static_cast<int64_t>(out.size()) != info.elements()) {
    return m2n::InvalidArgumentError(path_ + ": tensor \"" + info.name + "\" has " +
                                     std::to_string(info.elements()) + " elements, the buffer " +
                                     std::to_string(out.size()));
  }
  if (info.dtype == Dtype::kF32) {
    return ReadFully(fd_, out.data(), out.size() * 4, info.begin, path_);
  }
  std::vector<uint16_t> raw(out.size());
  M2N_RETURN_IF_ERROR(ReadFully(fd_, raw.data(), raw.size() * 2, info.begin, path_));
  for (size_t i = 0; i < raw.size(); ++i) {
    out[i] = info.dtype == Dtype::kBF16 ? Bf16ToFloat(raw[i]) : F16ToFloat(raw[i]);
  }
  return m2n::OkStatus();
}

m2n::StatusOr<Checkpoint> Checkpoint::Open(const std::string& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return m2n::NotFoundError("weights " + path + ": " + std::strerror(errno));
  }
  std::vector<std::string> files;
  if (S_ISDIR(st.st_mode)) {
    const std::string index_path = path + "/model.safetensors.index.json";
    if (access(index_path.c_str(), R_OK) == 0) {
      M2N_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
      M2N_ASSIGN_OR_RETURN(Json index, Json::Parse(text, index_path));
      const Json* map = index.Find("weight_map");
      if (map == nullptr || !map->is_object()) {
        return m2n::InvalidArgumentError(index_path + ": no \"weight_map\" object");
      }
      for (const auto& [name, file] : map->members()) {
        if (!file.is_string())
          return m2n::InvalidArgumentError(index_path + ": \"" + name + "\" maps to a non-string");
        if (std::find(files.begin(), files.end(), file.as_string()) == files.end())
          files.push_back(file.as_string());
      }
      for (auto& f : files) f = path + "/" + f;
    } else {
      DIR* dir = opendir(path.c_str());
      if (dir == nullptr)
        return m2n::NotFoundError("weights " + path + ": " + std::strerror(errno));
      while (dirent* e = readdir(dir)) {
        const std::string name = e->d_name;
        if (EndsWith(name, ".safetensors")) files.push_back(path + "/" + name);
      }
      closedir(dir);
      std::sort(files.begin(), files.end());
    }
    if (files.empty())
      return m2n::NotFoundError("weights " + path + ": no .safetensors files in the folder");
  } else {
    files.push_back(path);
  }
  for (const std::string& f : files) {
    M2N_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened, SafetensorsFile::Open(f));
    std::shared_ptr<SafetensorsFile> file(std::move(opened));
    for (const auto& [name, info] : file->tensors()) {
      if (checkpoint.where_.count(name) != 0) {
        return m2n::DataLossError("weights " + path + ": tensor \"" + name + "\" is in both " +
                                  checkpoint.where_[name]->path() + " and " + f);
      }
      checkpoint.where_[name] = file.get();
    }
    checkpoint.files_.push_back(std::move(file));
  }
  return checkpoint;
}

m2n::Status Checkpoint::Read(const std::string& name, std::span<const int64_t> shape,
                             std::span<float> out) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return m2n::NotFoundError("weights " + path_ + ": tensor \"" + name + "\" is missing (" +
                              std::to_string(where_.size()) + " tensors found)");
  }
  const TensorInfo& info = *it->second->Find(name);
  if (!std::equal(info.shape.begin(), info.shape.end(), shape.begin(), shape.end())) {
    return m2n::InvalidArgumentError(it->second->path() + ": tensor \"" + name + "\" has shape " +
                                     ShapeString(info.shape) + ", the config needs " +
                                     ShapeString(shape));
  }
  return it->second->ReadFloat(info, out);
}

m2n::Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                             Dtype dtype) {
  Json header = Json::Object();
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    int64_t n = 1;
    Json shape = Json::Array();
    for (int64_t d : t.shape) {
      n *= d;
      shape.Push(Json::Number(static_cast<double>(d)));
    }
    if (n != static_cast<int64_t>(t.data.size())) {
      return m2n::InvalidArgumentError("WriteSafetensors: tensor \"" + t.name + "\" of shape " +
                                       ShapeString(t.shape) + " given " +
                                       std::to_string(t.data.size()) + " values");
    }
    const uint64_t bytes = static_cast<uint64_t>(n) * DtypeBytes(dtype);
    Json entry = Json::Object();
    entry.Set("dtype", Json::String(DtypeName(dtype)));
    entry.Set("shape", std::move(shape));
    entry.Set("data_offsets", Json::Array()
                                  .Push(Json::Number(static_cast<double>(offset)))
                                  .Push(Json::Number(static_cast<double>(offset + bytes))));
    header.Set(t.name, std::move(entry));
    offset += bytes;
  }
  header.Set("__metadata__", Json::Object().Set("format", Json::String("pt")));
  std::string text = header.Dump();
  while (text.size() % 8 != 0) text.push_back(' ');  // the data starts 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return m2n::InternalError("cannot write " + path + ": " + std::strerror(errno));
  unsigned char length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<unsigned char>((uint64_t{text.size()} >> (8 * i)) & 0xFF);
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorToWrite& t : tensors) {
    if (dtype == Dtype::kF32) {
      out.write(reinterpret_cast<const char*>(t.data.data()),
                static_cast<std::streamsize>(t.data.size() * 4));
    } else if (dtype == Dtype::kBF16) {
      std::vector<uint16_t> raw(t.data.size());
      for (size_t i = 0; i < raw.size(); ++i) raw[i] = FloatToBf16(t.data[i]);
      out.write(reinterpret_cast<const char*>(raw.data()),
                static_cast<std::streamsize>(raw.size() * 2));
    } else {
      return m2n::UnimplementedError(
          "WriteSafetensors: writing F16 is not supported (F32 or BF16)");
    }
  }
  out.close();
  if (!out) return m2n::InternalError("writing " + path + " failed: " + std::strerror(errno));
  return m2n::OkStatus();
}

}  // namespace moe
