#pragma once
// Synthetic attention workload for tests and benchmarks, deterministic from a seed.
//
// Keys of KV head g at position t: RoPE_t(mu_g + key_noise * (B_g w_t / sqrt(r) + key_residual * e_t)),
// with mu_g a mean offset shared by every token of the head (the query/key distribution gap that key
// centring addresses), B_g a fixed [head_dim, r] normal basis and w_t, e_t standard normal: keys of
// trained models concentrate in a few directions (key_rank r; 0 gives isotropic keys). RoPE gives
// keys the coarse positional locality segmented clustering relies on.
// A few needle keys per head (at random positions of the initial context) point along the group's
// mean query so that their logit is about needle_logit. Queries (post-RoPE) of head h drift around a
// per-head mean: q_s = m_h + query_noise * u_s with u_s = rho u_{s-1} + sqrt(1 - rho^2) xi_s (AR(1),
// rho = query_correlation). Values are standard normal.

#include <cstdint>
#include <vector>

#include "attention/attention_shape.h"

namespace retro::attention {

struct SyntheticParams {
  AttentionShape shape{32, 8, 128};
  int64_t context_tokens = 4096;  // needles are placed in [0, context_tokens)
  uint64_t seed = 1;
  float rope_theta = 500000.0f;
  float key_mean_scale = 1.0f;   // per-dimension std of mu_g
  float key_noise = 0.5f;
  int key_rank = 0;              // dimensions of a low-rank part; 0: isotropic noise
  float key_residual = 0.3f;     // isotropic residual beside the low-rank part
  int num_needles = 8;           // per KV head
  float needle_logit = 10.0f;
  float query_mean_scale = 1.0f;
  float query_noise = 0.5f;
  float query_correlation = 0.9f;
};

class SyntheticWorkload {
 public:
  explicit SyntheticWorkload(const SyntheticParams& params);

  const SyntheticParams& params() const { return params_; }
  int64_t position() const { return position_; }  // tokens produced so far

  // The next n tokens: k, v [n, num_kv_heads, head_dim] fp32.
  void next_kv(int64_t n, float* k, float* v);
  // The next decode query: q [num_q_heads, head_dim] fp32.
  void next_query(float* q);
  // Needle positions of KV head g, ascending.
  const std::vector<int64_t>& needle_positions(int kv_head) const { return needles_[kv_head]; }

 private:
  float normal();
  uint64_t next_u64();

  SyntheticParams params_;
  uint64_t state_;
  int64_t position_ = 0;
  std::vector<float> key_mean_;      // [num_kv_heads, head_dim] pre-RoPE
  std::vector<float> key_basis_;     // [num_kv_heads, head_dim, key_rank]
  std::vector<float> query_mean_;    // [num_q_heads, head_dim]
  std::vector<float> query_state_;   // [num_q_heads, head_dim] AR(1) state u
  std::vector<float> needle_key_;    // [num_kv_heads, head_dim]
  std::vector<std::vector<int64_t>> needles_;
  std::vector<float> inv_freq_;      // [head_dim / 2]
  bool has_spare_ = false;
  float spare_ = 0.0f;
};

}  // namespace retro::attention
