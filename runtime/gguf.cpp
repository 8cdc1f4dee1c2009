#include "runtime/gguf.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "runtime/core/error.h"
#include "runtime/impl/ggml_quants.h"
#include "runtime/impl/mapped_file.h"
#include "runtime/impl/unicode.h"

namespace retro::runtime {

// ---------------------------------------------------------------- tensor types

std::optional<GgufTypeTraits> gguf_type_traits(uint32_t type) {
  using namespace impl;
  switch (static_cast<GgufType>(type)) {
    case GgufType::kF32: return GgufTypeTraits{"F32", 1, 4, true};
    case GgufType::kF16: return GgufTypeTraits{"F16", 1, 2, true};
    case GgufType::kBF16: return GgufTypeTraits{"BF16", 1, 2, true};
    case GgufType::kQ4_0: return GgufTypeTraits{"Q4_0", kQK, kQ4_0Bytes, true};
    case GgufType::kQ4_1: return GgufTypeTraits{"Q4_1", kQK, kQ4_1Bytes, true};
    case GgufType::kQ5_0: return GgufTypeTraits{"Q5_0", kQK, kQ5_0Bytes, true};
    case GgufType::kQ5_1: return GgufTypeTraits{"Q5_1", kQK, kQ5_1Bytes, true};
    case GgufType::kQ8_0: return GgufTypeTraits{"Q8_0", kQK, kQ8_0Bytes, true};
    case GgufType::kQ8_1: return GgufTypeTraits{"Q8_1", kQK, kQ8_1Bytes, true};
    case GgufType::kQ2_K: return GgufTypeTraits{"Q2_K", kQK_K, kQ2_KBytes, true};
    case GgufType::kQ3_K: return GgufTypeTraits{"Q3_K", kQK_K, kQ3_KBytes, true};
    case GgufType::kQ4_K: return GgufTypeTraits{"Q4_K", kQK_K, kQ4_KBytes, true};
    case GgufType::kQ5_K: return GgufTypeTraits{"Q5_K", kQK_K, kQ5_KBytes, true};
    case GgufType::kQ6_K: return GgufTypeTraits{"Q6_K", kQK_K, kQ6_KBytes, true};
    case GgufType::kQ8_K: return GgufTypeTraits{"Q8_K", kQK_K, kQ8_KBytes, true};
    case GgufType::kI8: return GgufTypeTraits{"I8", 1, 1, false};
    case GgufType::kI16: return GgufTypeTraits{"I16", 1, 2, false};
    case GgufType::kI32: return GgufTypeTraits{"I32", 1, 4, false};
    case GgufType::kI64: return GgufTypeTraits{"I64", 1, 8, false};
    case GgufType::kF64: return GgufTypeTraits{"F64", 1, 8, false};
  }
  return std::nullopt;
}

const char* gguf_type_name(GgufType type) {
  auto traits = gguf_type_traits(static_cast<uint32_t>(type));
  return traits ? traits->name : "unknown";
}

namespace {

// Dequantizes into fp32; callers convert to narrower types afterwards.
void dequantize_to_float(GgufType type, const uint8_t* src, int64_t n, float* dst) {
  using namespace impl;
  switch (type) {
    case GgufType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgufType::kF16: convert_host(src, DType::kFP16, dst, DType::kFP32, static_cast<size_t>(n)); return;
    case GgufType::kBF16: convert_host(src, DType::kBF16, dst, DType::kFP32, static_cast<size_t>(n)); return;
    case GgufType::kQ4_0: dequantize_q4_0(src, dst, n / kQK); return;
    case GgufType::kQ4_1: dequantize_q4_1(src, dst, n / kQK); return;
    case GgufType::kQ5_0: dequantize_q5_0(src, dst, n / kQK); return;
    case GgufType::kQ5_1: dequantize_q5_1(src, dst, n / kQK); return;
    case GgufType::kQ8_0: dequantize_q8_0(src, dst, n / kQK); return;
    case GgufType::kQ8_1: dequantize_q8_1(src, dst, n / kQK); return;
    case GgufType::kQ2_K: dequantize_q2_k(src, dst, n / kQK_K); return;
    case GgufType::kQ3_K: dequantize_q3_k(src, dst, n / kQK_K); return;
    case GgufType::kQ4_K: dequantize_q4_k(src, dst, n / kQK_K); return;
    case GgufType::kQ5_K: dequantize_q5_k(src, dst, n / kQK_K); return;
    case GgufType::kQ6_K: dequantize_q6_k(src, dst, n / kQK_K); return;
    case GgufType::kQ8_K: dequantize_q8_k(src, dst, n / kQK_K); return;
    default: break;
  }
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "GGUF tensor type {} cannot be dequantized", gguf_type_name(type));
}

}  // namespace

void gguf_dequantize(GgufType type, const void* src, int64_t n, void* dst, DType dst_dtype) {
  auto traits = gguf_type_traits(static_cast<uint32_t>(type));
  RETRO_CHECK_KIND(traits && traits->dequantizable, ErrorKind::kUnsupported,
                   "GGUF tensor type {} cannot be dequantized", static_cast<uint32_t>(type));
  RETRO_CHECK(n >= 0 && n % traits->block_elements == 0, "{} elements of {} are not whole blocks of {}", n,
              traits->name, traits->block_elements);
  RETRO_CHECK(dst_dtype == DType::kFP32 || dst_dtype == DType::kBF16 || dst_dtype == DType::kFP16,
              "GGUF tensors dequantize to fp32, bf16 or fp16, not {}", dtype_name(dst_dtype));
  const auto* in = static_cast<const uint8_t*>(src);
  if (dst_dtype == DType::kFP32) {
    dequantize_to_float(type, in, n, static_cast<float*>(dst));
    return;
  }
  // Convert in chunks so a large tensor never needs a full fp32 copy.
  constexpr int64_t kChunk = 64 * 1024;  // a multiple of every block size
  std::vector<float> tmp(static_cast<size_t>(std::min(n, kChunk)));
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t done = 0; done < n; done += kChunk) {
    const int64_t count = std::min(kChunk, n - done);
    dequantize_to_float(type, in + static_cast<size_t>(done / traits->block_elements) * traits->block_bytes, count,
                        tmp.data());
    convert_host(tmp.data(), DType::kFP32, out + static_cast<size_t>(done) * dtype_size(dst_dtype), dst_dtype,
                 static_cast<size_t>(count));
  }
}

// ---------------------------------------------------------------- metadata values

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  return std::holds_alternative<uint64_t>(value_) || std::holds_alternative<int64_t>(value_);
}

int64_t GgufValue::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&value_)) {
    RETRO_CHECK_INPUT(*u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                      "GGUF value {} does not fit in int64", *u);
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value_)) return *i;
  RETRO_THROW_KIND(ErrorKind::kInvalidInput, "GGUF value is {}, expected an integer", gguf_value_type_name(type_));
}

double GgufValue::as_float() const {
  if (const auto* d = std::get_if<double>(&value_)) return *d;
  if (is_integer()) return static_cast<double>(as_int());
  RETRO_THROW_KIND(ErrorKind::kInvalidInput, "GGUF value is {}, expected a number", gguf_value_type_name(type_));
}

bool GgufValue::as_bool() const {
  const auto* b = std::get_if<bool>(&value_);
  RETRO_CHECK_INPUT(b != nullptr, "GGUF value is {}, expected bool", gguf_value_type_name(type_));
  return *b;
}

const std::string& GgufValue::as_string() const {
  const auto* s = std::get_if<std::string>(&value_);
  RETRO_CHECK_INPUT(s != nullptr, "GGUF value is {}, expected string", gguf_value_type_name(type_));
  return *s;
}

const GgufValue::Array& GgufValue::as_array() const {
  const auto* a = std::get_if<Array>(&value_);
  RETRO_CHECK_INPUT(a != nullptr, "GGUF value is {}, expected an array", gguf_value_type_name(type_));
  return *a;
}

std::vector<std::string> GgufValue::as_strings() const {
  std::vector<std::string> out;
  out.reserve(as_array().size());
  for (const GgufValue& v : as_array()) out.push_back(v.as_string());
  return out;
}

std::vector<int64_t> GgufValue::as_ints() const {
  std::vector<int64_t> out;
  out.reserve(as_array().size());
  for (const GgufValue& v : as_array()) out.push_back(v.as_int());
  return out;
}

std::vector<float> GgufValue::as_floats() const {
  std::vector<float> out;
  out.reserve(as_array().size());
  for (const GgufValue& v : as_array()) out.push_back(static_cast<float>(v.as_float()));
  return out;
}

// ---------------------------------------------------------------- container

namespace {

// Bounds-checked little-endian reader over the mapped header; every failure names the file, the
// offset and what was being read.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, std::string file) : data_(data), size_(size), file_(std::move(file)) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(size_t bytes, const std::string& what) const {
    RETRO_CHECK_INPUT(bytes <= remaining(), "GGUF {}: truncated at byte {} reading {} ({} bytes needed, {} left)",
                      file_, pos_, what, bytes, remaining());
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string read_string(const std::string& what) {
    const uint64_t length = read<uint64_t>(what + " length");
    RETRO_CHECK_INPUT(length <= remaining(), "GGUF {}: {} at byte {} claims {} bytes but only {} remain", file_, what,
                      pos_ - 8, length, remaining());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(length));
    pos_ += static_cast<size_t>(length);
    return s;
  }
  const std::string& file() const { return file_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string file_;
};

size_t min_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kString:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
    case GgufValueType::kArray: return 12;
  }
  return 1;
}

GgufValueType read_value_type(Reader& r, const std::string& what) {
  const uint32_t t = r.read<uint32_t>(what + " type");
  RETRO_CHECK_INPUT(t <= 12, "GGUF {}: {} has unknown value type {} at byte {}", r.file(), what, t, r.pos() - 4);
  return static_cast<GgufValueType>(t);
}

GgufValue read_value(Reader& r, GgufValueType type, const std::string& what, int depth) {
  switch (type) {
    case GgufValueType::kUint8: return {type, uint64_t{r.read<uint8_t>(what)}};
    case GgufValueType::kInt8: return {type, int64_t{r.read<int8_t>(what)}};
    case GgufValueType::kUint16: return {type, uint64_t{r.read<uint16_t>(what)}};
    case GgufValueType::kInt16: return {type, int64_t{r.read<int16_t>(what)}};
    case GgufValueType::kUint32: return {type, uint64_t{r.read<uint32_t>(what)}};
    case GgufValueType::kInt32: return {type, int64_t{r.read<int32_t>(what)}};
    case GgufValueType::kUint64: return {type, r.read<uint64_t>(what)};
    case GgufValueType::kInt64: return {type, r.read<int64_t>(what)};
    case GgufValueType::kFloat32: return {type, double{r.read<float>(what)}};
    case GgufValueType::kFloat64: return {type, r.read<double>(what)};
    case GgufValueType::kBool: {
      const uint8_t b = r.read<uint8_t>(what);
      RETRO_CHECK_INPUT(b <= 1, "GGUF {}: {} is a bool of value {}", r.file(), what, b);
      return {type, b == 1};
    }
    case GgufValueType::kString: return {type, r.read_string(what)};
    case GgufValueType::kArray: {
      RETRO_CHECK_INPUT(depth < 4, "GGUF {}: {} nests arrays too deeply", r.file(), what);
      const GgufValueType element = read_value_type(r, what + " element");
      const uint64_t count = r.read<uint64_t>(what + " count");
      RETRO_CHECK_INPUT(count <= r.remaining() / min_value_bytes(element),
                        "GGUF {}: {} claims {} elements of {} but only {} bytes remain", r.file(), what, count,
                        gguf_value_type_name(element), r.remaining());
      GgufValue::Array items;
      items.reserve(static_cast<size_t>(count));
      for (uint64_t i = 0; i < count; ++i) items.push_back(read_value(r, element, what, depth + 1));
      return {type, std::move(items), element};
    }
  }
  RETRO_THROW_KIND(ErrorKind::kInternal, "unhandled GGUF value type");
}

}  // namespace

GgufFile::~GgufFile() = default;

const std::filesystem::path& GgufFile::path() const { return file_->path(); }

std::shared_ptr<const GgufFile> GgufFile::open(const std::filesystem::path& path) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->file_ = std::make_unique<impl::MappedFile>(path);
  file->parse();
  return file;
}

void GgufFile::parse() {
  const std::string name = file_->path().string();
  Reader r(file_->data(), file_->size(), name);
  r.need(4, "the magic");
  RETRO_CHECK_INPUT(std::memcmp(file_->data(), "GGUF", 4) == 0, "{} is not a GGUF file (no 'GGUF' magic)", name);
  r.read<uint32_t>("magic");
  version_ = r.read<uint32_t>("version");
  RETRO_CHECK_KIND((version_ & 0xFFFF) != 0 || version_ == 0, ErrorKind::kUnsupported,
                   "GGUF {}: big-endian files are not supported (version field {:#x})", name, version_);
  RETRO_CHECK_KIND(version_ == 2 || version_ == 3, ErrorKind::kUnsupported,
                   "GGUF {}: version {} is not supported (2 and 3 are)", name, version_);
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Each metadata entry needs at least 13 bytes and each tensor info at least 24: a count past that
  // cannot be honest, and checking it first keeps a lying header from allocating huge tables.
  RETRO_CHECK_INPUT(n_kv <= r.remaining() / 13, "GGUF {}: metadata count {} cannot fit in the {} bytes of the file",
                    name, n_kv, file_->size());
  RETRO_CHECK_INPUT(n_tensors <= r.remaining() / 24, "GGUF {}: tensor count {} cannot fit in the {} bytes of the file",
                    name, n_tensors, file_->size());

  metadata_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string(fmt::format("metadata key #{}", i));
    const GgufValueType type = read_value_type(r, "metadata '" + key + "'");
    GgufValue value = read_value(r, type, "metadata '" + key + "'", 0);
    RETRO_CHECK_INPUT(metadata_index_.emplace(key, metadata_.size()).second, "GGUF {}: metadata key '{}' appears twice",
                      name, key);
    metadata_.emplace_back(std::move(key), std::move(value));
  }
  if (const GgufValue* a = find("general.alignment")) {
    RETRO_CHECK_INPUT(a->is_integer(), "GGUF {}: general.alignment is {}, expected an integer", name,
                      gguf_value_type_name(a->type()));
    const int64_t v = a->as_int();
    RETRO_CHECK_INPUT(v > 0 && v <= (1 << 30) && (v & (v - 1)) == 0,
                      "GGUF {}: general.alignment {} is not a power of two", name, v);
    alignment_ = static_cast<uint64_t>(v);
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.read_string(fmt::format("tensor #{} name", i));
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = r.read<uint32_t>(what + " dimension count");
    RETRO_CHECK_INPUT(n_dims >= 1 && n_dims <= 4, "GGUF {}: {} has {} dimensions (1 to 4 allowed)", name, what, n_dims);
    t.numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = r.read<uint64_t>(what + " dimension");
      RETRO_CHECK_INPUT(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                            (dim == 0 || static_cast<uint64_t>(t.numel) <=
                                             static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim),
                        "GGUF {}: {} has dimensions too large to address", name, what);
      t.dims.push_back(static_cast<int64_t>(dim));
      t.numel *= static_cast<int64_t>(dim);
    }
    for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) t.shape.push_back(*it);
    const uint32_t type = r.read<uint32_t>(what + " type");
    const auto traits = gguf_type_traits(type);
    RETRO_CHECK_KIND(traits.has_value(), ErrorKind::kUnsupported, "GGUF {}: {} has tensor type {}, which this reader "
                     "does not know", name, what, type);
    t.type = static_cast<GgufType>(type);
    RETRO_CHECK_INPUT(t.dims[0] % traits->block_elements == 0,
                      "GGUF {}: {} has a row of {} elements, not a multiple of the {} block size {}", name, what,
                      t.dims[0], traits->name, traits->block_elements);
    t.nbytes = static_cast<uint64_t>(t.numel / traits->block_elements) * traits->block_bytes;
    t.offset = r.read<uint64_t>(what + " offset");
    RETRO_CHECK_INPUT(t.offset % alignment_ == 0, "GGUF {}: {} offset {} is not a multiple of the alignment {}", name,
                      what, t.offset, alignment_);
    RETRO_CHECK_INPUT(tensor_index_.emplace(t.name, tensors_.size()).second, "GGUF {}: tensor '{}' appears twice", name,
                      t.name);
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_bytes = file_->size() >= data_offset_ ? file_->size() - data_offset_ : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (GgufTensorInfo& t : tensors_) {
    RETRO_CHECK_INPUT(t.offset <= data_bytes && t.nbytes <= data_bytes - t.offset,
                      "GGUF {}: tensor '{}' ({} bytes at data offset {}) extends past the end of the file ({} data "
                      "bytes): the file is truncated or its header is wrong",
                      name, t.name, t.nbytes, t.offset, data_bytes);
    t.offset += data_offset_;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    RETRO_CHECK_INPUT(by_offset[i - 1]->offset + by_offset[i - 1]->nbytes <= by_offset[i]->offset,
                      "GGUF {}: tensors '{}' and '{}' overlap", name, by_offset[i - 1]->name, by_offset[i]->name);
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  RETRO_CHECK_INPUT(v != nullptr, "GGUF {}: metadata '{}' is missing", path().string(), key);
  return *v;
}

namespace {
template <typename Fn>
auto with_key(const GgufFile& f, std::string_view key, Fn&& fn) {
  try {
    return fn(f.get(key));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput || e.message().find(key) != std::string::npos) throw;
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "GGUF {}: metadata '{}': {}", f.path().string(), key, e.message());
  }
}
}  // namespace

int64_t GgufFile::get_int(std::string_view key) const {
  return with_key(*this, key, [](const GgufValue& v) { return v.as_int(); });
}
double GgufFile::get_float(std::string_view key) const {
  return with_key(*this, key, [](const GgufValue& v) { return v.as_float(); });
}
bool GgufFile::get_bool(std::string_view key) const {
  return with_key(*this, key, [](const GgufValue& v) { return v.as_bool(); });
}
std::string GgufFile::get_string(std::string_view key) const {
  return with_key(*this, key, [](const GgufValue& v) { return v.as_string(); });
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  RETRO_CHECK_INPUT(t != nullptr, "GGUF {}: no tensor '{}'", path().string(), name);
  return *t;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& info) const {
  return {file_->data() + info.offset, static_cast<size_t>(info.nbytes)};
}

void GgufFile::read_row(const GgufTensorInfo& info, int64_t row, void* dst, DType dtype) const {
  const int64_t row_elements = info.dims[0];
  const int64_t rows = row_elements == 0 ? 0 : info.numel / row_elements;
  RETRO_CHECK(row >= 0 && row < rows, "row {} of tensor '{}' is outside [0, {})", row, info.name, rows);
  const auto traits = *gguf_type_traits(static_cast<uint32_t>(info.type));
  const uint64_t row_bytes = static_cast<uint64_t>(row_elements / traits.block_elements) * traits.block_bytes;
  gguf_dequantize(info.type, file_->data() + info.offset + static_cast<uint64_t>(row) * row_bytes, row_elements, dst,
                  dtype);
}

void GgufFile::read(const GgufTensorInfo& info, const Tensor& dst) const {
  RETRO_CHECK(dst.shape() == info.shape, "tensor '{}' has shape {}, destination has {}", info.name, info.shape.str(),
              dst.shape().str());
  RETRO_CHECK(dst.is_contiguous() && dst.device().is_cpu(), "tensor '{}' must be read into a contiguous host tensor",
              info.name);
  gguf_dequantize(info.type, file_->data() + info.offset, info.numel, dst.data(), dst.dtype());
}

// ---------------------------------------------------------------- names and config

std::string gguf_to_hf_name(std::string_view name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (name.substr(0, 4) != "blk.") return std::string(name);
  const size_t dot = name.find('.', 4);
  if (dot == std::string_view::npos) return std::string(name);
  const std::string_view layer = name.substr(4, dot - 4);
  if (layer.empty() || !std::all_of(layer.begin(), layer.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::string(name);
  }
  const std::string_view rest = name.substr(dot + 1);
  const size_t last = rest.rfind('.');
  if (last == std::string_view::npos) return std::string(name);
  const std::string_view part = rest.substr(0, last);
  const std::string_view suffix = rest.substr(last);  // ".weight" / ".bias"
  static const std::map<std::string_view, std::string_view> kParts = {
      {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},     {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},      {"attn_norm", "input_layernorm"},
      {"ffn_norm", "post_attention_layernorm"},
  };
  auto it = kParts.find(part);
  if (it == kParts.end()) return std::string(name);
  return fmt::format("model.layers.{}.{}{}", layer, it->second, suffix);
}

ModelConfig gguf_model_config(const GgufFile& file) {
  const std::string arch = file.get_string("general.architecture");
  static const std::map<std::string, std::pair<const char*, const char*>> kArchitectures = {
      {"llama", {"LlamaForCausalLM", "llama"}},
      {"qwen2", {"Qwen2ForCausalLM", "qwen2"}},
      {"mistral", {"MistralForCausalLM", "mistral"}},
  };
  auto arch_it = kArchitectures.find(arch);
  RETRO_CHECK_KIND(arch_it != kArchitectures.end(), ErrorKind::kUnsupported,
                   "GGUF {}: architecture '{}' is not supported (llama, qwen2, mistral are)", file.path().string(), arch);
  auto key = [&](const char* suffix) { return arch + "." + suffix; };

  ModelConfig c;
  c.architecture = arch_it->second.first;
  c.model_type = arch_it->second.second;
  c.hidden_size = static_cast<int>(file.get_int(key("embedding_length")));
  c.intermediate_size = static_cast<int>(file.get_int(key("feed_forward_length")));
  c.num_layers = static_cast<int>(file.get_int(key("block_count")));
  c.num_heads = static_cast<int>(file.get_int(key("attention.head_count")));
  c.num_kv_heads = file.has(key("attention.head_count_kv")) ? static_cast<int>(file.get_int(key("attention.head_count_kv")))
                                                            : c.num_heads;
  RETRO_CHECK_INPUT(c.num_heads > 0, "GGUF {}: {} is {}", file.path().string(), key("attention.head_count"), c.num_heads);
  c.head_dim = file.has(key("attention.key_length")) ? static_cast<int>(file.get_int(key("attention.key_length")))
                                                     : c.hidden_size / c.num_heads;
  c.max_position_embeddings = static_cast<int>(file.get_int(key("context_length")));
  c.rms_norm_eps = static_cast<float>(file.get_float(key("attention.layer_norm_rms_epsilon")));
  if (file.has(key("rope.freq_base"))) c.rope_theta = static_cast<float>(file.get_float(key("rope.freq_base")));
  if (file.has(key("rope.dimension_count"))) {
    const int64_t rot = file.get_int(key("rope.dimension_count"));
    RETRO_CHECK_KIND(rot == c.head_dim, ErrorKind::kUnsupported,
                     "GGUF {}: partial rotary embeddings ({} of head_dim {}) are not supported", file.path().string(),
                     rot, c.head_dim);
  }
  if (file.has(key("rope.scaling.type"))) {
    const std::string type = file.get_string(key("rope.scaling.type"));
    if (type == "linear") c.rope_scaling.type = RopeScalingType::kLinear;
    else if (type == "yarn") c.rope_scaling.type = RopeScalingType::kYarn;
    else if (type != "none") {
      RETRO_THROW_KIND(ErrorKind::kUnsupported, "GGUF {}: rope scaling '{}' is not supported", file.path().string(),
                       type);
    }
    if (file.has(key("rope.scaling.factor"))) c.rope_scaling.factor = static_cast<float>(file.get_float(key("rope.scaling.factor")));
    if (file.has(key("rope.scaling.original_context_length"))) {
      c.rope_scaling.original_max_position_embeddings =
          static_cast<int>(file.get_int(key("rope.scaling.original_context_length")));
    }
  }
  if (file.has(key("vocab_size"))) {
    c.vocab_size = static_cast<int>(file.get_int(key("vocab_size")));
  } else {
    c.vocab_size = static_cast<int>(file.get("tokenizer.ggml.tokens").as_array().size());
  }
  c.tie_word_embeddings = file.find_tensor("output.weight") == nullptr;
  c.attention_bias = file.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.mlp_bias = file.find_tensor("blk.0.ffn_up.bias") != nullptr;
  c.dtype = DType::kBF16;
  if (file.has("general.file_type")) {
    const int64_t ft = file.get_int("general.file_type");
    if (ft == 0) c.dtype = DType::kFP32;
    else if (ft == 1) c.dtype = DType::kFP16;
  }
  if (file.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = static_cast<int>(file.get_int("tokenizer.ggml.bos_token_id"));
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (!file.has(k)) continue;
    const int id = static_cast<int>(file.get_int(k));
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) c.eos_token_ids.push_back(id);
  }
  return c;
}

// ---------------------------------------------------------------- tokenizer

namespace {

// Pre-tokenizer splits by tokenizer.ggml.pre, as the Hugging Face tokenizer.json files of those
// model families define them (each regex is applied in turn, matches kept as pieces).
constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> pre_tokenizer_regexes(const std::string& pre, const std::string& file) {
  if (pre == "default" || pre == "gpt2" || pre == "gpt-2") return {kGpt2Regex};
  if (pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3" || pre == "smaug-bpe") return {kLlama3Regex};
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") return {kQwen2Regex};
  // SmolLM / StarCoder: digits one by one (HF's Digits(individual_digits)), then GPT-2's split.
  if (pre == "smollm" || pre == "starcoder" || pre == "refact") return {R"(\p{N})", kGpt2Regex};
  RETRO_THROW_KIND(ErrorKind::kUnsupported,
                   "GGUF {}: tokenizer.ggml.pre '{}' is not supported (default, gpt2, llama-bpe, llama3, qwen2, smollm, "
                   "starcoder, refact are)",
                   file, pre);
}

enum TokenType : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

}  // namespace

Tokenizer gguf_tokenizer(const GgufFile& file) {
  using nlohmann::json;
  const std::string path = file.path().string();
  const std::string model = file.get_string("tokenizer.ggml.model");
  const std::vector<std::string> tokens = file.get("tokenizer.ggml.tokens").as_strings();
  std::vector<int64_t> types(tokens.size(), kNormal);
  if (file.has("tokenizer.ggml.token_type")) {
    types = file.get("tokenizer.ggml.token_type").as_ints();
    RETRO_CHECK_INPUT(types.size() == tokens.size(), "GGUF {}: {} token types for {} tokens", path, types.size(),
                      tokens.size());
  }
  auto optional_id = [&](const char* k) -> std::optional<int32_t> {
    if (!file.has(k)) return std::nullopt;
    const int64_t id = file.get_int(k);
    RETRO_CHECK_INPUT(id >= 0 && static_cast<size_t>(id) < tokens.size(), "GGUF {}: {} = {} is not a token id", path,
                      k, id);
    return static_cast<int32_t>(id);
  };
  const auto bos = optional_id("tokenizer.ggml.bos_token_id");
  const auto unk = optional_id("tokenizer.ggml.unknown_token_id");

  json j;
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    vocab[tokens[i]] = static_cast<int32_t>(i);
    if (types[i] == kControl || types[i] == kUserDefined) {
      added.push_back({{"id", static_cast<int32_t>(i)}, {"content", tokens[i]}, {"special", types[i] == kControl}});
    }
  }
  RETRO_CHECK_INPUT(vocab.size() == tokens.size(), "GGUF {}: tokenizer.ggml.tokens lists a token twice", path);
  j["added_tokens"] = added;
  bool add_bos;
  if (model == "gpt2") {
    json merges = json::array();
    for (const std::string& m : file.get("tokenizer.ggml.merges").as_strings()) merges.push_back(m);
    j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
    const std::string pre = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "default";
    json steps = json::array();
    for (const std::string& regex : pre_tokenizer_regexes(pre, path)) {
      steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}});
    }
    steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}});
    j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
    j["decoder"] = {{"type", "ByteLevel"}};
    add_bos = file.has("tokenizer.ggml.add_bos_token") && file.get_bool("tokenizer.ggml.add_bos_token");
  } else if (model == "llama") {
    // SentencePiece BPE merges the adjacent pair whose concatenation scores highest, leftmost on
    // ties: every split of a scored token into two tokens is a merge ranked by that score.
    const std::vector<float> scores = file.get("tokenizer.ggml.scores").as_floats();
    RETRO_CHECK_INPUT(scores.size() == tokens.size(), "GGUF {}: {} scores for {} tokens", path, scores.size(),
                      tokens.size());
    std::unordered_map<std::string_view, size_t> mergeable;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (types[i] == kNormal || types[i] == kUserDefined) mergeable.emplace(tokens[i], i);
    }
    std::vector<size_t> order(tokens.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    json merges = json::array();
    json ranks = json::array();
    int32_t rank = 0;
    for (size_t i : order) {
      if (types[i] != kNormal && types[i] != kUserDefined) continue;
      const std::string& t = tokens[i];
      bool any = false;
      for (std::string_view ch : impl::utf8_chars(t)) {
        const size_t split = static_cast<size_t>(ch.data() - t.data());
        if (split == 0) continue;
        const std::string left = t.substr(0, split), right = t.substr(split);
        if (mergeable.count(left) && mergeable.count(right)) {
          merges.push_back(json::array({left, right}));
          ranks.push_back(rank);
          any = true;
        }
      }
      if (any) ++rank;
    }
    j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"merge_ranks", ranks}, {"byte_fallback", true}};
    if (unk) j["model"]["unk_token"] = tokens[static_cast<size_t>(*unk)];
    const bool prefix = !file.has("tokenizer.ggml.add_space_prefix") || file.get_bool("tokenizer.ggml.add_space_prefix");
    const std::string S = "\xE2\x96\x81";
    json normalizers = json::array();
    if (prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", S}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", S}});
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", normalizers}};
    json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", S}}}, {"content", " "}},
                                 {{"type", "ByteFallback"}},
                                 {{"type", "Fuse"}}});
    if (prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    j["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
    add_bos = !file.has("tokenizer.ggml.add_bos_token") || file.get_bool("tokenizer.ggml.add_bos_token");
  } else {
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "GGUF {}: tokenizer.ggml.model '{}' is not supported (gpt2, llama are)",
                     path, model);
  }
  if (add_bos && bos) {
    const std::string& name = tokens[static_cast<size_t>(*bos)];
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", name}, {"type_id", 0}}}},
                                       {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                           {"special_tokens", {{name, {{"id", name}, {"ids", {*bos}}, {"tokens", {name}}}}}}};
  }
  Tokenizer tokenizer = Tokenizer::from_json(j);
  tokenizer.set_bos_id(bos);
  std::vector<int32_t> eos;
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (auto id = optional_id(k); id && std::find(eos.begin(), eos.end(), *id) == eos.end()) eos.push_back(*id);
  }
  tokenizer.set_eos_ids(std::move(eos));
  return tokenizer;
}

// ---------------------------------------------------------------- weight source

GgufWeightSource::GgufWeightSource(std::shared_ptr<const GgufFile> file, std::optional<bool> undo_qk_permutation)
    : file_(std::move(file)) {
  const std::string arch = file_->has("general.architecture") ? file_->get_string("general.architecture") : "";
  undo_permutation_ = undo_qk_permutation.value_or(arch == "llama");
  if (undo_permutation_) {
    num_heads_ = static_cast<int>(file_->get_int(arch + ".attention.head_count"));
    num_kv_heads_ = file_->has(arch + ".attention.head_count_kv")
                        ? static_cast<int>(file_->get_int(arch + ".attention.head_count_kv"))
                        : num_heads_;
  }
  const auto& tensors = file_->tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::string hf = gguf_to_hf_name(tensors[i].name);
    RETRO_CHECK_INPUT(by_hf_name_.emplace(hf, i).second, "GGUF {}: two tensors map to '{}'", file_->path().string(), hf);
    names_.push_back(std::move(hf));
  }
}

std::unique_ptr<GgufWeightSource> GgufWeightSource::open(const std::filesystem::path& path) {
  return std::make_unique<GgufWeightSource>(GgufFile::open(path));
}

std::vector<std::string> GgufWeightSource::names() const { return names_; }

bool GgufWeightSource::contains(const std::string& name) const { return by_hf_name_.count(name) > 0; }

const GgufTensorInfo& GgufWeightSource::gguf_info(const std::string& name) const {
  auto it = by_hf_name_.find(name);
  RETRO_CHECK_INPUT(it != by_hf_name_.end(), "GGUF {}: no tensor '{}'", file_->path().string(), name);
  return file_->tensors()[it->second];
}

WeightInfo GgufWeightSource::info(const std::string& name) const {
  const GgufTensorInfo& t = gguf_info(name);
  DType dtype = DType::kFP32;
  if (t.type == GgufType::kF16) dtype = DType::kFP16;
  if (t.type == GgufType::kBF16) dtype = DType::kBF16;
  return WeightInfo{name, dtype, t.shape};
}

void GgufWeightSource::read(const std::string& name, const Tensor& dst) const {
  const GgufTensorInfo& t = gguf_info(name);
  RETRO_CHECK(dst.shape() == t.shape, "weight '{}' has shape {}, destination has {}", name, t.shape.str(),
              dst.shape().str());
  RETRO_CHECK(dst.is_contiguous() && dst.device().is_cpu(), "weight '{}' must be read into a contiguous host tensor",
              name);
  int n_head = 0;
  if (undo_permutation_) {
    const bool q = name.find(".self_attn.q_proj.") != std::string::npos;
    const bool k = name.find(".self_attn.k_proj.") != std::string::npos;
    n_head = q ? num_heads_ : k ? num_kv_heads_ : 0;
  }
  if (n_head == 0) {
    file_->read(t, dst);
    return;
  }
  // The converter stored row h*hd + 2*i + half at Hugging Face row h*hd + half*hd/2 + i, for
  // head h, rotary pair i and half 0/1; read each Hugging Face row from where it was stored.
  const int64_t out_rows = t.shape[0];
  RETRO_CHECK_INPUT(out_rows % (2 * n_head) == 0, "GGUF weight '{}': {} rows do not split into {} heads of pairs",
                    name, out_rows, n_head);
  const int64_t hd = out_rows / n_head;
  const int64_t row_elements = t.shape.size() == 1 ? 1 : t.dims[0];
  auto stored_row = [&](int64_t r) {
    const int64_t h = r / hd, rem = r % hd;
    const int64_t half = rem / (hd / 2), i = rem % (hd / 2);
    return h * hd + 2 * i + half;
  };
  auto* out = static_cast<uint8_t*>(dst.data());
  const size_t elem = dtype_size(dst.dtype());
  if (t.shape.size() == 1) {
    std::vector<float> all(static_cast<size_t>(t.numel));
    gguf_dequantize(t.type, file_->tensor_bytes(t).data(), t.numel, all.data(), DType::kFP32);
    for (int64_t r = 0; r < out_rows; ++r) {
      convert_host(&all[static_cast<size_t>(stored_row(r))], DType::kFP32, out + static_cast<size_t>(r) * elem,
                   dst.dtype(), 1);
    }
    return;
  }
  RETRO_CHECK_INPUT(t.shape.size() == 2, "GGUF weight '{}' has {} dimensions, expected 2", name, t.shape.size());
  for (int64_t r = 0; r < out_rows; ++r) {
    file_->read_row(t, stored_row(r), out + static_cast<size_t>(r * row_elements) * elem, dst.dtype());
  }
}

}  // namespace retro::runtime
