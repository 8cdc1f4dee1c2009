#pragma once
// What the coordinator tests run on the trained needle-llama-tiny: a mix of requests of different
// prompt lengths and budgets (greedy, and one seeded sampler), and the tokens each gives alone
// through the single-request loop (runtime/generate.h).

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include "parallel/coordinator.h"
#include "parallel/scheduler.h"
#include "runtime/cpu_engine.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "tests/test_support.h"

namespace retro::parallel::test {

inline const std::filesystem::path kNeedleModel = test_support::kNeedleModelDir;

// The 512-token "short" prompt of reference.json.
inline std::vector<int32_t> needle_prompt() {
  std::ifstream f(kNeedleModel / "reference.json");
  for (const auto& entry : nlohmann::json::parse(f))
    if (entry["name"] == "short") return entry["token_ids"].get<std::vector<int32_t>>();
  return {};
}

// Six requests: prompts of 512, 37, 260, 130, 75 and 20 tokens (the first asks for a needle and
// ends on the end-of-sequence token), one sampled with a seed, one with no new tokens.
inline std::vector<Request> request_mix() {
  const std::vector<int32_t> prompt = needle_prompt();
  auto make = [&](size_t tokens, int max_new_tokens) {
    Request r;
    r.prompt.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(tokens));
    r.max_new_tokens = max_new_tokens;
    r.stop_ids = {2};
    return r;
  };
  std::vector<Request> mix = {make(512, 12), make(37, 12), make(260, 6), make(130, 9), make(75, 1), make(20, 0)};
  mix[3].sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.95f, .seed = 11};
  return mix;
}

// The tokens `request` generates alone on a fresh sequence, with the engine's attention and chunks.
// Collective over a tensor-parallel group when `model` is a shard.
inline std::vector<int32_t> run_alone(const runtime::Model& model, const runtime::EngineParams& engine,
                                      const Request& request) {
  runtime::GenerationRequest g;
  g.prompt = request.prompt;
  g.max_new_tokens = request.max_new_tokens;
  g.sampling = request.sampling;
  g.stop_ids = request.stop_ids;
  g.forward.prefill_chunk = engine.prefill_chunk;
  auto seq = model.new_sequence(engine.attention, engine.wave);
  return runtime::generate(model, *seq, g).tokens;
}

// Every request of `requests` through a coordinator over `engine`; results by request id.
inline std::map<RequestId, RequestResult> run_coordinated(runtime::Engine& engine, Communicator& control,
                                                          const SchedulerParams& params,
                                                          const std::vector<Request>& requests,
                                                          SchedulerStats* stats = nullptr) {
  Coordinator coordinator(engine, control, params);
  for (const Request& r : requests) coordinator.submit(r);
  std::map<RequestId, RequestResult> results;
  coordinator.run([&](const RequestResult& r) { results[r.id] = r; });
  if (stats != nullptr) *stats = coordinator.scheduler().stats();
  coordinator.shutdown();
  return results;
}

}  // namespace retro::parallel::test
