#pragma once
// Perplexity of a text under a model, and how far wave attention's next-token distributions land
// from dense attention's on the same tokens. Used by tests and `retroinfer bench perplexity`.

#include <cstdint>
#include <span>
#include <vector>

#include "attention/kv_store.h"
#include "runtime/model.h"

namespace retro::runtime {

struct WaveGap {
  int64_t context = 0;     // tokens of context at the last scored position
  int64_t scored = 0;      // positions compared (the last `scored` before `context`)
  double dense_ppl = 0.0;  // perplexity of those positions' targets, dense attention
  double wave_ppl = 0.0;   // the same with wave attention
  double mean_kl = 0.0;    // mean KL(p_dense || p_wave) over those positions, nats
  double wave_seconds = 0.0;
};

struct PerplexityReport {
  int64_t tokens = 0;       // targets scored by the dense pass (tokens.size() - 1 up to max context)
  double dense_ppl = 0.0;   // over every target of the dense pass
  double dense_seconds = 0.0;
  std::vector<WaveGap> wave;  // one per requested context
};

// One dense pass over the first max(contexts) tokens (dense perplexity over all of them), then for
// each context c one wave pass: dense prefill of c - 1 - scored tokens, the wave index built, the
// last `scored` tokens decoded one by one with wave attention and compared to the dense pass.
PerplexityReport measure_perplexity(const Model& model, std::span<const int32_t> tokens,
                                    std::span<const int64_t> contexts, int64_t scored,
                                    const attention::WaveIndexParams& params, const ForwardOptions& options = {});

}  // namespace retro::runtime
