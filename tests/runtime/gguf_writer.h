#pragma once
// Builds GGUF files byte by byte for tests: metadata of any type, tensor infos and data, with the
// alignment padding of the format, so readers can be tested on well-formed and broken files.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace retro::runtime::testing {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3, uint64_t alignment = 32) : version_(version), alignment_(alignment) {}

  // Raw little-endian appends into the metadata section.
  template <typename T>
  static void put(std::vector<uint8_t>& out, T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  static void put_string(std::vector<uint8_t>& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out.insert(out.end(), s.begin(), s.end());
  }

  template <typename T>
  void kv(const std::string& key, uint32_t type, T value) {
    put_string(meta_, key);
    put<uint32_t>(meta_, type);
    put<T>(meta_, value);
    ++n_kv_;
  }
  void kv_u32(const std::string& key, uint32_t v) { kv(key, 4, v); }
  void kv_i32(const std::string& key, int32_t v) { kv(key, 5, v); }
  void kv_f32(const std::string& key, float v) { kv(key, 6, v); }
  void kv_bool(const std::string& key, bool v) { kv(key, 7, static_cast<uint8_t>(v)); }
  void kv_string(const std::string& key, const std::string& v) {
    put_string(meta_, key);
    put<uint32_t>(meta_, 8);
    put_string(meta_, v);
    ++n_kv_;
  }
  void kv_strings(const std::string& key, const std::vector<std::string>& v) {
    put_string(meta_, key);
    put<uint32_t>(meta_, 9);
    put<uint32_t>(meta_, 8);
    put<uint64_t>(meta_, v.size());
    for (const auto& s : v) put_string(meta_, s);
    ++n_kv_;
  }
  template <typename T>
  void kv_array(const std::string& key, uint32_t element_type, const std::vector<T>& v) {
    put_string(meta_, key);
    put<uint32_t>(meta_, 9);
    put<uint32_t>(meta_, element_type);
    put<uint64_t>(meta_, v.size());
    for (const T& x : v) put<T>(meta_, x);
    ++n_kv_;
  }
  // Any pre-encoded entry (for malformed cases).
  void kv_raw(const std::vector<uint8_t>& bytes, uint64_t count = 1) {
    meta_.insert(meta_.end(), bytes.begin(), bytes.end());
    n_kv_ += count;
  }

  // dims innermost first, as stored. Data is placed at the next aligned offset.
  void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, const std::vector<uint8_t>& data) {
    while (data_.size() % alignment_ != 0) data_.push_back(0);
    Tensor t{name, std::move(dims), type, data_.size()};
    data_.insert(data_.end(), data.begin(), data.end());
    tensors_.push_back(std::move(t));
  }
  template <typename T>
  void tensor_of(const std::string& name, std::vector<uint64_t> dims, uint32_t type, const std::vector<T>& values) {
    std::vector<uint8_t> bytes(values.size() * sizeof(T));
    std::memcpy(bytes.data(), values.data(), bytes.size());
    tensor(name, std::move(dims), type, bytes);
  }
  // Overrides the recorded offset of the last tensor (relative to the data section).
  void set_last_offset(uint64_t offset) { tensors_.back().offset = offset; }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    out.insert(out.end(), {'G', 'G', 'U', 'F'});
    put<uint32_t>(out, version_);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, n_kv_);
    out.insert(out.end(), meta_.begin(), meta_.end());
    for (const Tensor& t : tensors_) {
      put_string(out, t.name);
      put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out, t.offset);
    }
    while (out.size() % alignment_ != 0) out.push_back(0);
    out.insert(out.end(), data_.begin(), data_.end());
    return out;
  }

  static std::filesystem::path write(const std::vector<uint8_t>& bytes, const std::string& file_name) {
    const auto path = std::filesystem::temp_directory_path() / file_name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  std::filesystem::path write(const std::string& file_name) const { return write(bytes(), file_name); }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;
  };
  uint32_t version_;
  uint64_t alignment_;
  std::vector<uint8_t> meta_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
  std::vector<uint8_t> data_;
};

}  // namespace retro::runtime::testing
