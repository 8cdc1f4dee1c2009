// GGUF container: metadata of every type, tensor infos and data, Hugging Face names, the Q/K row
// permutation, config and tokenizer translation, on files built byte by byte; truncated, lying and
// corrupted files are rejected with errors naming the problem.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <cmath>
#include <cstring>
#include <random>

#include "runtime/core/error.h"
#include "runtime/gguf.h"
#include "tests/runtime/gguf_writer.h"

namespace retro::runtime {
namespace {

using testing::GgufWriter;

std::string unique_name(const std::string& suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string("retro_") + info->name() + "_" + suffix + ".gguf";
}

using retro::test_support::error_of;

std::vector<uint8_t> q8_0_rows(const std::vector<std::vector<int8_t>>& rows, float d) {
  std::vector<uint8_t> out;
  for (const auto& r : rows) {
    for (size_t b = 0; b < r.size() / 32; ++b) {
      const uint16_t h = float_to_fp16(d).bits;
      out.push_back(static_cast<uint8_t>(h & 0xFF));
      out.push_back(static_cast<uint8_t>(h >> 8));
      for (int j = 0; j < 32; ++j) out.push_back(static_cast<uint8_t>(r[b * 32 + static_cast<size_t>(j)]));
    }
  }
  return out;
}

TEST(GgufFile, ReadsMetadataOfEveryTypeAndTensors) {
  for (uint32_t version : {2u, 3u}) {
    GgufWriter w(version, 64);
    w.kv_u32("general.alignment", 64);
    w.kv<uint8_t>("u8", 0, 200);
    w.kv<int8_t>("i8", 1, -5);
    w.kv<uint16_t>("u16", 2, 60000);
    w.kv<int16_t>("i16", 3, -30000);
    w.kv_i32("i32", -7);
    w.kv_f32("f32", 0.25f);
    w.kv_bool("flag", true);
    w.kv_string("general.architecture", "llama");
    w.kv<uint64_t>("u64", 10, 1ull << 40);
    w.kv<int64_t>("i64", 11, -(1ll << 40));
    w.kv<double>("f64", 12, 1e-300);
    w.kv_strings("names", {"a", "", "\xE2\x96\x81x"});
    w.kv_array<int32_t>("ints", 5, {1, -2, 3});
    w.tensor_of<float>("f", {3, 2}, 0, {1, 2, 3, 4, 5, 6});
    std::vector<std::vector<int8_t>> rows(2, std::vector<int8_t>(64));
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 64; ++c) rows[r][c] = static_cast<int8_t>(r * 64 + c - 64);
    w.tensor("q", {64, 2}, 8, q8_0_rows(rows, 0.5f));
    const auto file = GgufFile::open(w.write(unique_name("v" + std::to_string(version))));
    EXPECT_EQ(file->version(), version);
    EXPECT_EQ(file->alignment(), 64u);
    EXPECT_EQ(file->data_offset() % 64, 0u);
    EXPECT_EQ(file->get_int("u8"), 200);
    EXPECT_EQ(file->get_int("i8"), -5);
    EXPECT_EQ(file->get_int("u16"), 60000);
    EXPECT_EQ(file->get_int("i16"), -30000);
    EXPECT_EQ(file->get_int("i32"), -7);
    EXPECT_EQ(file->get_float("f32"), 0.25);
    EXPECT_TRUE(file->get_bool("flag"));
    EXPECT_EQ(file->get_string("general.architecture"), "llama");
    EXPECT_EQ(file->get_int("u64"), 1ll << 40);
    EXPECT_EQ(file->get_int("i64"), -(1ll << 40));
    EXPECT_EQ(file->get_float("f64"), 1e-300);
    EXPECT_EQ(file->get("names").as_strings(), (std::vector<std::string>{"a", "", "\xE2\x96\x81x"}));
    EXPECT_EQ(file->get("ints").as_ints(), (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(file->get("ints").array_type(), GgufValueType::kInt32);
    EXPECT_NE(error_of([&] { file->get_string("i32"); }).find("'i32'"), std::string::npos);
    EXPECT_NE(error_of([&] { file->get_int("missing.key"); }).find("'missing.key' is missing"), std::string::npos);

    const GgufTensorInfo& f = file->tensor("f");
    EXPECT_EQ(f.shape, (Shape{2, 3}));  // reversed from the stored {3, 2}
    EXPECT_EQ(f.offset % 64, 0u);
    std::vector<float> fv(6);
    file->read(f, Tensor(fv.data(), DType::kFP32, {2, 3}));
    EXPECT_EQ(fv, (std::vector<float>{1, 2, 3, 4, 5, 6}));
    const GgufTensorInfo& q = file->tensor("q");
    EXPECT_EQ(q.type, GgufType::kQ8_0);
    EXPECT_EQ(q.shape, (Shape{2, 64}));
    std::vector<float> qv(128);
    file->read(q, Tensor(qv.data(), DType::kFP32, {2, 64}));
    for (int i = 0; i < 128; ++i) EXPECT_EQ(qv[i], 0.5f * static_cast<float>(i - 64));
    std::vector<float> row(64);
    file->read_row(q, 1, row.data(), DType::kFP32);
    EXPECT_EQ(row[0], 0.0f);
    EXPECT_NE(error_of([&] { file->read(q, Tensor(qv.data(), DType::kFP32, {64, 2})); }, ErrorKind::kInvalidArgument)
                  .find("[2, 64]"),
              std::string::npos);
  }
}

GgufWriter small_valid_file() {
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_strings("tokenizer.ggml.tokens", {"a", "b"});
  w.tensor_of<float>("t0", {4}, 0, {1, 2, 3, 4});
  w.tensor_of<float>("t1", {8, 2}, 0, std::vector<float>(16, 0.5f));
  return w;
}

TEST(GgufFile, EveryTruncationIsAClearError) {
  const auto bytes = small_valid_file().bytes();
  ASSERT_NO_THROW(GgufFile::open(GgufWriter::write(bytes, unique_name("full"))));
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    const auto path = GgufWriter::write(cut, unique_name("cut"));
    try {
      GgufFile::open(path);
      ADD_FAILURE() << "a file cut at " << n << " of " << bytes.size() << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << n << ": " << e.what();
    }
  }
}

TEST(GgufFile, CorruptedBytesNeverCrash) {
  const auto bytes = small_valid_file().bytes();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    auto bad = bytes;
    for (int k = 0; k < 3; ++k) {
      bad[std::uniform_int_distribution<size_t>(0, 200)(rng) % bad.size()] = static_cast<uint8_t>(rng());
    }
    try {
      GgufFile::open(GgufWriter::write(bad, unique_name("fuzz")));
    } catch (const Error&) {
    }
  }
}

TEST(GgufFile, LyingHeadersAreNamed) {
  auto open_bytes = [&](const std::vector<uint8_t>& b, ErrorKind kind = ErrorKind::kInvalidInput) {
    return error_of([&] { GgufFile::open(GgufWriter::write(b, unique_name("lie"))); }, kind);
  };
  auto bytes = small_valid_file().bytes();
  {
    auto b = bytes;
    b[0] = 'X';
    EXPECT_NE(open_bytes(b).find("not a GGUF file"), std::string::npos);
  }
  {
    auto b = bytes;
    b[4] = 1;
    EXPECT_NE(open_bytes(b, ErrorKind::kUnsupported).find("version 1"), std::string::npos);
    b[4] = 0, b[7] = 3;  // a big-endian version 3
    EXPECT_NE(open_bytes(b, ErrorKind::kUnsupported).find("big-endian"), std::string::npos);
  }
  {
    auto b = bytes;
    const uint64_t huge = 1ull << 40;
    std::memcpy(&b[8], &huge, 8);  // tensor count
    EXPECT_NE(open_bytes(b).find("tensor count 1099511627776 cannot fit"), std::string::npos);
    b = bytes;
    std::memcpy(&b[16], &huge, 8);  // metadata count
    EXPECT_NE(open_bytes(b).find("metadata count"), std::string::npos);
    b = bytes;
    std::memcpy(&b[24], &huge, 8);  // length of the first key
    EXPECT_NE(open_bytes(b).find("claims 1099511627776 bytes"), std::string::npos);
  }
  {
    GgufWriter w = small_valid_file();
    w.tensor_of<float>("past_end", {4}, 0, {1, 2, 3, 4});
    w.set_last_offset(4096);
    EXPECT_NE(open_bytes(w.bytes()).find("'past_end'"), std::string::npos);
    EXPECT_NE(open_bytes(w.bytes()).find("extends past the end"), std::string::npos);
  }
  {
    GgufWriter w = small_valid_file();
    w.tensor_of<float>("odd", {4}, 0, {1, 2, 3, 4});
    w.set_last_offset(36);
    EXPECT_NE(open_bytes(w.bytes()).find("not a multiple of the alignment"), std::string::npos);
    w.set_last_offset(0);
    EXPECT_NE(open_bytes(w.bytes()).find("overlap"), std::string::npos);
  }
  {
    GgufWriter w = small_valid_file();
    w.tensor("iq", {256}, 16, std::vector<uint8_t>(66));
    EXPECT_NE(open_bytes(w.bytes(), ErrorKind::kUnsupported).find("type 16"), std::string::npos);
    GgufWriter v = small_valid_file();
    v.tensor("q", {48}, 8, std::vector<uint8_t>(51));
    EXPECT_NE(open_bytes(v.bytes()).find("not a multiple of the Q8_0 block size 32"), std::string::npos);
  }
  {
    GgufWriter w = small_valid_file();
    w.kv_u32("general.architecture", 1);
    EXPECT_NE(open_bytes(w.bytes()).find("'general.architecture' appears twice"), std::string::npos);
    GgufWriter v = small_valid_file();
    v.tensor_of<float>("t0", {4}, 0, {1, 2, 3, 4});
    EXPECT_NE(open_bytes(v.bytes()).find("tensor 't0' appears twice"), std::string::npos);
    GgufWriter a = small_valid_file();
    a.kv_u32("general.alignment", 24);
    EXPECT_NE(open_bytes(a.bytes()).find("not a power of two"), std::string::npos);
    GgufWriter t;
    std::vector<uint8_t> raw;
    GgufWriter::put_string(raw, "bad.type");
    GgufWriter::put<uint32_t>(raw, 13);
    t.kv_raw(raw);
    EXPECT_NE(open_bytes(t.bytes()).find("unknown value type 13"), std::string::npos);
    GgufWriter d;
    d.tensor_of<float>("five_dims", {1, 1, 1, 1, 1}, 0, {1});
    EXPECT_NE(open_bytes(d.bytes()).find("5 dimensions"), std::string::npos);
  }
  EXPECT_EQ(error_of([&] { GgufFile::open("/nonexistent/model.gguf"); }, ErrorKind::kIo).empty(), false);
}

TEST(GgufNames, MapToHuggingFaceNames) {
  EXPECT_EQ(gguf_to_hf_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(gguf_to_hf_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(gguf_to_hf_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.0.attn_k.bias"), "model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_v.weight"), "model.layers.3.self_attn.v_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_gate.weight"), "model.layers.3.mlp.gate_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_up.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_norm.weight"), "model.layers.3.input_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_norm.weight"), "model.layers.3.post_attention_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("rope_freqs.weight"), "rope_freqs.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.x.attn_q.weight"), "blk.x.attn_q.weight");
}

// llama.cpp's converter: w.reshape(n_head, 2, rows/n_head/2, in).swapaxes(1, 2).reshape(rows, in),
// i.e. stored row h*hd + 2*i + half holds Hugging Face row h*hd + half*hd/2 + i.
std::vector<float> permute_rows(const std::vector<float>& hf, int rows, int cols, int n_head) {
  std::vector<float> stored(hf.size());
  const int hd = rows / n_head;
  for (int h = 0; h < n_head; ++h)
    for (int half = 0; half < 2; ++half)
      for (int i = 0; i < hd / 2; ++i)
        for (int c = 0; c < cols; ++c)
          stored[static_cast<size_t>((h * hd + 2 * i + half) * cols + c)] =
              hf[static_cast<size_t>((h * hd + half * hd / 2 + i) * cols + c)];
  return stored;
}

GgufWriter tiny_llama(bool with_output) {
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_u32("llama.context_length", 256);
  w.kv_u32("llama.embedding_length", 32);
  w.kv_u32("llama.block_count", 1);
  w.kv_u32("llama.feed_forward_length", 64);
  w.kv_u32("llama.attention.head_count", 4);
  w.kv_u32("llama.attention.head_count_kv", 2);
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  w.kv_f32("llama.rope.freq_base", 500000.0f);
  w.kv_u32("llama.rope.dimension_count", 8);
  w.kv_u32("general.file_type", 7);
  w.kv_string("tokenizer.ggml.model", "gpt2");
  w.kv_strings("tokenizer.ggml.tokens", {"a", "b", "ab", "<s>"});
  w.kv_array<int32_t>("tokenizer.ggml.token_type", 5, {1, 1, 1, 3});
  w.kv_strings("tokenizer.ggml.merges", {"a b"});
  w.kv_u32("tokenizer.ggml.bos_token_id", 3);
  w.kv_u32("tokenizer.ggml.eos_token_id", 3);
  (void)with_output;
  return w;
}

TEST(GgufWeightSource, UndoesTheQKRowPermutationAndRenames) {
  const int in = 32, q_rows = 32, k_rows = 16;  // 4 q heads and 2 kv heads of dim 8
  std::vector<float> q_hf(static_cast<size_t>(q_rows * in)), q_bias(static_cast<size_t>(q_rows));
  for (size_t i = 0; i < q_hf.size(); ++i) q_hf[i] = static_cast<float>(i);
  for (int i = 0; i < q_rows; ++i) q_bias[static_cast<size_t>(i)] = static_cast<float>(1000 + i);
  // K as Q8_0 with integer values so dequantization is exact.
  std::vector<std::vector<int8_t>> k_hf(static_cast<size_t>(k_rows), std::vector<int8_t>(static_cast<size_t>(in)));
  for (int r = 0; r < k_rows; ++r)
    for (int c = 0; c < in; ++c) k_hf[static_cast<size_t>(r)][static_cast<size_t>(c)] = static_cast<int8_t>(r * 4 - c);
  std::vector<std::vector<int8_t>> k_stored(static_cast<size_t>(k_rows));
  for (int r = 0; r < k_rows; ++r) {
    const int hd = 8, h = r / hd, rem = r % hd, half = rem / 4, i = rem % 4;
    k_stored[static_cast<size_t>(h * hd + 2 * i + half)] = k_hf[static_cast<size_t>(r)];
  }
  GgufWriter w = tiny_llama(false);
  w.tensor_of<float>("blk.0.attn_q.weight", {static_cast<uint64_t>(in), static_cast<uint64_t>(q_rows)}, 0,
                     permute_rows(q_hf, q_rows, in, 4));
  w.tensor_of<float>("blk.0.attn_q.bias", {static_cast<uint64_t>(q_rows)}, 0, permute_rows(q_bias, q_rows, 1, 4));
  w.tensor("blk.0.attn_k.weight", {static_cast<uint64_t>(in), static_cast<uint64_t>(k_rows)}, 8,
           q8_0_rows(k_stored, 1.0f));
  w.tensor_of<float>("blk.0.attn_v.weight", {static_cast<uint64_t>(in), 2}, 0, std::vector<float>(64, 2.0f));
  w.tensor_of<float>("token_embd.weight", {32, 4}, 0, std::vector<float>(128, 1.0f));
  const auto path = w.write(unique_name("perm"));

  GgufWeightSource src(GgufFile::open(path));
  EXPECT_TRUE(src.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(src.contains("model.embed_tokens.weight"));
  EXPECT_FALSE(src.contains("blk.0.attn_q.weight"));
  EXPECT_EQ(src.info("model.layers.0.self_attn.q_proj.weight").shape, (Shape{q_rows, in}));
  EXPECT_EQ(src.info("model.layers.0.self_attn.k_proj.weight").dtype, DType::kFP32);

  std::vector<float> q(q_hf.size());
  src.read("model.layers.0.self_attn.q_proj.weight", Tensor(q.data(), DType::kFP32, {q_rows, in}));
  EXPECT_EQ(q, q_hf);
  std::vector<float> qb(q_bias.size());
  src.read("model.layers.0.self_attn.q_proj.bias", Tensor(qb.data(), DType::kFP32, {q_rows}));
  EXPECT_EQ(qb, q_bias);
  std::vector<bf16> k(static_cast<size_t>(k_rows * in));
  src.read("model.layers.0.self_attn.k_proj.weight", Tensor(k.data(), DType::kBF16, {k_rows, in}));
  for (int r = 0; r < k_rows; ++r)
    for (int c = 0; c < in; ++c)
      EXPECT_EQ(bf16_to_float(k[static_cast<size_t>(r * in + c)]), static_cast<float>(r * 4 - c)) << r << "," << c;
  // V is not permuted.
  std::vector<float> v(64);
  src.read("model.layers.0.self_attn.v_proj.weight", Tensor(v.data(), DType::kFP32, {2, in}));
  EXPECT_EQ(v, std::vector<float>(64, 2.0f));
  // Without undoing, the stored order comes back.
  GgufWeightSource raw(GgufFile::open(path), false);
  raw.read("model.layers.0.self_attn.q_proj.weight", Tensor(q.data(), DType::kFP32, {q_rows, in}));
  EXPECT_EQ(q, permute_rows(q_hf, q_rows, in, 4));
  EXPECT_NE(error_of([&] { src.info("model.layers.9.mlp.up_proj.weight"); }).find("model.layers.9.mlp.up_proj.weight"),
            std::string::npos);
}

TEST(GgufConfig, MapsLlamaMetadata) {
  GgufWriter w = tiny_llama(false);
  w.tensor_of<float>("token_embd.weight", {32, 4}, 0, std::vector<float>(128, 1.0f));
  const auto file = GgufFile::open(w.write(unique_name("cfg")));
  const ModelConfig c = gguf_model_config(*file);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 64);
  EXPECT_EQ(c.num_layers, 1);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.vocab_size, 4);  // from the token list: no llama.vocab_size
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 3);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{3});
}

TEST(GgufTokenizer, Gpt2ModelWithBosTemplate) {
  GgufWriter w = tiny_llama(false);
  w.kv_bool("tokenizer.ggml.add_bos_token", true);
  w.kv_string("tokenizer.ggml.pre", "gpt2");
  const auto file = GgufFile::open(w.write(unique_name("tok")));
  const Tokenizer tok = gguf_tokenizer(*file);
  EXPECT_EQ(tok.encode("abba", true), (std::vector<int32_t>{3, 2, 1, 0}));
  EXPECT_EQ(tok.encode("ab<s>", false), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(tok.bos_id(), 3);
  EXPECT_TRUE(tok.is_special(3));
  EXPECT_EQ(tok.decode(tok.encode("abba", true), true), "abba");
}

TEST(GgufTokenizer, UnknownPreTokenizerIsNamed) {
  GgufWriter w = tiny_llama(false);
  w.kv_string("tokenizer.ggml.pre", "klingon");
  const auto file = GgufFile::open(w.write(unique_name("pre")));
  EXPECT_NE(error_of([&] { gguf_tokenizer(*file); }, ErrorKind::kUnsupported).find("'klingon'"), std::string::npos);
}

TEST(GgufTokenizer, SentencePieceMergesFollowScores) {
  const std::string S = "\xE2\x96\x81";
  std::vector<std::string> tokens{"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types{2, 3, 3};
  std::vector<float> scores{0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens.push_back(name), types.push_back(6), scores.push_back(0);
  }
  const size_t base = tokens.size();
  // Higher score merges first: "b c" (-1) before "a b" (-2) before "▁ a" (-3).
  for (auto [t, s] : std::vector<std::pair<std::string, float>>{
           {S, -10}, {"a", -10}, {"b", -10}, {"c", -10}, {"bc", -1}, {"ab", -2}, {S + "a", -3}, {S + "ab", -4}}) {
    tokens.push_back(t), types.push_back(1), scores.push_back(s);
  }
  GgufWriter w;
  w.kv_string("tokenizer.ggml.model", "llama");
  w.kv_strings("tokenizer.ggml.tokens", tokens);
  w.kv_array<int32_t>("tokenizer.ggml.token_type", 5, types);
  w.kv_array<float>("tokenizer.ggml.scores", 6, scores);
  w.kv_u32("tokenizer.ggml.bos_token_id", 1);
  w.kv_u32("tokenizer.ggml.eos_token_id", 2);
  w.kv_u32("tokenizer.ggml.unknown_token_id", 0);
  const auto file = GgufFile::open(w.write(unique_name("spm")));
  const Tokenizer tok = gguf_tokenizer(*file);
  auto id = [&](const std::string& t) { return static_cast<int32_t>(*tok.token_to_id(t)); };
  EXPECT_EQ(id("bc"), static_cast<int32_t>(base + 4));
  // "▁abc": bc first, then ▁a; "▁ab": ab first, then ▁ab.
  EXPECT_EQ(tok.encode("abc", true), (std::vector<int32_t>{1, id(S + "a"), id("bc")}));
  EXPECT_EQ(tok.encode("ab", false), (std::vector<int32_t>{id(S + "ab")}));
  EXPECT_EQ(tok.encode("a\xC3\xA9", false), (std::vector<int32_t>{id(S + "a"), id("<0xC3>"), id("<0xA9>")}));
  EXPECT_EQ(tok.decode(tok.encode("ab abc \xC3\xA9", true), true), "ab abc \xC3\xA9");
}

}  // namespace
}  // namespace retro::runtime
