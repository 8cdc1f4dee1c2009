#pragma once
// Needle-in-a-haystack retrieval: prompts with hidden key/value facts and a question; the answer is
// right when the greedy continuation starts with the expected value. Reads the JSON-lines format
// {"id", "context_length", "prompt", "answer", ...}.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "attention/kv_store.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace retro::runtime {

struct NeedleSample {
  std::string id;
  int64_t context_length = 0;
  std::string prompt;
  std::string answer;
};

// Samples whose context_length is in `lengths` (all when empty). Malformed lines are errors naming
// the file and line.
std::vector<NeedleSample> load_needle_samples(const std::filesystem::path& path,
                                              const std::vector<int64_t>& lengths = {});

struct NeedleOutcome {
  std::string continuation;  // decoded greedy continuation
  bool correct = false;
};

// Greedy continuation of max(answer tokens + 1, 8) tokens with the given attention.
NeedleOutcome run_needle(const Model& model, const Tokenizer& tokenizer, const NeedleSample& sample,
                         attention::AttentionMode mode, const attention::WaveIndexParams& params = {});

}  // namespace retro::runtime
