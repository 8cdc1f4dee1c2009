#include "runtime/needle_eval.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "runtime/core/error.h"
#include "runtime/sampler.h"

namespace retro::runtime {

std::vector<NeedleSample> load_needle_samples(const std::filesystem::path& path, const std::vector<int64_t>& lengths) {
  std::ifstream f(path);
  RETRO_CHECK_KIND(f.good(), ErrorKind::kIo, "cannot open needle samples '{}'", path.string());
  std::vector<NeedleSample> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(f, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    RETRO_CHECK_INPUT(j.is_object(), "{}:{}: not a JSON object", path.string(), line_no);
    for (const char* key : {"id", "context_length", "prompt", "answer"})
      RETRO_CHECK_INPUT(j.contains(key), "{}:{}: missing \"{}\"", path.string(), line_no, key);
    RETRO_CHECK_INPUT(j["prompt"].is_string() && j["answer"].is_string() && j["context_length"].is_number_integer(),
                      "{}:{}: prompt and answer must be strings, context_length an integer", path.string(), line_no);
    NeedleSample s{j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump(), j["context_length"].get<int64_t>(),
                   j["prompt"].get<std::string>(), j["answer"].get<std::string>()};
    if (lengths.empty() || std::find(lengths.begin(), lengths.end(), s.context_length) != lengths.end())
      out.push_back(std::move(s));
  }
  return out;
}

NeedleOutcome run_needle(const Model& model, const Tokenizer& tokenizer, const NeedleSample& sample,
                         attention::AttentionMode mode, const attention::WaveIndexParams& params) {
  std::vector<int32_t> ids = tokenizer.encode(sample.prompt);
  const int n_answer = static_cast<int>(tokenizer.encode(sample.answer, /*add_special_tokens=*/false).size());
  const int n_new = std::max(n_answer + 1, 8);
  auto seq = model.new_sequence(mode, params);
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  model.prefill(*seq, ids, logits.data());
  std::vector<int32_t> out;
  for (int i = 0; i < n_new; ++i) {
    out.push_back(argmax(logits));
    if (i + 1 < n_new) model.decode(*seq, out.back(), logits.data());
  }
  NeedleOutcome r;
  r.continuation = tokenizer.decode(out, /*skip_special_tokens=*/true);
  r.correct = r.continuation.rfind(sample.answer, 0) == 0;
  return r;
}

}  // namespace retro::runtime
