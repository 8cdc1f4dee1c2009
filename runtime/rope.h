#pragma once
// Rotary position embeddings: the inverse frequencies of a ModelConfig (default, linear, llama3 and
// yarn, computed as transformers' _compute_*_parameters do) and the rotate-half rotation of q/k rows.
//
// Layout (Hugging Face / NeoX "rotate half"): the pair rotated by frequency i is (x[i], x[i + d/2]),
// not (x[2i], x[2i + 1]). Angles are float32 products position * inv_freq, as transformers computes
// them, so long positions round the same way the model saw in training.

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/core/tensor.h"
#include "runtime/model_config.h"

namespace retro::runtime {

struct RopeFrequencies {
  std::vector<float> inv_freq;     // [rotary_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn's attention factor; 1 otherwise)
};

// inv_freq[i] = 1 / theta^(2i / rotary_dim), then scaled per `scaling`. `max_position_embeddings` is
// only read by yarn without an original_max_position_embeddings.
RopeFrequencies compute_rope_frequencies(int rotary_dim, float theta, const RopeScaling& scaling,
                                         int max_position_embeddings);
RopeFrequencies compute_rope_frequencies(const ModelConfig& config);  // rotary_dim = head_dim

class RopeTable {
 public:
  explicit RopeTable(const ModelConfig& config);
  RopeTable(int rotary_dim, RopeFrequencies frequencies);

  int rotary_dim() const { return rotary_dim_; }
  const std::vector<float>& inv_freq() const { return freq_.inv_freq; }
  float attention_scaling() const { return freq_.attention_scaling; }

  // cos and sin of every frequency at `position`, already multiplied by attention_scaling.
  // cos, sin: [rotary_dim / 2] fp32
  void cos_sin(int64_t position, float* cos, float* sin) const;

  // Rotates the first rotary_dim values of every head row in place.
  // x: [n_tokens, n_heads, head_dim] fp32, rows head_dim apart; positions: [n_tokens]
  void apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const int64_t* positions) const;
  // Same on a contiguous fp32 host tensor [n_tokens, n_heads, head_dim] (or [n_tokens, head_dim]).
  void apply(const Tensor& x, std::span<const int64_t> positions) const;

 private:
  int rotary_dim_;
  RopeFrequencies freq_;
};

}  // namespace retro::runtime
