// The coordinator on one process (a group of one), on the trained needle-llama-tiny: a mix of
// requests of different lengths, more than the engine's slots and its KV pool hold at once, is
// admitted, interleaved (prompt chunks beside decodes) and finished, and every request generates
// exactly the tokens it generates alone, with dense and with wave attention.

#include <gtest/gtest.h>

#include "tests/parallel/request_mix.h"

#include <algorithm>
#include <memory>

#include "parallel/communicator.h"
#include "runtime/core/allocator.h"
#include "runtime/open_model.h"

namespace retro::parallel {
namespace {

class NeedleCoordinator : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(test::kNeedleModel / "config.json")) return;
    host_ = make_host_allocator().release();
    runtime::ModelConfig config;
    auto weights = runtime::open_model(test::kNeedleModel.string(), &config);
    model_ = new runtime::Model(config, *weights, *host_);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete host_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "test model not found at " << test::kNeedleModel;
  }

  // Runs the mix through a coordinator and each request alone; the tokens must be the same.
  static void expect_same_as_alone(const runtime::EngineParams& params, const SchedulerParams& scheduling,
                                   SchedulerStats* stats) {
    const std::vector<Request> mix = test::request_mix();
    runtime::CpuEngine engine(*model_, params);
    SelfCommunicator control;
    const std::map<RequestId, RequestResult> results = test::run_coordinated(engine, control, scheduling, mix, stats);
    ASSERT_EQ(results.size(), mix.size());
    for (size_t i = 0; i < mix.size(); ++i) {
      const RequestResult& got = results.at(i);
      const std::vector<int32_t> alone = test::run_alone(*model_, params, mix[i]);
      EXPECT_EQ(got.tokens, alone) << "request " << i << " (" << mix[i].prompt.size() << " prompt tokens)";
      const bool stopped = !alone.empty() && alone.back() == 2;
      EXPECT_EQ(got.finish_reason, stopped ? "stop" : "length") << "request " << i;
    }
    // The needle request found its number and stopped; every slot was released, every byte returned.
    EXPECT_EQ(results.at(0).finish_reason, "stop");
    for (int s = 0; s < params.max_slots; ++s) EXPECT_EQ(engine.length(s), 0) << "slot " << s;
    EXPECT_EQ(engine.kv_pool().accounting().total().live_bytes, 0u);
    if (params.kv_capacity_bytes != 0) {
      EXPECT_LE(engine.kv_pool().accounting().total().peak_bytes, params.kv_capacity_bytes);
    }
  }

  static inline Allocator* host_ = nullptr;
  static inline runtime::Model* model_ = nullptr;
};

TEST_F(NeedleCoordinator, DenseMixWaitsForSlotsAndKvAndMatchesEachRequestAlone) {
  runtime::EngineParams params;
  params.max_slots = 3;
  params.prefill_chunk = 128;
  // Room in the KV pool for the two longest requests at once, and not for them and a third.
  const runtime::SequenceKvCost cost = runtime::sequence_kv_cost(*model_, params.attention, params.wave);
  params.kv_capacity_bytes = cost.per_token * (512 + 12 + 260 + 6) + 2 * cost.per_sequence;
  SchedulerStats stats;
  expect_same_as_alone(params, {.max_running = 0, .max_batched_tokens = 160}, &stats);
  EXPECT_GT(stats.waited, 0);
  EXPECT_GT(stats.mixed_steps, 0);
  EXPECT_LE(stats.max_step_tokens, 160);
}

TEST_F(NeedleCoordinator, WaveMixMatchesEachRequestAlone) {
  runtime::EngineParams params;
  params.max_slots = 2;
  params.prefill_chunk = 96;
  params.attention = attention::AttentionMode::kWave;
  params.wave = test_support::small_wave_budgets();
  SchedulerStats stats;
  expect_same_as_alone(params, {.max_running = 0, .max_batched_tokens = 200}, &stats);
  EXPECT_GT(stats.waited, 0);
  EXPECT_GT(stats.mixed_steps, 0);
}

}  // namespace
}  // namespace retro::parallel
