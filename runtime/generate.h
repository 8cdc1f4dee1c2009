#pragma once
// Generation loop for one sequence: prefill, then sample and decode until a stop token or the token
// budget, streaming each token to a callback.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/model.h"
#include "runtime/sampler.h"

namespace retro::runtime {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_new_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  ForwardOptions forward;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (a stop token included)
  std::string finish_reason;    // "stop" or "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  std::vector<float> first_logits;  // logits after the prompt: [vocab]

  double decode_tokens_per_second() const;
};

// Runs `request` on a fresh sequence state `seq` (created by model.new_sequence). on_token (optional)
// sees every generated token as soon as it is sampled.
GenerationResult generate(const Model& model, SequenceState& seq, const GenerationRequest& request,
                          const std::function<void(int32_t)>& on_token = {});

}  // namespace retro::runtime
