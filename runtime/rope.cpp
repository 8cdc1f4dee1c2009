#include "runtime/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "runtime/core/error.h"

namespace retro::runtime {

namespace {

// theta^(2i / dim) for every frequency, in float32 as transformers evaluates it (a float32 exponent
// tensor raised from a Python float base), then widened for the scaling arithmetic below.
std::vector<double> base_powers(int rotary_dim, float theta) {
  std::vector<double> out(static_cast<size_t>(rotary_dim / 2));
  for (int i = 0; i < rotary_dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    out[static_cast<size_t>(i)] = static_cast<float>(std::pow(static_cast<double>(theta), exponent));
  }
  return out;
}

void scale_llama3(std::vector<float>& inv_freq, const RopeScaling& s) {
  // Wavelengths shorter than original/high_freq_factor keep their frequency, longer than
  // original/low_freq_factor are slowed down by `factor`, and those between are blended smoothly.
  const double old_context = s.original_max_position_embeddings;
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  for (float& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      f = static_cast<float>(f / s.factor);
      continue;
    }
    const double smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    f = static_cast<float>((1.0 - smooth) * f / s.factor + smooth * f);
  }
}

double yarn_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

RopeFrequencies compute_yarn(int rotary_dim, float theta, const RopeScaling& s, int max_position_embeddings) {
  const double factor = s.factor;
  const double dim = rotary_dim;
  const double base = theta;
  const double original =
      s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : max_position_embeddings;
  RETRO_CHECK(original > 0, "yarn rope scaling needs original_max_position_embeddings or max_position_embeddings");

  RopeFrequencies out;
  if (s.attention_factor > 0.0f) {
    out.attention_scaling = s.attention_factor;
  } else if (s.mscale != 0.0f && s.mscale_all_dim != 0.0f) {
    out.attention_scaling = static_cast<float>(yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim));
  } else {
    out.attention_scaling = static_cast<float>(yarn_mscale(factor, 1.0));
  }

  // The dimension whose wavelength completes `rotations` turns over the original context.
  auto correction_dim = [&](double rotations) {
    return dim * std::log(original / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
  };
  double low = correction_dim(s.beta_fast);
  double high = correction_dim(s.beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  if (low == high) high += 0.001;  // keeps the ramp finite

  const int half = rotary_dim / 2;
  const std::vector<double> powers = base_powers(rotary_dim, theta);
  out.inv_freq.resize(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const double extrapolation = 1.0 / powers[static_cast<size_t>(i)];
    const double interpolation = 1.0 / (factor * powers[static_cast<size_t>(i)]);
    // The ramp is evaluated in float32 in transformers; the blend weight of extrapolation is 1 - ramp.
    const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    const double extrapolation_weight = 1.0 - ramp;
    out.inv_freq[static_cast<size_t>(i)] =
        static_cast<float>(interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight);
  }
  return out;
}

}  // namespace

RopeFrequencies compute_rope_frequencies(int rotary_dim, float theta, const RopeScaling& scaling,
                                         int max_position_embeddings) {
  RETRO_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, "rotary dimension must be positive and even, got {}", rotary_dim);
  RETRO_CHECK(theta > 1.0f, "rope theta must be greater than 1, got {}", theta);
  if (scaling.type == RopeScalingType::kYarn) return compute_yarn(rotary_dim, theta, scaling, max_position_embeddings);

  RopeFrequencies out;
  const std::vector<double> powers = base_powers(rotary_dim, theta);
  out.inv_freq.resize(powers.size());
  for (size_t i = 0; i < powers.size(); ++i) out.inv_freq[i] = static_cast<float>(1.0 / powers[i]);
  switch (scaling.type) {
    case RopeScalingType::kNone:
    case RopeScalingType::kYarn: break;
    case RopeScalingType::kLinear:
      RETRO_CHECK(scaling.factor > 0.0f, "linear rope scaling factor must be positive, got {}", scaling.factor);
      for (float& f : out.inv_freq) f /= scaling.factor;
      break;
    case RopeScalingType::kLlama3:
      RETRO_CHECK(scaling.original_max_position_embeddings > 0 && scaling.high_freq_factor > scaling.low_freq_factor,
                  "llama3 rope scaling needs original_max_position_embeddings > 0 and high_freq_factor > "
                  "low_freq_factor");
      scale_llama3(out.inv_freq, scaling);
      break;
  }
  return out;
}

RopeFrequencies compute_rope_frequencies(const ModelConfig& config) {
  return compute_rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling,
                                  config.max_position_embeddings);
}

RopeTable::RopeTable(const ModelConfig& config) : RopeTable(config.head_dim, compute_rope_frequencies(config)) {}

RopeTable::RopeTable(int rotary_dim, RopeFrequencies frequencies)
    : rotary_dim_(rotary_dim), freq_(std::move(frequencies)) {
  RETRO_CHECK(rotary_dim_ > 0 && rotary_dim_ % 2 == 0 && freq_.inv_freq.size() == static_cast<size_t>(rotary_dim_ / 2),
              "rope table of dimension {} needs {} frequencies, got {}", rotary_dim_, rotary_dim_ / 2,
              freq_.inv_freq.size());
}

void RopeTable::cos_sin(int64_t position, float* cos, float* sin) const {
  const float pos = static_cast<float>(position);
  for (size_t i = 0; i < freq_.inv_freq.size(); ++i) {
    const float angle = pos * freq_.inv_freq[i];
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * freq_.attention_scaling;
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * freq_.attention_scaling;
  }
}

void RopeTable::apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const int64_t* positions) const {
  RETRO_CHECK(head_dim >= rotary_dim_, "head_dim {} is smaller than the rotary dimension {}", head_dim, rotary_dim_);
  const size_t half = static_cast<size_t>(rotary_dim_ / 2);
  std::vector<float> cos(half), sin(half);
  for (int64_t t = 0; t < n_tokens; ++t) {
    cos_sin(positions[t], cos.data(), sin.data());
    for (int h = 0; h < n_heads; ++h) {
      float* row = x + (t * n_heads + h) * static_cast<int64_t>(head_dim);
      for (size_t i = 0; i < half; ++i) {
        const float a = row[i];
        const float b = row[i + half];
        row[i] = a * cos[i] - b * sin[i];
        row[i + half] = b * cos[i] + a * sin[i];
      }
    }
  }
}

void RopeTable::apply(const Tensor& x, std::span<const int64_t> positions) const {
  RETRO_CHECK(x.device().is_cpu() && x.dtype() == DType::kFP32 && x.is_contiguous(),
              "rope expects a contiguous fp32 host tensor, got {}", x.str());
  RETRO_CHECK(x.dim() == 2 || x.dim() == 3,
              "rope expects [n_tokens, n_heads, head_dim] or [n_tokens, head_dim], got {}", x.shape().str());
  RETRO_CHECK(static_cast<int64_t>(positions.size()) == x.size(0), "{} positions for {} tokens", positions.size(),
              x.size(0));
  const int n_heads = x.dim() == 3 ? static_cast<int>(x.size(1)) : 1;
  apply(static_cast<float*>(x.data()), x.size(0), n_heads, static_cast<int>(x.size(-1)), positions.data());
}

}  // namespace retro::runtime
