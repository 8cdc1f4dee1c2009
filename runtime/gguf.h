#pragma once
// GGUF, llama.cpp's single-file checkpoint: typed metadata, tensor infos, and tensor data (plain or
// block-quantized), read through a memory map with every count, length and offset checked against
// the file, so a truncated or inconsistent file is a retro::Error (kInvalidInput) naming the problem.
//
// GgufWeightSource serves the tensors under Hugging Face names, dequantized, in PyTorch dimension
// order, with llama.cpp's Q/K row permutation undone; gguf_model_config and gguf_tokenizer turn the
// metadata into the ModelConfig and Tokenizer the rest of the runtime reads.
//
// Supported: versions 2 and 3, little-endian; tensor types F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (the layouts of ggml-common.h).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "runtime/core/tensor.h"
#include "runtime/model_config.h"
#include "runtime/tokenizer.h"
#include "runtime/weight_source.h"

namespace retro::runtime {

namespace impl {
class MappedFile;
}

// ggml tensor types (the numbering of the file format).
enum class GgufType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct GgufTypeTraits {
  const char* name;        // "Q4_K"
  int64_t block_elements;  // elements per block (1 for plain types)
  size_t block_bytes;      // bytes per block
  bool dequantizable;      // gguf_dequantize accepts it
};
// nullopt for type ids this reader does not know (their sizes cannot be checked).
std::optional<GgufTypeTraits> gguf_type_traits(uint32_t type);
const char* gguf_type_name(GgufType type);

// Converts n elements (a multiple of the block size) of raw GGUF data to fp32, bf16 or fp16.
void gguf_dequantize(GgufType type, const void* src, int64_t n, void* dst, DType dst_dtype);

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* gguf_value_type_name(GgufValueType type);

// One metadata value. Accessors check the type and throw retro::Error (kInvalidInput) naming the
// expected and actual types; integer accessors accept any integer type whose value fits.
class GgufValue {
 public:
  using Array = std::vector<GgufValue>;
  using Storage = std::variant<uint64_t, int64_t, double, bool, std::string, Array>;

  GgufValue() = default;
  GgufValue(GgufValueType type, Storage value, GgufValueType array_type = GgufValueType::kUint8)
      : type_(type), array_type_(array_type), value_(std::move(value)) {}

  GgufValueType type() const { return type_; }
  GgufValueType array_type() const { return array_type_; }  // element type of an array
  bool is_integer() const;
  int64_t as_int() const;
  double as_float() const;  // float32/float64, or an integer
  bool as_bool() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  std::vector<std::string> as_strings() const;
  std::vector<int64_t> as_ints() const;
  std::vector<float> as_floats() const;

 private:
  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType array_type_ = GgufValueType::kUint8;
  Storage value_ = uint64_t{0};
};

struct GgufTensorInfo {
  std::string name;
  GgufType type;
  std::vector<int64_t> dims;  // as stored: innermost (contiguous) dimension first
  Shape shape;                // PyTorch order: dims reversed
  int64_t numel = 0;
  uint64_t offset = 0;  // absolute offset of the data in the file
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  // Maps and validates the file. Throws retro::Error: kIo when it cannot be read, kInvalidInput
  // naming the problem (with the byte offset) when it is not a well-formed GGUF file, kUnsupported
  // for big-endian files, version 1 and tensor types this reader does not know.
  static std::shared_ptr<const GgufFile> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const;
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Throws retro::Error (kInvalidInput) naming the key when it is missing or of the wrong type.
  const GgufValue& get(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::string get_string(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const GgufTensorInfo& tensor(std::string_view name) const;  // throws kInvalidInput naming it
  std::span<const uint8_t> tensor_bytes(const GgufTensorInfo& info) const;
  // Row `row` of the tensor seen as [numel / dims[0], dims[0]], converted to dtype into dst.
  void read_row(const GgufTensorInfo& info, int64_t row, void* dst, DType dtype) const;
  // The whole tensor into dst: a contiguous host tensor of shape info.shape, fp32 / bf16 / fp16.
  void read(const GgufTensorInfo& info, const Tensor& dst) const;

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();

 private:
  GgufFile() = default;
  void parse();

  std::unique_ptr<impl::MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight", "token_embd.weight" ->
// "model.embed_tokens.weight", "output.weight" -> "lm_head.weight", ...; names without a Hugging
// Face counterpart (rope_freqs.weight) come back unchanged.
std::string gguf_to_hf_name(std::string_view gguf_name);

// ModelConfig from {arch}.* metadata (llama, qwen2, mistral). vocab_size from {arch}.vocab_size or
// the tokenizer token list; tie_word_embeddings when there is no output.weight. Quantized files
// report dtype bf16 (what the runtime computes in); F32 / F16 / BF16 files report theirs.
ModelConfig gguf_model_config(const GgufFile& file);

// The tokenizer of tokenizer.ggml.*: model "gpt2" is byte-level BPE with the merges list and the
// pre-tokenizer regexes chosen by tokenizer.ggml.pre (see gguf.cpp for the table); model "llama"
// is SentencePiece BPE whose merges are derived from the token scores. BOS is prepended when
// tokenizer.ggml.add_bos_token says so.
Tokenizer gguf_tokenizer(const GgufFile& file);

class GgufWeightSource : public WeightSource {
 public:
  // undo_qk_permutation: llama.cpp's converter interleaves the rotary halves of the Q and K rows of
  // Llama-architecture models; undoing it gives the rows Hugging Face's rotate-half RoPE expects.
  // Default: on for general.architecture "llama", off otherwise.
  explicit GgufWeightSource(std::shared_ptr<const GgufFile> file, std::optional<bool> undo_qk_permutation = {});
  static std::unique_ptr<GgufWeightSource> open(const std::filesystem::path& path);

  std::vector<std::string> names() const override;
  bool contains(const std::string& name) const override;
  WeightInfo info(const std::string& name) const override;
  void read(const std::string& name, const Tensor& dst) const override;

  const GgufFile& file() const { return *file_; }
  const GgufTensorInfo& gguf_info(const std::string& name) const;

 private:
  std::shared_ptr<const GgufFile> file_;
  std::vector<std::string> names_;                      // file order
  std::unordered_map<std::string, size_t> by_hf_name_;  // index into file_->tensors()
  bool undo_permutation_ = false;
  int num_heads_ = 0;
  int num_kv_heads_ = 0;
};

}  // namespace retro::runtime
