#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "runtime/core/error.h"

namespace retro::runtime {

double GenerationResult::decode_tokens_per_second() const {
  // The first token comes from the prefill's logits: decode time covers the other tokens.
  size_t decoded = tokens.size() > 1 ? tokens.size() - 1 : 0;
  return decode_seconds > 0.0 ? static_cast<double>(decoded) / decode_seconds : 0.0;
}

GenerationResult generate(const Model& model, SequenceState& seq, const GenerationRequest& request,
                          const std::function<void(int32_t)>& on_token) {
  RETRO_CHECK(request.max_new_tokens >= 0, "max_new_tokens must be >= 0, got {}", request.max_new_tokens);
  RETRO_CHECK(seq.length() == 0, "generate needs a fresh sequence (this one holds {} tokens)", seq.length());
  using Clock = std::chrono::steady_clock;
  GenerationResult result;
  Sampler sampler(request.sampling);
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  std::vector<float> logits(vocab);

  auto t0 = Clock::now();
  model.prefill(seq, request.prompt, logits.data(), request.forward);
  auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  result.first_logits = logits;
  result.finish_reason = "length";
  for (int i = 0; i < request.max_new_tokens; ++i) {
    int32_t token = sampler.sample(logits);
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    if (std::find(request.stop_ids.begin(), request.stop_ids.end(), token) != request.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (i + 1 < request.max_new_tokens) model.decode(seq, token, logits.data());
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return result;
}

}  // namespace retro::runtime
