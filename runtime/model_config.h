#pragma once
// The shape and hyper-parameters of a Llama-family model, read from a Hugging Face config.json
// (Llama 2/3/3.1, Qwen2/2.5, Mistral), from GGUF metadata, or from a built-in preset.

#include <nlohmann/json_fwd.hpp>

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
  int original_max_position_embeddings = 0;
  // yarn
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float attention_factor = 0.0f;  // 0: derived (0.1 ln(factor) + 1)
};

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
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool mlp_bias = false;
  DType dtype = DType::kBF16;  // torch_dtype / dtype of the checkpoint
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int sliding_window = 0;  // 0: none

  int group_size() const { return num_heads / num_kv_heads; }  // query heads per KV head
  // Throws retro::Error (kInvalidInput) naming the first inconsistent field.
  void validate() const;
};

}  // namespace retro::runtime
