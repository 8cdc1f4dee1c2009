#pragma once
// Next-token sampling from logits: greedy, temperature, top-k, top-p, seeded.

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace retro::runtime {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut; must lie in (0, 1]
  uint64_t seed = 0;

  // Throws retro::Error naming the bad field.
  void validate() const;
  bool greedy() const { return temperature <= 0.0f; }
};

// One sampler per sequence: its RNG state advances with every sampled token, so a run is
// reproducible from the seed alone.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // logits: [vocab] fp32. A NaN logit is an error (it means the forward pass broke).
  int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  double next_uniform();  // [0, 1), the same sequence on every platform for a given seed

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // scratch: candidate ids
  std::vector<double> probs_;   // scratch: candidate probabilities
};

// Index of the largest logit, lowest index on ties; throws on NaN or empty input.
int32_t argmax(std::span<const float> logits);

}  // namespace retro::runtime
