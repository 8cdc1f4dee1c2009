// Safetensors reading: the real needle-llama-tiny checkpoint (sharded) and its reference outputs, and
// files written here byte by byte, well-formed or lying in one specific way each, every lie caught
// with its own message naming the file and the tensor.

#include "runtime/safetensors.h"

#include <gtest/gtest.h>

#include "tests/test_support.h"
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"

namespace retro::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kNeedleDir = retro::test_support::kNeedleModelDir;

using retro::test_support::expect_error;

struct RawTensor {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// Writes `header_len` as the 8-byte little-endian prefix, then `header` and `data` verbatim, so tests
// can make the length lie.
void write_raw(const fs::path& path, uint64_t header_len, const std::string& header, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((header_len >> (8 * i)) & 0xFF));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A well-formed file: tensors packed in order, the header padded with spaces to `pad` bytes.
void write_safetensors(const fs::path& path, const std::vector<RawTensor>& tensors, const json& metadata = nullptr,
                       size_t pad = 8) {
  json header = json::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::vector<uint8_t> data;
  for (const RawTensor& t : tensors) {
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  std::string text = header.dump();
  while (text.size() % pad != 0) text += ' ';
  write_raw(path, text.size(), text, data);
}

class SafetensorsFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("retro_safetensors_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // One header entry written by hand around 8 bytes of data.
  fs::path one_entry(const std::string& entry, size_t data_bytes = 8) {
    const fs::path p = dir_ / "model.safetensors";
    const std::string header = "{\"w\": " + entry + "}";
    write_raw(p, header.size(), header, std::vector<uint8_t>(data_bytes, 0));
    return p;
  }

  fs::path dir_;
};

// A small Llama whose every expected tensor is written as F32 zeros; `edit` may change the list first.
ModelConfig micro_config() {
  return parse_model_config(json{{"model_type", "llama"},
                                 {"vocab_size", 16},
                                 {"hidden_size", 8},
                                 {"intermediate_size", 16},
                                 {"num_hidden_layers", 2},
                                 {"num_attention_heads", 2},
                                 {"num_key_value_heads", 1},
                                 {"torch_dtype", "float32"}});
}

std::vector<RawTensor> micro_tensors(const ModelConfig& c) {
  std::vector<RawTensor> out;
  for (const WeightInfo& w : expected_weights(c)) {
    RawTensor t{w.name, "F32", std::vector<int64_t>(w.shape.begin(), w.shape.end()), {}};
    t.bytes.assign(static_cast<size_t>(w.shape.numel()) * 4, 0);
    out.push_back(std::move(t));
  }
  return out;
}

// ---- the real checkpoint ----------------------------------------------------------------------

TEST(Safetensors, NeedleTinyShardedCheckpointHoldsEveryExpectedTensor) {
  const ModelConfig config = load_model_config(kNeedleDir);
  std::unique_ptr<WeightSource> source = load_weight_source(kNeedleDir);
  auto* sharded = dynamic_cast<ShardedSafetensors*>(source.get());
  ASSERT_NE(sharded, nullptr) << "the directory has an index: it must open as sharded";
  EXPECT_EQ(sharded->shard_paths().size(), 2u);

  const std::vector<WeightInfo> expected = expected_weights(config);
  EXPECT_EQ(expected.size(), 1u + 4 * 9 + 1 + 1);
  for (const WeightInfo& want : expected) {
    ASSERT_TRUE(source->contains(want.name)) << want.name;
    const WeightInfo have = source->info(want.name);
    EXPECT_EQ(have.shape, want.shape) << want.name;
    EXPECT_EQ(have.dtype, DType::kBF16) << want.name;
  }
  EXPECT_NO_THROW(validate_weights(config, *source));
  EXPECT_EQ(source->names().size(), expected.size());

  // bf16 read is the stored bytes; fp32 read is their exact widening.
  const std::string name = "model.layers.2.self_attn.k_proj.weight";
  const Shape shape = source->info(name).shape;
  EXPECT_EQ(shape, (Shape{128, 512}));
  std::vector<bf16> raw(static_cast<size_t>(shape.numel()));
  std::vector<float> wide(raw.size());
  source->read(name, Tensor(raw.data(), DType::kBF16, shape));
  source->read(name, Tensor(wide.data(), DType::kFP32, shape));
  const Tensor view = sharded->mapped(name);
  EXPECT_EQ(std::memcmp(view.data(), raw.data(), raw.size() * 2), 0);
  double sum_sq = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    ASSERT_EQ(wide[i], bf16_to_float(raw[i])) << i;
    sum_sq += static_cast<double>(wide[i]) * wide[i];
  }
  EXPECT_GT(sum_sq, 0.0);  // trained weights, not zeros
}

TEST(Safetensors, ReferenceOutputsAreReadable) {
  SafetensorsFile ref(fs::path(kNeedleDir) / "reference.safetensors");
  for (const char* n : {"logits_short", "logits_1k", "logits_4k"}) {
    ASSERT_TRUE(ref.contains(n)) << n;
    EXPECT_EQ(ref.info(n).dtype, DType::kFP32);
    EXPECT_EQ(ref.info(n).shape, Shape{128});
  }
  EXPECT_EQ(ref.info("ids_short").dtype, DType::kInt32);
  EXPECT_EQ(ref.info("ids_4k").shape, Shape{4096});

  std::vector<int32_t> ids(512);
  ref.read("ids_short", Tensor(ids.data(), DType::kInt32, {512}));
  EXPECT_EQ(ids[0], 1);  // <s>
  std::vector<float> logits(128);
  ref.read("logits_short", Tensor(logits.data(), DType::kFP32, {128}));
  // The answer of the short prompt is "3793012": '3' is id 51 - 29 = 22.
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), 22);
  // Integers are never converted to floats.
  expect_error([&] { ref.read("ids_short", Tensor(logits.data(), DType::kFP32, {128})); }, ErrorKind::kInvalidArgument,
               {"ids_short"});
}

// ---- well-formed files ------------------------------------------------------------------------

TEST_F(SafetensorsFiles, EveryReadableDtypeConvertsOnRead) {
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 448.0f};
  std::vector<bf16> b;
  std::vector<fp16> h;
  std::vector<fp8_e4m3> e;
  for (float v : values) {
    b.push_back(float_to_bf16(v));
    h.push_back(float_to_fp16(v));
    e.push_back(float_to_fp8_e4m3(v));
  }
  write_safetensors(dir_ / "a.safetensors",
                    {{"f32", "F32", {2, 2}, bytes_of(values)},
                     {"bf16", "BF16", {4}, bytes_of(b)},
                     {"f16", "F16", {4}, bytes_of(h)},
                     {"f8", "F8_E4M3", {4}, bytes_of(e)},
                     {"i32", "I32", {3}, bytes_of(std::vector<int32_t>{7, -8, 9})},
                     {"i8", "I8", {2}, bytes_of(std::vector<int8_t>{-3, 4})},
                     {"empty", "F32", {0, 4}, {}}},
                    json{{"format", "pt"}});
  SafetensorsFile f(dir_ / "a.safetensors");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"bf16", "empty", "f16", "f32", "f8", "i32", "i8"}));
  EXPECT_FALSE(f.contains("__metadata__"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.info("f8").dtype, DType::kFP8E4M3);

  std::vector<float> out(4);
  f.read("f32", Tensor(out.data(), DType::kFP32, {2, 2}));
  EXPECT_EQ(out, values);
  f.read("bf16", Tensor(out.data(), DType::kFP32, {4}));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(out[i], bf16_to_float(b[i]));
  f.read("f16", Tensor(out.data(), DType::kFP32, {4}));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(out[i], fp16_to_float(h[i]));
  f.read("f8", Tensor(out.data(), DType::kFP32, {4}));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(out[i], fp8_e4m3_to_float(e[i]));
  std::vector<bf16> narrowed(4);
  f.read("f32", Tensor(narrowed.data(), DType::kBF16, {2, 2}));
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(narrowed[i].bits, b[i].bits);
  std::vector<int32_t> ints(3);
  f.read("i32", Tensor(ints.data(), DType::kInt32, {3}));
  EXPECT_EQ(ints, (std::vector<int32_t>{7, -8, 9}));
  f.read("empty", Tensor(nullptr, DType::kFP32, {0, 4}));

  expect_error([&] { f.read("f32", Tensor(out.data(), DType::kFP32, {4})); }, ErrorKind::kInvalidArgument,
               {"f32", "[2, 2]", "[4]"});
}

TEST_F(SafetensorsFiles, UnalignedHeaderLengthStillReadsCorrectly) {
  const std::vector<float> values = {3.0f, -1.0f, 0.5f};
  write_safetensors(dir_ / "odd.safetensors", {{"x", "F32", {3}, bytes_of(values)}}, nullptr, /*pad=*/1);
  SafetensorsFile f(dir_ / "odd.safetensors");
  std::vector<float> out(3);
  f.read("x", Tensor(out.data(), DType::kFP32, {3}));
  EXPECT_EQ(out, values);
}

// A block (rows, or columns of every row) converts only its elements, aligned or not, and equals
// the same part of a whole read; a block outside the tensor is refused naming it.
TEST_F(SafetensorsFiles, BlocksOfRowsAndColumnsEqualTheSamePartOfAWholeRead) {
  constexpr int64_t kRows = 5, kCols = 6;
  std::vector<bf16> w;
  for (int64_t i = 0; i < kRows * kCols; ++i) w.push_back(float_to_bf16(0.25f * float(i) - 3.0f));
  for (size_t pad : {8, 1}) {  // header padded to 8 bytes (aligned data) or not padded
    write_safetensors(dir_ / "w.safetensors", {{"w", "BF16", {kRows, kCols}, bytes_of(w)}}, nullptr, pad);
    SafetensorsFile f(dir_ / "w.safetensors");
    std::vector<float> rows(3 * kCols), cols(kRows * 3);
    f.read_block("w", {WeightBlock::Axis::kRows, 1, 4}, Tensor(rows.data(), DType::kFP32, {3, kCols}));
    f.read_block("w", {WeightBlock::Axis::kColumns, 2, 5}, Tensor(cols.data(), DType::kFP32, {kRows, 3}));
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t c = 0; c < kCols; ++c)
        EXPECT_EQ(rows[size_t(r * kCols + c)], bf16_to_float(w[size_t((r + 1) * kCols + c)])) << "pad " << pad;
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < 3; ++c)
        EXPECT_EQ(cols[size_t(r * 3 + c)], bf16_to_float(w[size_t(r * kCols + c + 2)])) << "pad " << pad;
    expect_error([&] { f.read_block("w", {WeightBlock::Axis::kRows, 4, 6}, Tensor(rows.data(), DType::kFP32, {2, kCols})); },
                 ErrorKind::kInvalidArgument, {"rows [4, 6)", "'w'", "[0, 5)"});
    expect_error([&] { f.read_block("w", {WeightBlock::Axis::kColumns, 0, 3}, Tensor(rows.data(), DType::kFP32, {3, kCols})); },
                 ErrorKind::kInvalidArgument, {"'w'", "[5, 3]"});
  }
}

TEST_F(SafetensorsFiles, UnreadableDtypeIsValidatedButNotListed) {
  write_safetensors(dir_ / "a.safetensors",
                    {{"ids", "I64", {2}, std::vector<uint8_t>(16, 0)}, {"w", "F32", {1}, std::vector<uint8_t>(4, 0)}});
  SafetensorsFile f(dir_ / "a.safetensors");
  EXPECT_EQ(f.names(), std::vector<std::string>{"w"});
  EXPECT_FALSE(f.contains("ids"));
  expect_error([&] { f.info("ids"); }, ErrorKind::kUnsupported, {"ids", "I64"});
}

// ---- lying files ------------------------------------------------------------------------------

TEST_F(SafetensorsFiles, TruncatedHeaderLengthIsRejected) {
  const fs::path p = dir_ / "model.safetensors";
  { std::ofstream(p, std::ios::binary) << "abcde"; }
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {p.string(), "truncated header", "5 bytes"});
  { std::ofstream(p, std::ios::binary); }
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"truncated header"});
}

TEST_F(SafetensorsFiles, HeaderLengthPastEndOfFileIsRejected) {
  const fs::path p = dir_ / "model.safetensors";
  write_raw(p, 1000, "{}", {});
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {p.string(), "header length 1000", "10 bytes"});
  write_raw(p, ~uint64_t{0}, "{}", {});  // would wrap around if added to the offset
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"runs past the end of the file"});
}

TEST_F(SafetensorsFiles, InvalidJsonHeaderIsRejected) {
  const fs::path p = dir_ / "model.safetensors";
  write_raw(p, 9, "{not json", {});
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {p.string(), "not valid JSON"});
  write_raw(p, 2, "[]", {});
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"JSON object"});
}

TEST_F(SafetensorsFiles, OffsetsPastTheDataAreaAreRejected) {
  const fs::path p = one_entry(R"({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput,
               {p.string(), "'w'", "run past the end of the data area", "8 bytes"});
}

TEST_F(SafetensorsFiles, OverlappingRangesAreRejected) {
  const fs::path p = dir_ / "model.safetensors";
  const std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  write_raw(p, header.size(), header, std::vector<uint8_t>(12, 0));
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'a'", "'b'", "overlap"});
}

TEST_F(SafetensorsFiles, MisalignedRangeIsRejected) {
  const fs::path p = one_entry(R"({"dtype": "F32", "shape": [1], "data_offsets": [2, 6]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "misaligned", "F32"});
}

TEST_F(SafetensorsFiles, ShapeAndByteCountMismatchIsRejected) {
  const fs::path p = one_entry(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "needs 12 bytes", "span 8"});
  // A shape whose byte count overflows 64 bits is the same lie, not a wrap-around.
  one_entry(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "more than 2^64"});
  one_entry(R"({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "non-negative"});
  one_entry(R"({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "end before"});
  one_entry(R"({"dtype": "F32", "shape": [2]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {"'w'", "data_offsets"});
}

TEST_F(SafetensorsFiles, UnknownDtypeIsRejected) {
  const fs::path p = one_entry(R"({"dtype": "F13", "shape": [2], "data_offsets": [0, 8]})", 8);
  expect_error([&] { SafetensorsFile f(p); }, ErrorKind::kInvalidInput, {p.string(), "'w'", "unknown dtype 'F13'"});
}

TEST_F(SafetensorsFiles, MissingTensorIsNamed) {
  write_safetensors(dir_ / "a.safetensors", {{"w", "F32", {1}, std::vector<uint8_t>(4, 0)}});
  SafetensorsFile f(dir_ / "a.safetensors");
  float x = 0;
  expect_error([&] { f.read("lm_head.weight", Tensor(&x, DType::kFP32, {1})); }, ErrorKind::kInvalidInput,
               {"lm_head.weight", "missing", "a.safetensors"});
}

TEST_F(SafetensorsFiles, CorruptedOrTruncatedBytesGiveErrorsNeverCrashes) {
  const ModelConfig c = micro_config();
  const fs::path good = dir_ / "good.safetensors";
  write_safetensors(good, micro_tensors(c), json{{"format", "pt"}});
  std::ifstream in(good, std::ios::binary);
  const std::vector<char> original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(original[i]);

  std::mt19937 rng(1234);
  const fs::path bad = dir_ / "bad.safetensors";
  int rejected = 0;
  for (int trial = 0; trial < 600; ++trial) {
    std::vector<char> bytes = original;
    if (trial % 3 == 0) {
      bytes.resize(std::uniform_int_distribution<size_t>(0, bytes.size() - 1)(rng));
    } else {
      // Corrupt the length prefix and the header, where every lie lives.
      const int flips = std::uniform_int_distribution<int>(1, 3)(rng);
      for (int k = 0; k < flips; ++k) {
        const size_t at = std::uniform_int_distribution<size_t>(0, 8 + header_len - 1)(rng);
        bytes[at] = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      }
    }
    { std::ofstream(bad, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size())); }
    try {
      SafetensorsFile f(bad);
      for (const std::string& name : f.names()) {
        const WeightInfo info = f.info(name);
        if (!is_floating(info.dtype)) continue;
        std::vector<float> out(static_cast<size_t>(info.shape.numel()));
        f.read(name, Tensor(out.data(), DType::kFP32, info.shape));
      }
    } catch (const Error& e) {
      ASSERT_TRUE(e.kind() == ErrorKind::kInvalidInput || e.kind() == ErrorKind::kUnsupported) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 300);  // most corruptions are caught; the rest are harmless (a changed digit of data)
}

// ---- against a config -------------------------------------------------------------------------

TEST_F(SafetensorsFiles, CompleteCheckpointValidatesAgainstItsConfig) {
  const ModelConfig c = micro_config();
  write_safetensors(dir_ / "model.safetensors", micro_tensors(c));
  std::unique_ptr<WeightSource> source = load_weight_source(dir_);
  EXPECT_NE(dynamic_cast<SafetensorsFile*>(source.get()), nullptr);
  EXPECT_NO_THROW(validate_weights(c, *source));
}

TEST_F(SafetensorsFiles, MissingTensorAgainstTheConfigIsNamed) {
  const ModelConfig c = micro_config();
  std::vector<RawTensor> tensors = micro_tensors(c);
  std::erase_if(tensors, [](const RawTensor& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  write_safetensors(dir_ / "model.safetensors", tensors);
  SafetensorsFile f(dir_ / "model.safetensors");
  expect_error([&] { validate_weights(c, f); }, ErrorKind::kInvalidInput,
               {"missing tensor 'model.layers.1.mlp.up_proj.weight'", "[16, 8]"});
}

TEST_F(SafetensorsFiles, WrongShapeAgainstTheConfigIsNamed) {
  const ModelConfig c = micro_config();
  std::vector<RawTensor> tensors = micro_tensors(c);
  for (RawTensor& t : tensors) {
    if (t.name == "model.layers.0.self_attn.k_proj.weight") {  // [kv 4, hidden 8] written as [8, 8]
      t.shape = {8, 8};
      t.bytes.assign(8 * 8 * 4, 0);
    }
  }
  write_safetensors(dir_ / "model.safetensors", tensors);
  SafetensorsFile f(dir_ / "model.safetensors");
  expect_error([&] { validate_weights(c, f); }, ErrorKind::kInvalidInput,
               {"model.layers.0.self_attn.k_proj.weight", "[8, 8]", "expects [4, 8]"});
}

TEST_F(SafetensorsFiles, IntegerWeightAgainstTheConfigIsRejected) {
  const ModelConfig c = micro_config();
  std::vector<RawTensor> tensors = micro_tensors(c);
  for (RawTensor& t : tensors)
    if (t.name == "model.norm.weight") t.dtype = "I32";
  write_safetensors(dir_ / "model.safetensors", tensors);
  SafetensorsFile f(dir_ / "model.safetensors");
  expect_error([&] { validate_weights(c, f); }, ErrorKind::kInvalidInput, {"model.norm.weight", "int32"});
}

// ---- sharded ----------------------------------------------------------------------------------

TEST_F(SafetensorsFiles, ShardedCheckpointReadsAcrossShards) {
  const ModelConfig c = micro_config();
  std::vector<RawTensor> tensors = micro_tensors(c);
  std::vector<RawTensor> first(tensors.begin(), tensors.begin() + 5), second(tensors.begin() + 5, tensors.end());
  write_safetensors(dir_ / "model-00001-of-00002.safetensors", first);
  write_safetensors(dir_ / "model-00002-of-00002.safetensors", second);
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (const RawTensor& t : first) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const RawTensor& t : second) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  // The index wins over a stray single file.
  write_safetensors(dir_ / "model.safetensors", {{"w", "F32", {1}, std::vector<uint8_t>(4, 0)}});

  std::unique_ptr<WeightSource> source = load_weight_source(dir_);
  ASSERT_NE(dynamic_cast<ShardedSafetensors*>(source.get()), nullptr);
  EXPECT_EQ(source->names().size(), tensors.size());
  EXPECT_NO_THROW(validate_weights(c, *source));
}

TEST_F(SafetensorsFiles, IndexNamingAMissingShardIsRejected) {
  write_safetensors(dir_ / "model-00001-of-00002.safetensors", {{"a", "F32", {1}, std::vector<uint8_t>(4, 0)}});
  json index = {{"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}};
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput,
               {"model.safetensors.index.json", "'b'", "model-00002-of-00002.safetensors", "does not exist"});
}

TEST_F(SafetensorsFiles, IndexMappingATensorToTheWrongShardIsRejected) {
  write_safetensors(dir_ / "s1.safetensors", {{"a", "F32", {1}, std::vector<uint8_t>(4, 0)}});
  write_safetensors(dir_ / "s2.safetensors", {{"b", "F32", {1}, std::vector<uint8_t>(4, 0)}});
  std::ofstream(dir_ / "model.safetensors.index.json")
      << json{{"weight_map", {{"a", "s2.safetensors"}, {"b", "s2.safetensors"}}}}.dump();
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput, {"'a'", "s2.safetensors", "does not hold"});
}

TEST_F(SafetensorsFiles, IndexEscapingTheDirectoryOrMalformedIsRejected) {
  std::ofstream(dir_ / "model.safetensors.index.json") << json{{"weight_map", {{"a", "../x.safetensors"}}}}.dump();
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput, {"'a'", "../x.safetensors"});
  std::ofstream(dir_ / "model.safetensors.index.json") << json{{"metadata", {}}}.dump();
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput, {"weight_map"});
  std::ofstream(dir_ / "model.safetensors.index.json") << "{\"weight_map\": ";
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput, {"not valid JSON"});
}

TEST_F(SafetensorsFiles, DirectoryWithoutCheckpointSaysWhatItLookedFor) {
  expect_error([&] { load_weight_source(dir_); }, ErrorKind::kInvalidInput, {"model.safetensors.index.json"});
  expect_error([&] { load_weight_source(dir_ / "absent"); }, ErrorKind::kIo, {"absent"});
}

TEST(ReadWeights, FillsEveryDestinationWithoutDrawingOffTerminal) {
  std::unique_ptr<WeightSource> needle = load_weight_source(kNeedleDir);
  const std::vector<std::string> names = needle->names();
  std::vector<std::vector<float>> storage;
  storage.reserve(names.size());
  testing::internal::CaptureStderr();
  read_weights(
      *needle, names,
      [&](const WeightInfo& info) {
        storage.emplace_back(static_cast<size_t>(info.shape.numel()), std::nanf(""));
        return Tensor(storage.back().data(), DType::kFP32, info.shape);
      },
      /*progress_min_bytes=*/0);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");  // stderr is not a terminal under the test runner
  ASSERT_EQ(storage.size(), names.size());
  for (const auto& t : storage)
    for (float v : t) ASSERT_FALSE(std::isnan(v));
}

}  // namespace
}  // namespace retro::runtime
