#pragma once
// A read-only memory map of a whole file; the bytes stay valid while the object lives. Move-only.

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace retro::runtime::impl {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws retro::Error (kIo) naming the path when it cannot be opened or mapped. An empty file maps
  // to size() == 0 and data() == nullptr.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void reset() noexcept;

  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace retro::runtime::impl
