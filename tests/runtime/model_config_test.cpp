// config.json of each supported family, in the old (rope_theta + rope_scaling) and the transformers-5
// (rope_parameters) layouts, and the errors that name what is wrong.

#include "runtime/model_config.h"

#include <gtest/gtest.h>

#include "tests/test_support.h"
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/core/error.h"

namespace retro::runtime {
namespace {

using nlohmann::json;

const char* const kNeedleDir = retro::test_support::kNeedleModelDir;

using retro::test_support::expect_error;

json llama31_8b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256})");
}

TEST(ModelConfig, Llama31ReadsLlama3RopeScalingAndEosList) {
  ModelConfig c = parse_model_config(llama31_8b());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // hidden / heads: no head_dim key
  EXPECT_EQ(c.group_size(), 4);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c.sliding_window, 0);
}

TEST(ModelConfig, Llama2WithoutRopeThetaOrHeadDim) {
  json j = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})");
  ModelConfig c = parse_model_config(j);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.group_size(), 1);
  EXPECT_EQ(c.dtype, DType::kFP16);
  EXPECT_EQ(c.max_position_embeddings, 4096);
}

TEST(ModelConfig, Qwen2HasQkvBiasWithoutTheKeyAndReadsYarn) {
  json j = json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "use_sliding_window": false, "vocab_size": 152064,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})");
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.attention_out_bias);  // Qwen2's o_proj has none
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.group_size(), 7);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kYarn);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 4.0f);  // the explicit factor, not max / original (= 1)
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_FLOAT_EQ(c.rope_scaling.beta_fast, 32.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.beta_slow, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.attention_factor, 0.0f);  // derived later from the factor
  EXPECT_TRUE(c.rope_scaling.truncate);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{151645});
}

TEST(ModelConfig, YarnWithoutOriginalUsesMaxPositions) {
  json j = llama31_8b();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}, {"beta_fast", 16}, {"attention_factor", 1.5}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 131072);
  EXPECT_FLOAT_EQ(c.rope_scaling.beta_fast, 16.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.attention_factor, 1.5f);
}

TEST(ModelConfig, MistralNullSlidingWindowMeansNone) {
  json j = json::parse(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "vocab_size": 32768})");
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);

  j["sliding_window"] = 4096;
  EXPECT_EQ(parse_model_config(j).sliding_window, 4096);
}

TEST(ModelConfig, Transformers5RopeParametersAndDtypeKey) {
  json j = llama31_8b();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_theta", 500000.0},  {"rope_type", "llama3"},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  ModelConfig c = parse_model_config(j);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 32.0f);
  EXPECT_EQ(c.dtype, DType::kFP16);
}

TEST(ModelConfig, DefaultRopeTypeInEitherLayoutIsUnscaled) {
  json j = llama31_8b();
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(parse_model_config(j).rope_scaling.type, RopeScalingType::kNone);
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "default"}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  j["rope_parameters"] = {{"rope_theta", 10000.0}, {"type", "linear"}, {"factor", 2.0}};  // old "type" key
  c = parse_model_config(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 2.0f);
}

TEST(ModelConfig, NeedleLlamaTinyConfigFromDisk) {
  ModelConfig c = load_model_config(kNeedleDir);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 128);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c.max_position_embeddings, 131072);
  // The same through the file path.
  EXPECT_EQ(load_model_config(std::filesystem::path(kNeedleDir) / "config.json").hidden_size, 512);
}

TEST(ModelConfig, OptionalFieldsTakeTheirDefaults) {
  json j = {{"model_type", "llama"},    {"vocab_size", 100},      {"hidden_size", 64},
            {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_kv_heads, 4);  // no GQA unless asked
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.bos_token_id, -1);
  j["head_dim"] = nullptr;  // null is "not set"
  EXPECT_EQ(parse_model_config(j).head_dim, 16);
  j["head_dim"] = 32;  // an explicit head_dim wins over hidden / heads
  EXPECT_EQ(parse_model_config(j).q_size(), 128);
}

TEST(ModelConfig, LlamaAttentionBiasCoversTheOutputProjection) {
  json j = llama31_8b();
  j["attention_bias"] = true;
  ModelConfig c = parse_model_config(j);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.attention_out_bias);
}

TEST(ModelConfig, MissingRequiredFieldIsNamed) {
  for (const char* field :
       {"hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"}) {
    json j = llama31_8b();
    j.erase(field);
    expect_error([&] { parse_model_config(j, "my/config.json"); }, ErrorKind::kInvalidInput,
                 {"missing required field", field, "my/config.json"});
  }
  json j = llama31_8b();
  j["rope_scaling"].erase("low_freq_factor");
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"rope_scaling.low_freq_factor"});
}

TEST(ModelConfig, UnknownArchitectureOrModelTypeIsNamed) {
  json j = llama31_8b();
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"GPT2LMHeadModel", "LlamaForCausalLM"});
  j = llama31_8b();
  j["model_type"] = "gpt_neox";
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"gpt_neox", "model_type"});
  j.erase("model_type");
  j.erase("architectures");
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"model_type"});
}

TEST(ModelConfig, FieldOfTheWrongTypeIsNamed) {
  json j = llama31_8b();
  j["num_hidden_layers"] = "32";
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"num_hidden_layers", "integer"});
  j = llama31_8b();
  j["rms_norm_eps"] = "small";
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"rms_norm_eps"});
  j = llama31_8b();
  j["hidden_size"] = 4096.5;
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"hidden_size"});
  j = llama31_8b();
  j["torch_dtype"] = "float13";
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"torch_dtype", "float13"});
}

TEST(ModelConfig, UnknownOrUnimplementedRopeTypeIsNamed) {
  json j = llama31_8b();
  j["rope_scaling"] = {{"rope_type", "wobbly"}, {"factor", 2.0}};
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"wobbly", "rope_scaling.rope_type"});
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  expect_error([&] { parse_model_config(j); }, ErrorKind::kUnsupported, {"dynamic"});
  j = llama31_8b();
  j["hidden_act"] = "gelu";
  expect_error([&] { parse_model_config(j); }, ErrorKind::kUnsupported, {"gelu"});
}

TEST(ModelConfig, ValidateRejectsInconsistentShapes) {
  json j = llama31_8b();
  j["num_key_value_heads"] = 5;
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"num_key_value_heads", "multiple"});
  j = llama31_8b();
  j["num_hidden_layers"] = 0;
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"num_hidden_layers", "positive"});
  j = llama31_8b();
  j["eos_token_id"] = 200000;
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"eos_token_id", "200000"});
  j = llama31_8b();
  j["hidden_size"] = 4000;  // not a multiple of 32 heads and no head_dim
  expect_error([&] { parse_model_config(j); }, ErrorKind::kInvalidInput, {"head_dim"});

  ModelConfig c = parse_model_config(llama31_8b());
  c.head_dim = 127;
  expect_error([&] { c.validate(); }, ErrorKind::kInvalidInput, {"head_dim", "even"});
}

TEST(ModelConfig, LoadNamesTheFileOnBadJsonAndMissingFile) {
  const auto dir = std::filesystem::temp_directory_path() / ("retro_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "config.json") << "{\"model_type\": \"llama\", "; }
  expect_error([&] { load_model_config(dir); }, ErrorKind::kInvalidInput, {"config.json", "not valid JSON"});
  expect_error([&] { load_model_config(dir / "absent.json"); }, ErrorKind::kIo, {"absent.json"});
  { std::ofstream(dir / "config.json") << "{\"model_type\": \"llama\"}"; }
  expect_error([&] { load_model_config(dir); }, ErrorKind::kInvalidInput,
               {(dir / "config.json").string(), "vocab_size"});
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace retro::runtime
