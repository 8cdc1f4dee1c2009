#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/core/error.h"

namespace retro::runtime {

void SamplingParams::validate() const {
  RETRO_CHECK(std::isfinite(temperature), "temperature must be finite, got {}", temperature);
  RETRO_CHECK(top_k >= 0, "top_k must be >= 0, got {}", top_k);
  RETRO_CHECK(top_p > 0.0f && top_p <= 1.0f, "top_p must lie in (0, 1], got {}", top_p);
}

int32_t argmax(std::span<const float> logits) {
  RETRO_CHECK(!logits.empty(), "argmax of empty logits");
  int32_t best = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    RETRO_CHECK_KIND(!std::isnan(logits[i]), ErrorKind::kInternal, "logit {} is NaN", i);
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

double Sampler::next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(std::span<const float> logits) {
  if (params_.greedy()) return argmax(logits);
  return sample_token(logits, params_, next_uniform());
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& params, double u) {
  if (params.greedy()) return argmax(logits);
  RETRO_CHECK(!logits.empty(), "sampling from empty logits");
  const size_t vocab = logits.size();
  for (size_t i = 0; i < vocab; ++i)
    RETRO_CHECK_KIND(!std::isnan(logits[i]), ErrorKind::kInternal, "logit {} is NaN", i);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);

  // Candidates sorted by logit (descending, lowest id first on ties), cut to top-k.
  size_t n = vocab;
  auto by_logit = [&](int32_t a, int32_t b) {
    float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < vocab) {
    n = static_cast<size_t>(params.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }

  // Softmax of logit / T over the candidates, in double so tiny tails keep their order.
  const double inv_t = 1.0 / params.temperature;
  const double top = logits[static_cast<size_t>(order[0])];
  std::vector<double> probs(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    probs[i] = std::exp((logits[static_cast<size_t>(order[i])] - top) * inv_t);
    sum += probs[i];
  }
  // Nucleus: the shortest prefix whose mass reaches top_p of the candidates' mass.
  if (params.top_p < 1.0f) {
    const double target = static_cast<double>(params.top_p) * sum;
    double cumulative = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cumulative += probs[i];
      if (cumulative >= target) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    sum = std::accumulate(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(n), 0.0);
  }
  double rest = u * sum;
  for (size_t i = 0; i < n; ++i) {
    rest -= probs[i];
    if (rest < 0.0) return order[i];
  }
  return order[n - 1];  // u landed on the rounding edge
}

}  // namespace retro::runtime
