// Built-in presets (real model shapes, checked by their published parameter counts), synthetic
// weights (deterministic per seed and name, scaled like a real initialisation) and open_model.

#include "runtime/model_presets.h"

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/model_weights.h"
#include "runtime/open_model.h"
#include "runtime/synthetic_weights.h"

namespace retro::runtime {
namespace {

const char* const kNeedleDir = retro::test_support::kNeedleModelDir;

using retro::test_support::expect_error;

int64_t parameter_count(const ModelConfig& c) {
  int64_t n = 0;
  for (const WeightInfo& w : expected_weights(c)) n += w.shape.numel();
  return n;
}

std::vector<float> read_fp32(const WeightSource& source, const std::string& name) {
  const WeightInfo info = source.info(name);
  std::vector<float> out(static_cast<size_t>(info.shape.numel()));
  source.read(name, Tensor(out.data(), DType::kFP32, info.shape));
  return out;
}

void mean_std(const std::vector<float>& v, double* mean, double* std) {
  double s = 0, ss = 0;
  for (float x : v) s += x;
  *mean = s / static_cast<double>(v.size());
  for (float x : v) ss += (x - *mean) * (x - *mean);
  *std = std::sqrt(ss / static_cast<double>(v.size()));
}

TEST(ModelPresets, EveryPresetParsesAndValidates) {
  EXPECT_EQ(preset_names(), (std::vector<std::string>{"llama3-70b", "llama3-8b", "llama3.1-8b", "qwen2.5-7b", "tiny"}));
  for (const std::string& name : preset_names()) {
    ModelConfig c = preset_config(name);
    EXPECT_NO_THROW(c.validate()) << name;
    EXPECT_GT(c.num_layers, 0) << name;
  }
}

TEST(ModelPresets, ShapesGiveThePublishedParameterCounts) {
  EXPECT_EQ(parameter_count(preset_config("llama3-8b")), 8030261248);
  EXPECT_EQ(parameter_count(preset_config("llama3.1-8b")), 8030261248);
  EXPECT_EQ(parameter_count(preset_config("qwen2.5-7b")), 7615616512);
  EXPECT_EQ(parameter_count(preset_config("llama3-70b")), 70553706496);

  ModelConfig qwen = preset_config("qwen2.5-7b");
  EXPECT_TRUE(qwen.attention_bias);
  EXPECT_EQ(qwen.group_size(), 7);
  ModelConfig l31 = preset_config("llama3.1-8b");
  EXPECT_EQ(l31.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(l31.max_position_embeddings, 131072);
  ModelConfig l3 = preset_config("llama3-8b");
  EXPECT_EQ(l3.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(l3.group_size(), 4);

  ModelConfig tiny = preset_config("tiny");
  EXPECT_EQ(tiny.num_layers, 2);
  EXPECT_EQ(tiny.hidden_size, 256);
  EXPECT_EQ(tiny.num_heads, 8);
  EXPECT_EQ(tiny.num_kv_heads, 2);
  EXPECT_EQ(tiny.head_dim, 32);
  EXPECT_EQ(tiny.vocab_size, 256);
  EXPECT_LT(parameter_count(tiny), 2'000'000);  // runs in milliseconds on a CPU
}

TEST(ModelPresets, UnknownPresetListsTheKnownNames) {
  expect_error([] { preset_config("llama9-1t"); }, ErrorKind::kInvalidArgument,
               {"llama9-1t", "llama3-8b", "qwen2.5-7b", "tiny"});
}

TEST(ExpectedWeights, TiedEmbeddingsDropTheLmHeadAndBiasesFollowTheConfig) {
  ModelConfig c = preset_config("qwen2.5-7b");
  std::vector<WeightInfo> w = expected_weights(c);
  auto find = [&](const std::string& name) {
    return std::find_if(w.begin(), w.end(), [&](const WeightInfo& i) { return i.name == name; });
  };
  ASSERT_NE(find("model.layers.27.self_attn.k_proj.bias"), w.end());
  EXPECT_EQ(find("model.layers.27.self_attn.k_proj.bias")->shape, Shape{512});
  EXPECT_EQ(find("model.layers.0.self_attn.o_proj.bias"), w.end());  // Qwen2: q/k/v only
  EXPECT_EQ(find("model.layers.28.input_layernorm.weight"), w.end());
  ASSERT_NE(find("lm_head.weight"), w.end());
  EXPECT_EQ(find("lm_head.weight")->shape, (Shape{152064, 3584}));
  EXPECT_EQ(w.front().name, "model.embed_tokens.weight");

  c.tie_word_embeddings = true;  // as Qwen2.5-0.5B
  w = expected_weights(c);
  EXPECT_EQ(find("lm_head.weight"), w.end());
  EXPECT_EQ(w.back().name, "model.norm.weight");
  // Tied synthetic embeddings are scaled to serve as the LM head.
  c = preset_config("tiny");
  c.tie_word_embeddings = true;
  EXPECT_FLOAT_EQ(SyntheticWeightSource(c).stddev("model.embed_tokens.weight"), 1.0f / 16.0f);
}

TEST(SyntheticWeights, SameSeedSameValuesOtherSeedOrNameOtherValues) {
  const ModelConfig c = preset_config("tiny");
  SyntheticWeightSource a(c, 1), b(c, 1), other(c, 2);
  EXPECT_EQ(a.names(), b.names());
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  const std::vector<float> qa = read_fp32(a, q);
  EXPECT_EQ(qa, read_fp32(b, q));
  const std::vector<float> qo = read_fp32(other, q);
  size_t same = 0;
  for (size_t i = 0; i < qa.size(); ++i) same += qa[i] == qo[i];
  EXPECT_LT(same, qa.size() / 100);
  // Two tensors of one shape in one model differ too.
  const std::vector<float> ka = read_fp32(a, "model.layers.1.self_attn.k_proj.weight");
  const std::vector<float> va = read_fp32(a, "model.layers.1.self_attn.v_proj.weight");
  EXPECT_NE(ka, va);
}

TEST(SyntheticWeights, AnySliceIsReproducibleAndBf16IsTheRoundedFp32) {
  const ModelConfig c = preset_config("tiny");
  SyntheticWeightSource s(c, 42);
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  const std::vector<float> full = read_fp32(s, name);
  std::vector<float> slice(50);
  s.generate(name, 1000, 50, slice.data());
  for (size_t i = 0; i < 50; ++i) EXPECT_EQ(slice[i], full[1000 + i]);

  const WeightInfo info = s.info(name);
  EXPECT_EQ(info.dtype, DType::kBF16);
  std::vector<bf16> narrow(full.size());
  s.read(name, Tensor(narrow.data(), DType::kBF16, info.shape));
  for (size_t i = 0; i < full.size(); ++i) ASSERT_EQ(narrow[i].bits, float_to_bf16(full[i]).bits) << i;
  EXPECT_THROW(s.generate(name, static_cast<int64_t>(full.size()) - 1, 2, slice.data()), Error);
}

TEST(SyntheticWeights, ScaledLikeARealInitialisation) {
  const ModelConfig c = preset_config("tiny");
  SyntheticWeightSource s(c, 3);
  double mean = 0, std = 0;

  const std::vector<float> q = read_fp32(s, "model.layers.0.self_attn.q_proj.weight");  // [256, 256]
  mean_std(q, &mean, &std);
  EXPECT_NEAR(std, 1.0 / std::sqrt(256.0), 0.02 / std::sqrt(256.0));
  EXPECT_NEAR(mean, 0.0, 0.05 / std::sqrt(256.0));
  for (float v : q) ASSERT_LE(std::abs(v), 2 * std::sqrt(3.0) / std::sqrt(256.0) + 1e-6);  // bounded tails

  const std::vector<float> gate = read_fp32(s, "model.layers.1.mlp.gate_proj.weight");  // [768, 256]
  mean_std(gate, &mean, &std);
  EXPECT_NEAR(std, 1.0 / 16.0, 0.02 / 16.0);

  // Residual branches are shrunk by sqrt(2 * layers) = 2 on top of 1/sqrt(in_features).
  const std::vector<float> down = read_fp32(s, "model.layers.1.mlp.down_proj.weight");  // [256, 768]
  mean_std(down, &mean, &std);
  EXPECT_NEAR(std, 1.0 / std::sqrt(768.0) / 2.0, 0.02 / std::sqrt(768.0));

  const std::vector<float> norm = read_fp32(s, "model.layers.0.input_layernorm.weight");
  mean_std(norm, &mean, &std);
  EXPECT_NEAR(mean, 1.0, 0.01);
  EXPECT_NEAR(std, 0.02, 0.005);

  const std::vector<float> embed = read_fp32(s, "model.embed_tokens.weight");
  mean_std(embed, &mean, &std);
  EXPECT_NEAR(std, 1.0, 0.02);
  EXPECT_NO_THROW(validate_weights(c, s));
}

// One token through a deep synthetic model (attention over one token returns its own v): the residual
// stream and the logits keep unit-order scale through every layer.
TEST(SyntheticWeights, ActivationsStaySaneThroughManyLayers) {
  ModelConfig c = preset_config("tiny");
  c.num_layers = 48;
  c.hidden_size = 128;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.intermediate_size = 384;
  c.vocab_size = 64;
  SyntheticWeightSource s(c, 11);
  const int h = c.hidden_size, f = c.intermediate_size, kv = static_cast<int>(c.kv_size()), g = c.group_size();

  auto matvec = [](const std::vector<float>& w, int rows, int cols, const std::vector<float>& x) {
    std::vector<float> y(static_cast<size_t>(rows), 0.0f);
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < cols; ++k) y[r] += w[static_cast<size_t>(r) * cols + k] * x[k];
    return y;
  };
  auto rms_norm = [&](const std::vector<float>& x, const std::vector<float>& w) {
    double ss = 0;
    for (float v : x) ss += v * v;
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / x.size()) + c.rms_norm_eps);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
  };
  auto rms = [](const std::vector<float>& x) {
    double ss = 0;
    for (float v : x) ss += v * v;
    return std::sqrt(ss / x.size());
  };

  const std::vector<float> embed = read_fp32(s, "model.embed_tokens.weight");
  std::vector<float> x(embed.begin() + 5 * h, embed.begin() + 6 * h);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::vector<float> xn = rms_norm(x, read_fp32(s, p + "input_layernorm.weight"));
    const std::vector<float> v = matvec(read_fp32(s, p + "self_attn.v_proj.weight"), kv, h, xn);
    std::vector<float> attn(static_cast<size_t>(c.q_size()));
    for (int head = 0; head < c.num_heads; ++head)
      for (int d = 0; d < c.head_dim; ++d) attn[head * c.head_dim + d] = v[(head / g) * c.head_dim + d];
    const std::vector<float> o = matvec(read_fp32(s, p + "self_attn.o_proj.weight"), h, h, attn);
    for (int i = 0; i < h; ++i) x[i] += o[i];
    const std::vector<float> hn = rms_norm(x, read_fp32(s, p + "post_attention_layernorm.weight"));
    const std::vector<float> gate = matvec(read_fp32(s, p + "mlp.gate_proj.weight"), f, h, hn);
    const std::vector<float> up = matvec(read_fp32(s, p + "mlp.up_proj.weight"), f, h, hn);
    std::vector<float> act(static_cast<size_t>(f));
    for (int i = 0; i < f; ++i) act[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    const std::vector<float> down = matvec(read_fp32(s, p + "mlp.down_proj.weight"), h, f, act);
    for (int i = 0; i < h; ++i) x[i] += down[i];
    ASSERT_GT(rms(x), 0.3) << "layer " << l;
    ASSERT_LT(rms(x), 5.0) << "layer " << l;
  }
  const std::vector<float> logits =
      matvec(read_fp32(s, "lm_head.weight"), c.vocab_size, h, rms_norm(x, read_fp32(s, "model.norm.weight")));
  double mean = 0, std = 0;
  mean_std(logits, &mean, &std);
  EXPECT_GT(std, 0.3);
  EXPECT_LT(std, 3.0);
}

TEST(OpenModel, PresetSpecGivesSyntheticWeightsOfThatShape) {
  ModelConfig c;
  std::unique_ptr<WeightSource> s = open_model("preset:tiny", &c);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(s->names().size(), expected_weights(c).size());
  auto* synthetic = dynamic_cast<SyntheticWeightSource*>(s.get());
  ASSERT_NE(synthetic, nullptr);
  EXPECT_EQ(synthetic->seed(), 0u);

  std::unique_ptr<WeightSource> seeded = open_model("preset:tiny@7", nullptr);
  EXPECT_EQ(dynamic_cast<SyntheticWeightSource*>(seeded.get())->seed(), 7u);
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_NE(read_fp32(*s, name), read_fp32(*seeded, name));

  expect_error([] { open_model("preset:huge", nullptr); }, ErrorKind::kInvalidArgument, {"huge", "tiny"});
  expect_error([] { open_model("preset:tiny@seven", nullptr); }, ErrorKind::kInvalidArgument, {"seed"});
}

TEST(OpenModel, DirectorySpecLoadsAndValidatesTheCheckpoint) {
  ModelConfig c;
  std::unique_ptr<WeightSource> s = open_model(kNeedleDir, &c);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_TRUE(s->contains("lm_head.weight"));
  // One shard alone is an incomplete checkpoint for the config beside it.
  const std::string shard = std::string(kNeedleDir) + "/model-00001-of-00002.safetensors";
  expect_error([&] { open_model(shard, nullptr); }, ErrorKind::kInvalidInput,
               {"missing tensor", "model.layers.2.input_layernorm.weight", "more"});
}

TEST(OpenModel, MissingFilesAndUnknownSpecsAreClearErrors) {
  try {
    open_model("/no/such/dir/smollm2.gguf", nullptr);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("smollm2.gguf"), std::string::npos) << e.what();
  }
  expect_error([] { open_model("no/such/model", nullptr); }, ErrorKind::kIo, {"no/such/model", "preset:NAME"});
}

}  // namespace
}  // namespace retro::runtime
