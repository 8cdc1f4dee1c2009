// The coordinator over the GPU model (runtime/cuda/gpu_engine.h) on needle-llama-tiny: a mix of
// requests, more than the slots, gives each request the tokens it gets alone on the GPU model, with
// dense attention (prompts in chunks beside decodes) and wave attention (whole prompts). Finished
// sequences leave holes the engine closes by swapping slots, so batched decodes always run slots
// [0, n). Skipped without a GPU.

#include <gtest/gtest.h>

#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/coordinator.h"
#include "runtime/cuda/gpu_engine.h"
#include "runtime/cuda/gpu_model.h"
#include "runtime/open_model.h"
#include "runtime/sampler.h"
#include "tests/parallel/request_mix.h"

namespace retro::parallel {
namespace {

using runtime::cuda::GpuEngine;
using runtime::cuda::GpuModel;
using runtime::cuda::GpuModelOptions;

// What `request` generates alone in slot 0 of `model`: greedy or its own seeded sampler, until a
// stop token or max_new_tokens.
std::vector<int32_t> run_alone(GpuModel& model, const Request& request) {
  std::vector<int32_t> out;
  if (request.max_new_tokens == 0) return out;
  std::vector<float> logits(size_t(model.config().vocab_size));
  model.reset(0);
  model.prefill(0, request.prompt, logits.data());
  runtime::Sampler sampler(request.sampling);
  while (true) {
    const int32_t token = sampler.sample(logits);
    out.push_back(token);
    const bool stop = std::find(request.stop_ids.begin(), request.stop_ids.end(), token) != request.stop_ids.end();
    if (stop || int(out.size()) == request.max_new_tokens) break;
    model.decode(token, logits.data());
  }
  model.reset(0);
  return out;
}

void expect_same_as_alone(const GpuModelOptions& options, int64_t max_batched_tokens) {
  runtime::ModelConfig config;
  auto weights = runtime::open_model(test::kNeedleModel.string(), &config);
  constexpr int64_t kMaxTokens = 600;
  GpuModel coordinated(config, *weights, 0, kMaxTokens, options);
  GpuModelOptions one = options;
  one.max_batch = 1;
  GpuModel alone(config, *weights, 0, kMaxTokens, one);
  const std::vector<Request> mix = test::request_mix();
  GpuEngine engine(coordinated);
  SelfCommunicator control;
  SchedulerStats stats;
  const std::map<RequestId, RequestResult> results =
      test::run_coordinated(engine, control, {.max_running = 0, .max_batched_tokens = max_batched_tokens}, mix, &stats);
  ASSERT_EQ(results.size(), mix.size());
  for (size_t i = 0; i < mix.size(); ++i)
    EXPECT_EQ(results.at(i).tokens, run_alone(alone, mix[i])) << "request " << i << " (" << mix[i].prompt.size()
                                                               << " prompt tokens)";
  EXPECT_EQ(results.at(0).finish_reason, "stop");  // the needle request found its number
  EXPECT_GT(stats.waited, 0);
  for (int s = 0; s < engine.info().max_slots; ++s) EXPECT_EQ(engine.length(s), 0) << "slot " << s;
}

class GpuCoordinator : public testing::Test {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
    if (!std::filesystem::exists(test::kNeedleModel / "config.json"))
      GTEST_SKIP() << "test model not found at " << test::kNeedleModel;
  }
};

TEST_F(GpuCoordinator, DenseMixMatchesEachRequestAlone) {
  GpuModelOptions o;
  o.max_batch = 3;
  o.max_chunk = 128;
  expect_same_as_alone(o, /*max_batched_tokens=*/160);
}

TEST_F(GpuCoordinator, WaveMixMatchesEachRequestAlone) {
  GpuModelOptions o;
  o.max_batch = 2;
  o.max_chunk = 128;
  o.attention = attention::AttentionMode::kWave;
  expect_same_as_alone(o, /*max_batched_tokens=*/600);
}

}  // namespace
}  // namespace retro::parallel

#endif  // RETRO_WITH_CUDA
