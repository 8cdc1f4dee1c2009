#pragma once
// Safetensors checkpoints: one memory-mapped .safetensors file, or a sharded checkpoint described by
// model.safetensors.index.json. Both are WeightSources.
//
// Everything a file claims is checked when it is opened, before any tensor byte is touched: the 8-byte
// little-endian header length against the file size, the JSON header, every dtype string, every
// shape * element size against its byte span, every span inside the data area, aligned to its
// element size and disjoint from the others. A truncated or lying file is a retro::Error
// (kInvalidInput) naming the file and the tensor, never an out-of-bounds read.
//
// Readable dtypes: BF16, F16, F32, F8_E4M3 (converted between each other by retro::convert_host on
// read), I32 and I8 (read as themselves). Tensors of other valid safetensors dtypes (I64, F64, BOOL,
// ...) are validated but not listed; reading one names its dtype.

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/weight_source.h"

namespace retro::runtime {

class SafetensorsFile : public WeightSource {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile() override;
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;

  std::vector<std::string> names() const override;  // sorted
  bool contains(const std::string& name) const override;
  WeightInfo info(const std::string& name) const override;
  void read(const std::string& name, const Tensor& dst) const override;
  // Converts only the block's elements.
  void read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const override;

  // Read-only view of the stored bytes, valid while this object lives (no copy, no conversion).
  // Throws kUnsupported when the bytes are not aligned to their element size in memory.
  Tensor mapped(const std::string& name) const;
  // The header's "__metadata__" (string values; other JSON values in their serialised form).
  const std::map<std::string, std::string>& metadata() const;
  const std::filesystem::path& path() const;
  size_t file_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class ShardedSafetensors : public WeightSource {
 public:
  // `index_path`: a model.safetensors.index.json whose "weight_map" names, for every tensor, a shard
  // file in the same directory. Every shard is opened (and validated) here.
  explicit ShardedSafetensors(const std::filesystem::path& index_path);
  ~ShardedSafetensors() override;

  std::vector<std::string> names() const override;  // sorted
  bool contains(const std::string& name) const override;
  WeightInfo info(const std::string& name) const override;
  void read(const std::string& name, const Tensor& dst) const override;
  // Converts only the block's elements.
  void read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const override;

  Tensor mapped(const std::string& name) const;
  const std::vector<std::filesystem::path>& shard_paths() const;
  size_t file_bytes() const;  // all shards together

 private:
  const SafetensorsFile& shard_of(const std::string& name) const;

  std::filesystem::path index_path_;
  std::vector<std::filesystem::path> shard_paths_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> shard_index_;  // tensor name -> position in shards_
};

// Opens a safetensors checkpoint: `dir_or_file` is a model directory (model.safetensors.index.json
// wins over model.safetensors), an index .json, or a single .safetensors file.
std::unique_ptr<WeightSource> load_weight_source(const std::filesystem::path& dir_or_file);

}  // namespace retro::runtime
