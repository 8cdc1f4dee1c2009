#pragma once
// The shape and hyper-parameters of a Llama-family model, read from a Hugging Face config.json
// (Llama 2/3/3.1, Qwen2/2.5, Mistral), from GGUF metadata, or from a built-in preset.

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"

namespace retro::runtime {

enum class RopeScalingType { kNone, kLinear, kLlama3, kYarn };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1.0f;
  // llama3
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  // llama3 and yarn: the pretraining context (yarn configs without it use max_position_embeddings)
  int original_max_position_embeddings = 0;
  // yarn
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float attention_factor = 0.0f;  // 0: derived from factor (and mscale / mscale_all_dim when both are set)
  float mscale = 0.0f;            // 0: unset
  float mscale_all_dim = 0.0f;    // 0: unset
  bool truncate = true;           // round the correction range to whole dimensions
};

const char* rope_scaling_type_name(RopeScalingType type);  // "default", "linear", "llama3", "yarn"

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"
  std::string model_type;    // "llama", "qwen2", "mistral"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // defaults to hidden_size / num_heads
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v projections carry a bias (Qwen2)
  bool attention_out_bias = false;  // o_proj carries a bias too (Llama with attention_bias; never Qwen2)
  bool mlp_bias = false;
  DType dtype = DType::kBF16;  // torch_dtype / dtype of the checkpoint
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int sliding_window = 0;  // 0: none

  int group_size() const { return num_heads / num_kv_heads; }                        // query heads per KV head
  int64_t q_size() const { return static_cast<int64_t>(num_heads) * head_dim; }      // q_proj out_features
  int64_t kv_size() const { return static_cast<int64_t>(num_kv_heads) * head_dim; }  // k/v_proj out_features
  // Throws retro::Error (kInvalidInput) naming the first inconsistent field.
  void validate() const;
};

// Reads a Hugging Face config.json (already parsed). Accepts both the transformers-5 `rope_parameters`
// object and the older top-level `rope_theta` + `rope_scaling`, `torch_dtype` or `dtype`, an eos id or a
// list of them. Throws retro::Error (kInvalidInput) naming `source` and the field for a missing required
// field, a field of the wrong type or an unknown architecture; kUnsupported for a recognised feature the
// runtime does not implement (another activation, dynamic or longrope RoPE). The result is validated.
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source = "config.json");
// Reads `dir_or_file` (a model directory holding config.json, or the file itself).
ModelConfig load_model_config(const std::filesystem::path& dir_or_file);

}  // namespace retro::runtime
