#include "runtime/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/impl/mapped_file.h"

namespace retro::runtime {

using nlohmann::json;

namespace {

// The official reader refuses headers above 100 MB; so do we, before parsing untrusted JSON.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct StoredDType {
  const char* name;
  size_t size;
  bool readable;
  DType dtype;  // meaningful when readable
};

// Every dtype string the safetensors format defines with a whole-byte element; the readable ones map
// to runtime dtypes.
constexpr StoredDType kStoredDTypes[] = {
    {"BF16", 2, true, DType::kBF16},       {"F16", 2, true, DType::kFP16},  {"F32", 4, true, DType::kFP32},
    {"F8_E4M3", 1, true, DType::kFP8E4M3}, {"I32", 4, true, DType::kInt32}, {"I8", 1, true, DType::kInt8},
    {"BOOL", 1, false, DType::kInt8},      {"U8", 1, false, DType::kInt8},  {"F8_E5M2", 1, false, DType::kInt8},
    {"F8_E8M0", 1, false, DType::kInt8},   {"I16", 2, false, DType::kInt8}, {"U16", 2, false, DType::kInt8},
    {"U32", 4, false, DType::kInt8},       {"I64", 8, false, DType::kInt8}, {"U64", 8, false, DType::kInt8},
    {"F64", 8, false, DType::kInt8},       {"C64", 8, false, DType::kInt8},
};

const StoredDType* find_stored_dtype(const std::string& name) {
  for (const StoredDType& d : kStoredDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

struct Entry {
  WeightInfo info;
  const StoredDType* stored = nullptr;
  uint64_t begin = 0;  // byte offsets inside the data area
  uint64_t end = 0;
};

// A JSON number that is a non-negative integer, or nullopt-like failure via the flag.
bool as_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

void check_destination(const std::string& where, const WeightInfo& info, const Tensor& dst) {
  RETRO_CHECK(dst.device().is_cpu() && dst.is_contiguous(),
              "{}: tensor '{}' must be read into a contiguous host "
              "tensor, got {}",
              where, info.name, dst.str());
  RETRO_CHECK(dst.shape() == info.shape, "{}: tensor '{}' has shape {}, destination has shape {}", where, info.name,
              info.shape.str(), dst.shape().str());
  const bool both_floating = is_floating(info.dtype) && is_floating(dst.dtype());
  RETRO_CHECK(both_floating || info.dtype == dst.dtype(), "{}: tensor '{}' is stored as {} and cannot be read as {}",
              where, info.name, dtype_name(info.dtype), dtype_name(dst.dtype()));
}

}  // namespace

struct SafetensorsFile::Impl {
  std::filesystem::path path;
  impl::MappedFile file;
  uint64_t data_start = 0;  // 8 + header length
  std::unordered_map<std::string, Entry> entries;
  std::map<std::string, std::string> metadata;
  std::vector<std::string> names;  // readable tensors, sorted

  std::string where() const { return path.string(); }

  const Entry& entry(const std::string& name) const {
    auto it = entries.find(name);
    RETRO_CHECK_INPUT(it != entries.end(), "{}: tensor '{}' is missing (the file holds {} tensors)", where(), name,
                      entries.size());
    RETRO_CHECK_KIND(it->second.stored->readable, ErrorKind::kUnsupported,
                     "{}: tensor '{}' is stored as {}, which the runtime does not read", where(), name,
                     it->second.stored->name);
    return it->second;
  }
  const uint8_t* bytes(const Entry& e) const { return file.data() + data_start + e.begin; }

  void parse();
  void parse_entry(const std::string& name, const json& value, uint64_t data_bytes);
};

void SafetensorsFile::Impl::parse() {
  const size_t size = file.size();
  RETRO_CHECK_INPUT(size >= 8, "{}: truncated header: the file is {} bytes, shorter than the 8-byte header length",
                    where(), size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file.data()[i];  // little-endian
  RETRO_CHECK_INPUT(header_len <= size - 8,
                    "{}: header length {} runs past the end of the file ({} bytes; "
                    "truncated, or not a safetensors file)",
                    where(), header_len, size);
  RETRO_CHECK_INPUT(header_len <= kMaxHeaderBytes, "{}: header length {} exceeds the {}-byte limit", where(),
                    header_len, kMaxHeaderBytes);
  data_start = 8 + header_len;
  const uint64_t data_bytes = size - data_start;

  json header;
  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: header is not valid JSON: {}", where(), e.what());
  }
  RETRO_CHECK_INPUT(header.is_object(), "{}: header must be a JSON object, got {}", where(), header.type_name());

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      RETRO_CHECK_INPUT(value.is_object(), "{}: __metadata__ must be an object, got {}", where(), value.type_name());
      for (const auto& [k, v] : value.items()) metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    parse_entry(name, value, data_bytes);
  }

  // Disjoint byte ranges: sort by start and compare neighbours (empty tensors occupy nothing).
  std::vector<const Entry*> order;
  for (const auto& [name, e] : entries)
    if (e.end > e.begin) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->info.name < b->info.name;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const Entry& a = *order[i - 1];
    const Entry& b = *order[i];
    RETRO_CHECK_INPUT(b.begin >= a.end, "{}: tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap", where(),
                      a.info.name, a.begin, a.end, b.info.name, b.begin, b.end);
  }

  for (const auto& [name, e] : entries)
    if (e.stored->readable) names.push_back(name);
  std::sort(names.begin(), names.end());
}

void SafetensorsFile::Impl::parse_entry(const std::string& name, const json& value, uint64_t data_bytes) {
  const std::string w = where();
  RETRO_CHECK_INPUT(value.is_object(), "{}: tensor '{}': entry must be an object, got {}", w, name, value.dump());
  auto dtype_it = value.find("dtype");
  auto shape_it = value.find("shape");
  auto offsets_it = value.find("data_offsets");
  RETRO_CHECK_INPUT(dtype_it != value.end() && dtype_it->is_string(), "{}: tensor '{}': missing or non-string 'dtype'",
                    w, name);
  RETRO_CHECK_INPUT(shape_it != value.end() && shape_it->is_array(), "{}: tensor '{}': missing or non-list 'shape'", w,
                    name);
  RETRO_CHECK_INPUT(offsets_it != value.end() && offsets_it->is_array() && offsets_it->size() == 2,
                    "{}: tensor '{}': 'data_offsets' must be a list of two byte offsets", w, name);

  Entry e;
  const std::string dtype_str = dtype_it->get<std::string>();
  e.stored = find_stored_dtype(dtype_str);
  RETRO_CHECK_INPUT(e.stored != nullptr, "{}: tensor '{}': unknown dtype '{}'", w, name, dtype_str);

  RETRO_CHECK_INPUT(shape_it->size() <= static_cast<size_t>(kMaxDims),
                    "{}: tensor '{}': shape {} has more than {} "
                    "dimensions",
                    w, name, shape_it->dump(), kMaxDims);
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *shape_it) {
    uint64_t dim = 0;
    RETRO_CHECK_INPUT(as_u64(d, &dim) && dim <= static_cast<uint64_t>(INT64_MAX),
                      "{}: tensor '{}': shape {} must hold non-negative integers", w, name, shape_it->dump());
    e.info.shape.push_back(static_cast<int64_t>(dim));
    overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
  }
  uint64_t needed = 0;
  overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(e.stored->size), &needed);

  RETRO_CHECK_INPUT(as_u64((*offsets_it)[0], &e.begin) && as_u64((*offsets_it)[1], &e.end),
                    "{}: tensor '{}': data_offsets {} must be non-negative integers", w, name, offsets_it->dump());
  RETRO_CHECK_INPUT(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", w, name, e.begin,
                    e.end);
  RETRO_CHECK_INPUT(!overflow && needed == e.end - e.begin,
                    "{}: tensor '{}': shape {} of {} needs {} bytes but "
                    "data_offsets [{}, {}] span {}",
                    w, name, e.info.shape.str(), dtype_str,
                    overflow ? std::string("more than 2^64") : std::to_string(needed), e.begin, e.end, e.end - e.begin);
  RETRO_CHECK_INPUT(e.end <= data_bytes,
                    "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data area "
                    "({} bytes; the file may be truncated)",
                    w, name, e.begin, e.end, data_bytes);
  // Empty tensors occupy no bytes, so their offset cannot be misaligned.
  RETRO_CHECK_INPUT(e.begin == e.end || e.begin % e.stored->size == 0,
                    "{}: tensor '{}': data offset {} is misaligned for {} "
                    "({}-byte elements)",
                    w, name, e.begin, dtype_str, e.stored->size);

  e.info.name = name;
  e.info.dtype = e.stored->dtype;
  entries.emplace(name, std::move(e));
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->file = impl::MappedFile(path);
  impl_->parse();
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

std::vector<std::string> SafetensorsFile::names() const { return impl_->names; }

bool SafetensorsFile::contains(const std::string& name) const {
  auto it = impl_->entries.find(name);
  return it != impl_->entries.end() && it->second.stored->readable;
}

WeightInfo SafetensorsFile::info(const std::string& name) const { return impl_->entry(name).info; }

namespace {

// n stored elements at src -> out as `to`. A header whose length is not a multiple of the element
// size leaves the data unaligned in memory: those convert through an aligned staging block instead
// of reading through a misaligned pointer.
void convert_stored(const uint8_t* src, DType from, size_t elem, void* out, DType to, size_t n) {
  if (reinterpret_cast<uintptr_t>(src) % elem == 0) {
    convert_host(src, from, out, to, n);
    return;
  }
  constexpr size_t kBlock = 1 << 16;
  std::vector<uint64_t> staging(kBlock * elem / sizeof(uint64_t) + 1);
  auto* dst = static_cast<uint8_t*>(out);
  const size_t out_elem = dtype_size(to);
  for (size_t done = 0; done < n; done += kBlock) {
    const size_t count = std::min(kBlock, n - done);
    std::memcpy(staging.data(), src + done * elem, count * elem);
    convert_host(staging.data(), from, dst + done * out_elem, to, count);
  }
}

}  // namespace

void SafetensorsFile::read(const std::string& name, const Tensor& dst) const {
  const Entry& e = impl_->entry(name);
  check_destination(impl_->where(), e.info, dst);
  convert_stored(impl_->bytes(e), e.info.dtype, e.stored->size, dst.data(), dst.dtype(),
                 static_cast<size_t>(e.info.shape.numel()));
}

void SafetensorsFile::read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const {
  const Entry& e = impl_->entry(name);
  const auto [rows, columns] = check_block(name, block, dst);
  const size_t elem = e.stored->size, out_elem = dst.element_size();
  const uint8_t* src = impl_->bytes(e);
  auto* out = static_cast<uint8_t*>(dst.data());
  if (block.axis == WeightBlock::Axis::kRows) {
    convert_stored(src + size_t(block.begin * columns) * elem, e.info.dtype, elem, out, dst.dtype(),
                   size_t((block.end - block.begin) * columns));
    return;
  }
  const size_t width = size_t(block.end - block.begin);
  for (int64_t r = 0; r < rows; ++r)
    convert_stored(src + size_t(r * columns + block.begin) * elem, e.info.dtype, elem, out + size_t(r) * width * out_elem,
                   dst.dtype(), width);
}

Tensor SafetensorsFile::mapped(const std::string& name) const {
  const Entry& e = impl_->entry(name);
  const uint8_t* src = impl_->bytes(e);
  RETRO_CHECK_KIND(e.begin == e.end || reinterpret_cast<uintptr_t>(src) % e.stored->size == 0, ErrorKind::kUnsupported,
                   "{}: tensor '{}' is not aligned in memory; read() it instead", impl_->where(), name);
  return Tensor(const_cast<uint8_t*>(src), e.info.dtype, e.info.shape);
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }
const std::filesystem::path& SafetensorsFile::path() const { return impl_->path; }
size_t SafetensorsFile::file_bytes() const { return impl_->file.size(); }

// ---------------------------------------------------------------------------------------------------

ShardedSafetensors::ShardedSafetensors(const std::filesystem::path& index_path) : index_path_(index_path) {
  const std::string where = index_path.string();
  std::ifstream in(index_path);
  RETRO_CHECK_KIND(in.good(), ErrorKind::kIo, "cannot open checkpoint index {}", where);
  std::stringstream text;
  text << in.rdbuf();
  json index;
  try {
    index = json::parse(text.str());
  } catch (const json::exception& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: not valid JSON: {}", where, e.what());
  }
  RETRO_CHECK_INPUT(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                    "{}: missing the 'weight_map' object", where);
  const json& weight_map = index["weight_map"];
  RETRO_CHECK_INPUT(!weight_map.empty(), "{}: 'weight_map' is empty", where);

  const std::filesystem::path dir = index_path.parent_path();
  std::map<std::string, size_t> shard_by_file;
  for (const auto& [name, value] : weight_map.items()) {
    RETRO_CHECK_INPUT(value.is_string(), "{}: weight_map entry for tensor '{}' must be a file name, got {}", where,
                      name, value.dump());
    const std::string file = value.get<std::string>();
    const std::filesystem::path rel(file);
    // Shards live beside the index; a path escaping the directory is a lying index, not a layout.
    const bool escapes =
        rel.is_absolute() || std::any_of(rel.begin(), rel.end(), [](const auto& part) { return part == ".."; });
    RETRO_CHECK_INPUT(!file.empty() && !escapes,
                      "{}: tensor '{}' maps to shard '{}', which is not a file name inside "
                      "the checkpoint directory",
                      where, name, file);
    auto it = shard_by_file.find(file);
    if (it == shard_by_file.end()) {
      const std::filesystem::path shard_path = dir / rel;
      RETRO_CHECK_INPUT(std::filesystem::is_regular_file(shard_path),
                        "{}: tensor '{}' maps to shard '{}', but {} "
                        "does not exist",
                        where, name, file, shard_path.string());
      it = shard_by_file.emplace(file, shard_paths_.size()).first;
      shard_paths_.push_back(shard_path);
    }
    shard_index_[name] = it->second;
  }
  for (const std::filesystem::path& p : shard_paths_) shards_.push_back(std::make_unique<SafetensorsFile>(p));
  for (const auto& [name, shard] : shard_index_) {
    RETRO_CHECK_INPUT(shards_[shard]->contains(name), "{}: tensor '{}' maps to shard '{}', which does not hold it",
                      where, name, shard_paths_[shard].filename().string());
  }
  RETRO_LOG_DEBUG("opened {} ({} tensors in {} shards)", where, shard_index_.size(), shards_.size());
}

ShardedSafetensors::~ShardedSafetensors() = default;

std::vector<std::string> ShardedSafetensors::names() const {
  std::vector<std::string> out;
  out.reserve(shard_index_.size());
  for (const auto& [name, shard] : shard_index_) out.push_back(name);
  return out;
}

bool ShardedSafetensors::contains(const std::string& name) const { return shard_index_.count(name) != 0; }

const SafetensorsFile& ShardedSafetensors::shard_of(const std::string& name) const {
  auto it = shard_index_.find(name);
  RETRO_CHECK_INPUT(it != shard_index_.end(), "{}: tensor '{}' is missing from the weight_map ({} tensors)",
                    index_path_.string(), name, shard_index_.size());
  return *shards_[it->second];
}

WeightInfo ShardedSafetensors::info(const std::string& name) const { return shard_of(name).info(name); }

void ShardedSafetensors::read(const std::string& name, const Tensor& dst) const { shard_of(name).read(name, dst); }
void ShardedSafetensors::read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const {
  shard_of(name).read_block(name, block, dst);
}

Tensor ShardedSafetensors::mapped(const std::string& name) const { return shard_of(name).mapped(name); }

const std::vector<std::filesystem::path>& ShardedSafetensors::shard_paths() const { return shard_paths_; }

size_t ShardedSafetensors::file_bytes() const {
  size_t total = 0;
  for (const auto& s : shards_) total += s->file_bytes();
  return total;
}

std::unique_ptr<WeightSource> load_weight_source(const std::filesystem::path& dir_or_file) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(dir_or_file)) {
    if (dir_or_file.extension() == ".json") return std::make_unique<ShardedSafetensors>(dir_or_file);
    return std::make_unique<SafetensorsFile>(dir_or_file);
  }
  RETRO_CHECK_KIND(fs::is_directory(dir_or_file), ErrorKind::kIo, "no checkpoint at {}: not a file or directory",
                   dir_or_file.string());
  const fs::path index = dir_or_file / "model.safetensors.index.json";
  if (fs::is_regular_file(index)) return std::make_unique<ShardedSafetensors>(index);
  const fs::path single = dir_or_file / "model.safetensors";
  if (fs::is_regular_file(single)) return std::make_unique<SafetensorsFile>(single);
  RETRO_THROW_KIND(ErrorKind::kInvalidInput,
                   "no safetensors checkpoint in {} (looked for "
                   "model.safetensors.index.json and model.safetensors)",
                   dir_or_file.string());
}

}  // namespace retro::runtime
