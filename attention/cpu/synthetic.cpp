#include "attention/synthetic.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "runtime/core/error.h"

namespace retro::attention {

SyntheticWorkload::SyntheticWorkload(const SyntheticParams& params) : params_(params), state_(params.seed) {
  const AttentionShape& s = params_.shape;
  s.validate();
  RETRO_CHECK(s.head_dim % 2 == 0, "synthetic workload: head_dim must be even for RoPE, got {}", s.head_dim);
  RETRO_CHECK(params_.context_tokens >= 0, "synthetic workload: negative context_tokens {}", params_.context_tokens);
  RETRO_CHECK(params_.num_needles >= 0, "synthetic workload: negative num_needles {}", params_.num_needles);
  RETRO_CHECK(params_.query_correlation >= 0.0f && params_.query_correlation <= 1.0f,
              "synthetic workload: query_correlation must be in [0, 1], got {}", params_.query_correlation);
  const int d = s.head_dim;
  const int gs = s.group_size();
  inv_freq_.resize(static_cast<size_t>(d / 2));
  for (int i = 0; i < d / 2; ++i)
    inv_freq_[static_cast<size_t>(i)] = std::pow(params_.rope_theta, -2.0f * static_cast<float>(i) / static_cast<float>(d));
  RETRO_CHECK(params_.key_rank >= 0, "synthetic workload: negative key_rank {}", params_.key_rank);
  key_mean_.resize(static_cast<size_t>(s.num_kv_heads * d));
  for (float& x : key_mean_) x = params_.key_mean_scale * normal();
  key_basis_.resize(static_cast<size_t>(s.num_kv_heads * d * params_.key_rank));
  for (float& x : key_basis_) x = normal();
  // Query means: a direction shared by the group plus a per-head part, so heads of a group agree
  // on which clusters matter but not exactly.
  std::vector<float> group_dir(static_cast<size_t>(s.num_kv_heads * d));
  for (float& x : group_dir) x = normal();
  query_mean_.resize(static_cast<size_t>(s.num_q_heads * d));
  for (int h = 0; h < s.num_q_heads; ++h)
    for (int i = 0; i < d; ++i)
      query_mean_[static_cast<size_t>(h * d + i)] =
          params_.query_mean_scale * (0.8f * group_dir[static_cast<size_t>((h / gs) * d + i)] + 0.6f * normal());
  query_state_.resize(static_cast<size_t>(s.num_q_heads * d));
  for (float& x : query_state_) x = normal();
  // Needle key of group g: along the group's mean query, with logit needle_logit against it.
  needle_key_.resize(static_cast<size_t>(s.num_kv_heads * d));
  for (int g = 0; g < s.num_kv_heads; ++g) {
    std::vector<double> m(static_cast<size_t>(d), 0.0);
    for (int h = g * gs; h < (g + 1) * gs; ++h)
      for (int i = 0; i < d; ++i) m[static_cast<size_t>(i)] += query_mean_[static_cast<size_t>(h * d + i)] / gs;
    double norm2 = 0.0;
    for (double x : m) norm2 += x * x;
    const double c = params_.needle_logit * std::sqrt(static_cast<double>(d)) / std::max(norm2, 1e-12);
    for (int i = 0; i < d; ++i) needle_key_[static_cast<size_t>(g * d + i)] = static_cast<float>(c * m[static_cast<size_t>(i)]);
  }
  needles_.resize(static_cast<size_t>(s.num_kv_heads));
  for (auto& positions : needles_) {
    if (params_.context_tokens == 0) continue;
    for (int j = 0; j < params_.num_needles; ++j)
      positions.push_back(static_cast<int64_t>(next_u64() % static_cast<uint64_t>(params_.context_tokens)));
    std::sort(positions.begin(), positions.end());
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  }
}

uint64_t SyntheticWorkload::next_u64() {
  // splitmix64: the same stream on every platform and standard library.
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float SyntheticWorkload::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // Box-Muller on two uniforms in (0, 1).
  const double u1 = (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53;
  const double u2 = (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double a = 2.0 * std::numbers::pi * u2;
  spare_ = static_cast<float>(r * std::sin(a));
  has_spare_ = true;
  return static_cast<float>(r * std::cos(a));
}

void SyntheticWorkload::next_kv(int64_t n, float* k, float* v) {
  const AttentionShape& s = params_.shape;
  const int d = s.head_dim;
  const int rank = params_.key_rank;
  std::vector<float> pre(static_cast<size_t>(d)), latent(static_cast<size_t>(rank));
  for (int64_t t = 0; t < n; ++t, ++position_) {
    for (int g = 0; g < s.num_kv_heads; ++g) {
      float* kr = k + (t * s.num_kv_heads + g) * d;
      float* vr = v + (t * s.num_kv_heads + g) * d;
      for (int i = 0; i < d; ++i) vr[i] = normal();
      const auto& needles = needles_[static_cast<size_t>(g)];
      if (std::binary_search(needles.begin(), needles.end(), position_)) {
        for (int i = 0; i < d; ++i) kr[i] = needle_key_[static_cast<size_t>(g * d + i)] + 0.1f * normal();
        continue;
      }
      for (float& x : latent) x = normal() / std::sqrt(static_cast<float>(rank));
      const float residual = rank > 0 ? params_.key_residual : 1.0f;
      for (int i = 0; i < d; ++i) {
        const float* basis = key_basis_.data() + (static_cast<size_t>(g) * d + i) * rank;
        float z = residual * normal();
        for (int r = 0; r < rank; ++r) z += basis[r] * latent[static_cast<size_t>(r)];
        pre[static_cast<size_t>(i)] = key_mean_[static_cast<size_t>(g * d + i)] + params_.key_noise * z;
      }
      // RoPE, rotate-half convention: dimension i pairs with i + d/2.
      for (int i = 0; i < d / 2; ++i) {
        const double angle = static_cast<double>(position_) * inv_freq_[static_cast<size_t>(i)];
        const float c = static_cast<float>(std::cos(angle));
        const float sn = static_cast<float>(std::sin(angle));
        const float x0 = pre[static_cast<size_t>(i)];
        const float x1 = pre[static_cast<size_t>(i + d / 2)];
        kr[i] = x0 * c - x1 * sn;
        kr[i + d / 2] = x0 * sn + x1 * c;
      }
    }
  }
}

void SyntheticWorkload::next_query(float* q) {
  const float rho = params_.query_correlation;
  const float innovation = std::sqrt(std::max(0.0f, 1.0f - rho * rho));
  for (size_t i = 0; i < query_state_.size(); ++i) {
    query_state_[i] = rho * query_state_[i] + innovation * normal();
    q[i] = query_mean_[i] + params_.query_noise * query_state_[i];
  }
}

}  // namespace retro::attention
