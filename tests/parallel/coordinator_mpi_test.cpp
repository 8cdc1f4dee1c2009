// The coordinator across two ranks (mpirun -np 2, tp 2), each holding an engine over its half of
// needle-llama-tiny: rank 0 schedules, samples and broadcasts the plans, rank 1 follows them, and
// every request generates the tokens it generates alone on the same shards, with dense and with wave
// attention. Workers leave when the coordinator goes away, and ranks whose engines differ stop
// together at the start.

#include <gtest/gtest.h>

#include "tests/parallel/request_mix.h"

#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/sharding.h"
#include "parallel/tensor_parallel.h"
#include "parallel/world_config.h"
#include "runtime/core/allocator.h"
#include "runtime/open_model.h"

namespace retro::parallel {
namespace {

class TensorParallelCoordinator : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (mpi_world().size != 2 || !std::filesystem::exists(test::kNeedleModel / "config.json")) return;
    host_ = make_host_allocator();
    const WorldConfig world = make_world_config(mpi_world(), /*requested_tp=*/2);
    model_group_ = make_tp_host_communicator(world);
    control_ = make_tp_host_communicator(world);
    collectives_ = std::make_unique<CommunicatorCollectives>(*model_group_);
    runtime::ModelConfig config;
    auto weights = runtime::open_model(test::kNeedleModel.string(), &config);
    shard_ = load_model_shard(config, *weights, *host_, plan_sharding(config, world.tp, world.tp_rank),
                              collectives_.get());
  }
  static void TearDownTestSuite() {
    shard_.reset();
    collectives_.reset();
    control_.reset();
    model_group_.reset();
    host_.reset();
  }
  void SetUp() override {
    if (mpi_world().size != 2) GTEST_SKIP() << "needs mpirun -np 2";
    if (shard_ == nullptr) GTEST_SKIP() << "test model not found at " << test::kNeedleModel;
  }

  // Every rank runs each request alone (collectively), then the mix through the coordinator on
  // rank 0 and run_worker on rank 1. Failures are EXPECTs: a rank that returned early would leave
  // the other waiting. Four of the mix's requests (the needle, the seeded sampler, 37 and 75
  // tokens) keep the two-rank run short.
  static void expect_same_as_alone(const runtime::EngineParams& params) {
    const std::vector<Request> all = test::request_mix();
    const std::vector<Request> mix = {all[0], all[1], all[3], all[4]};
    std::vector<std::vector<int32_t>> alone;
    for (const Request& r : mix) alone.push_back(test::run_alone(*shard_, params, r));
    runtime::CpuEngine engine(*shard_, params);
    if (control_->rank() != 0) {
      run_worker(engine, *control_);
      return;
    }
    SchedulerStats stats;
    const std::map<RequestId, RequestResult> results =
        test::run_coordinated(engine, *control_, {.max_running = 0, .max_batched_tokens = 160}, mix, &stats);
    ASSERT_EQ(results.size(), mix.size());
    for (size_t i = 0; i < mix.size(); ++i)
      EXPECT_EQ(results.at(i).tokens, alone[i]) << "request " << i << " (" << mix[i].prompt.size() << " prompt tokens)";
    EXPECT_EQ(results.at(0).finish_reason, "stop");
    EXPECT_GT(stats.waited, 0);
    EXPECT_GT(stats.mixed_steps, 0);
  }

  static inline std::unique_ptr<Allocator> host_;
  static inline std::unique_ptr<Communicator> model_group_;  // the shards' all-reduces and gathers
  static inline std::unique_ptr<Communicator> control_;      // the plans
  static inline std::unique_ptr<CommunicatorCollectives> collectives_;
  static inline std::unique_ptr<runtime::Model> shard_;
};

TEST_F(TensorParallelCoordinator, DenseMixOnTwoRanksMatchesEachRequestAlone) {
  runtime::EngineParams params;
  params.max_slots = 2;
  params.prefill_chunk = 128;
  expect_same_as_alone(params);
}

TEST_F(TensorParallelCoordinator, WaveMixOnTwoRanksMatchesEachRequestAlone) {
  runtime::EngineParams params;
  params.max_slots = 2;
  params.prefill_chunk = 128;
  params.attention = attention::AttentionMode::kWave;
  params.wave = test_support::small_wave_budgets();
  expect_same_as_alone(params);
}

TEST_F(TensorParallelCoordinator, WorkersLeaveWhenTheCoordinatorGoesAway) {
  runtime::CpuEngine engine(*shard_, {});
  if (control_->rank() != 0) {
    run_worker(engine, *control_);  // returns on the plan ~Coordinator sends
    return;
  }
  Coordinator coordinator(engine, *control_, {});
  Request r = test::request_mix()[1];
  r.max_new_tokens = 2;
  coordinator.submit(r);
  coordinator.submit(test::request_mix()[2]);
  std::vector<RequestResult> done;
  coordinator.run([&](const RequestResult& result) { done.push_back(result); });
  EXPECT_EQ(done.size(), 2u);
}

TEST_F(TensorParallelCoordinator, RanksWhoseEnginesDifferStopTogether) {
  runtime::EngineParams params;
  params.max_slots = control_->rank() == 0 ? 2 : 3;
  runtime::CpuEngine engine(*shard_, params);
  const std::string msg = test_support::error_of(
      [&] {
        if (control_->rank() == 0) {
          Coordinator coordinator(engine, *control_, {});
        } else {
          run_worker(engine, *control_);
        }
      },
      ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("rank 1's engine (3 slots"), std::string::npos) << msg;
  EXPECT_NE(msg.find("differs from rank 0's (2 slots"), std::string::npos) << msg;
}

}  // namespace
}  // namespace retro::parallel
