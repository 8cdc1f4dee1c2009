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

// The token that uniform u in [0, 1) picks from logits [vocab] under params (greedy ignores u):
// candidates sorted by logit (descending, lowest id first on ties), cut to the top_k best, softmax of
// logit / temperature over them (in double), cut to the shortest prefix whose mass reaches top_p
// (at least one token), then the first candidate whose inclusive cumulative mass exceeds
// u * kept mass. The CPU twin of runtime/cuda/sampling.h, which picks the same token for the same u.
// A NaN logit is an error (it means the forward pass broke).
int32_t sample_token(std::span<const float> logits, const SamplingParams& params, double u);

// One sampler per sequence: its RNG state advances with every sampled token, so a run is
// reproducible from the seed alone.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // logits: [vocab] fp32; sample_token() with the next uniform of this sampler's stream.
  int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }
  // The next number of the stream, [0, 1), the same sequence on every platform for a given seed
  // (what sample() consumes; a GPU sampler is fed these for the same tokens). Greedy draws none.
  double next_uniform();

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest logit, lowest index on ties; throws on NaN or empty input.
int32_t argmax(std::span<const float> logits);

}  // namespace retro::runtime
