#include "runtime/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "runtime/core/error.h"

namespace retro::runtime {

namespace {

// log-softmax(logits)[target]; fills `all` with the whole log-softmax when given.
double log_prob(std::span<const float> logits, int32_t target, std::vector<double>* all) {
  double m = *std::max_element(logits.begin(), logits.end()), s = 0;
  for (float x : logits) s += std::exp(double(x) - m);
  const double lse = m + std::log(s);
  if (all != nullptr) {
    all->resize(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) (*all)[i] = double(logits[i]) - lse;
  }
  return double(logits[size_t(target)]) - lse;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

PerplexityReport measure_perplexity(const Model& model, std::span<const int32_t> tokens,
                                    std::span<const int64_t> contexts, int64_t scored,
                                    const attention::WaveIndexParams& params, const ForwardOptions& options) {
  RETRO_CHECK(!contexts.empty(), "perplexity: no context length given");
  RETRO_CHECK(scored > 0, "perplexity: scored positions must be positive, got {}", scored);
  const int64_t max_context = *std::max_element(contexts.begin(), contexts.end());
  RETRO_CHECK(max_context <= static_cast<int64_t>(tokens.size()), "perplexity: context {} exceeds the text's {} tokens",
              max_context, tokens.size());
  for (int64_t c : contexts)
    RETRO_CHECK(c - 1 - scored >= 1, "perplexity: context {} leaves no prefix before {} scored tokens", c, scored);

  auto scored_here = [&](int64_t pos) {
    return std::any_of(contexts.begin(), contexts.end(), [&](int64_t c) { return pos >= c - 1 - scored && pos < c - 1; });
  };
  PerplexityReport report;
  std::map<int64_t, std::vector<double>> dense_logprobs;  // scored position -> log-softmax
  double nll = 0;
  auto t0 = std::chrono::steady_clock::now();
  {
    auto seq = model.new_sequence(attention::AttentionMode::kDense);
    const auto prefix = tokens.first(size_t(max_context - 1));
    model.score(*seq, prefix, static_cast<int64_t>(prefix.size()), [&](int64_t pos, std::span<const float> logits) {
      std::vector<double> lp;
      const bool keep = scored_here(pos);
      nll -= log_prob(logits, tokens[size_t(pos + 1)], keep ? &lp : nullptr);
      if (keep) dense_logprobs[pos] = std::move(lp);
    }, options);
  }
  report.dense_seconds = seconds_since(t0);
  report.tokens = max_context - 1;
  report.dense_ppl = std::exp(nll / double(report.tokens));

  for (int64_t c : contexts) {
    WaveGap gap;
    gap.context = c;
    gap.scored = scored;
    const int64_t first = c - 1 - scored;
    double wave_nll = 0, dense_nll = 0, kl = 0;
    auto t = std::chrono::steady_clock::now();
    auto seq = model.new_sequence(attention::AttentionMode::kWave, params);
    model.score(*seq, tokens.first(size_t(c - 1)), first, [&](int64_t pos, std::span<const float> logits) {
      if (pos < first) return;
      std::vector<double> lq;
      const int32_t target = tokens[size_t(pos + 1)];
      wave_nll -= log_prob(logits, target, &lq);
      const std::vector<double>& lp = dense_logprobs.at(pos);
      dense_nll -= lp[size_t(target)];
      for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
    }, options);
    gap.wave_seconds = seconds_since(t);
    gap.dense_ppl = std::exp(dense_nll / double(scored));
    gap.wave_ppl = std::exp(wave_nll / double(scored));
    gap.mean_kl = kl / double(scored);
    report.wave.push_back(gap);
  }
  return report;
}

}  // namespace retro::runtime
