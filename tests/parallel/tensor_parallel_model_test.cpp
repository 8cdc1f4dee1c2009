// The CPU model sharded over the ranks of an mpirun launch (tp = every rank) against the whole model computed on
// each rank alone: the same logits up to fp32 summation order and the same greedy tokens, with
// dense and with wave attention, on the trained needle-llama-tiny; and on a synthetic model with
// every bias, a tied LM head and an uneven vocabulary split.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/sharding.h"
#include "parallel/tensor_parallel.h"
#include "parallel/world_config.h"
#include "runtime/model.h"
#include "runtime/model_presets.h"
#include "runtime/open_model.h"
#include "runtime/sampler.h"
#include "runtime/synthetic_weights.h"

namespace retro::parallel {
namespace {

using attention::AttentionMode;
using runtime::Model;

const std::filesystem::path kModelDir = test_support::kNeedleModelDir;

// Partial products summed in another order: fp32 rounding, far below the 2e-3 that separates this
// forward from transformers' (tests/runtime/model_test.cpp).
constexpr float kLogitTolerance = 2e-4f;

struct Pair {
  std::unique_ptr<Model> whole;  // this rank alone
  std::unique_ptr<Model> shard;  // this rank's half, joined over the group
};

class TensorParallelModel : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (mpi_world().size < 2) return;
    host_ = make_host_allocator();
    world_ = make_world_config(mpi_world(), /*requested_tp=*/0);
    comm_ = make_tp_host_communicator(world_);
    collectives_ = std::make_unique<CommunicatorCollectives>(*comm_);
  }
  static void TearDownTestSuite() {
    collectives_.reset();
    comm_.reset();
    host_.reset();
  }
  void SetUp() override {
    if (mpi_world().size < 2) GTEST_SKIP() << "needs mpirun -np 2 (or more)";
  }

  static Pair load(const runtime::ModelConfig& config, const runtime::WeightSource& weights) {
    Pair p;
    p.whole = std::make_unique<Model>(config, weights, *host_);
    p.shard = load_model_shard(config, weights, *host_, plan_sharding(config, world_.tp, world_.tp_rank),
                               collectives_.get());
    return p;
  }

  // Prompt, then `steps` greedy decode steps fed the whole model's token. Every logit of both
  // models is compared at every step, and the shard's logits must be the same bytes on all ranks.
  // Collectives follow every check, so failures are EXPECTs: a rank that returned early would
  // leave the other waiting.
  static void expect_same_generation(const Pair& p, AttentionMode mode, const attention::WaveIndexParams& params,
                                     const std::vector<int32_t>& prompt, int steps, int64_t prefill_chunk) {
    const size_t vocab = static_cast<size_t>(p.whole->config().vocab_size);
    auto a = p.whole->new_sequence(mode, params);
    auto b = p.shard->new_sequence(mode, params);
    std::vector<float> la(vocab, NAN), lb(vocab, NAN);
    p.whole->prefill(*a, prompt, la.data(), {.prefill_chunk = prefill_chunk});
    p.shard->prefill(*b, prompt, lb.data(), {.prefill_chunk = prefill_chunk});
    float worst = 0.0f;
    for (int step = 0; step <= steps; ++step) {
      float diff = 0.0f;
      for (size_t i = 0; i < vocab; ++i) diff = std::max(diff, std::fabs(la[i] - lb[i]));
      EXPECT_LT(diff, kLogitTolerance) << "step " << step;  // NaN fails too
      worst = std::max(worst, diff);
      const int32_t want = runtime::argmax(la);
      EXPECT_EQ(runtime::argmax(lb), want) << "greedy token of step " << step;
      expect_same_on_every_rank(lb);
      if (step == steps) break;
      p.whole->decode(*a, want, la.data());
      p.shard->decode(*b, want, lb.data());
    }
    testing::Test::RecordProperty(std::string("max_abs_logit_diff_") + attention::attention_mode_name(mode),
                                  std::to_string(worst));
    if (mode == AttentionMode::kWave) {
      // The shard's wave index holds its KV head only, and the decode steps above were sparse.
      EXPECT_EQ(b->layer_kv(0).shape().num_kv_heads, p.whole->config().num_kv_heads / world_.tp);
      EXPECT_NE(b->layer_kv(0).index(0), nullptr);
      const attention::WaveStepStats s = b->layer_kv(0).last_stats();
      EXPECT_TRUE(s.wave);
      EXPECT_GT(s.estimated_clusters + s.dropped_clusters, 0) << "wave attention retrieved every cluster";
    }
  }

  static void expect_same_on_every_rank(const std::vector<float>& logits) {
    const int64_t n = static_cast<int64_t>(logits.size());
    std::vector<float> all(logits.size() * static_cast<size_t>(comm_->size()));
    comm_->all_gather(Tensor(const_cast<float*>(logits.data()), DType::kFP32, {n}),
                      Tensor(all.data(), DType::kFP32, {n * comm_->size()}));
    for (int r = 1; r < comm_->size(); ++r)
      EXPECT_EQ(std::memcmp(all.data(), all.data() + r * n, logits.size() * sizeof(float)), 0)
          << "rank " << r << " holds other logits than rank 0";
  }

  static std::vector<int32_t> needle_prompt() {
    std::ifstream f(kModelDir / "reference.json");
    for (const auto& entry : nlohmann::json::parse(f))
      if (entry["name"] == "short") return entry["token_ids"].get<std::vector<int32_t>>();
    return {};
  }

  static inline std::unique_ptr<Allocator> host_;
  static inline WorldConfig world_;
  static inline std::unique_ptr<Communicator> comm_;
  static inline std::unique_ptr<CommunicatorCollectives> collectives_;
};

TEST_F(TensorParallelModel, NeedleModelOnTwoRanksMatchesTheWholeModelWithDenseAndWaveAttention) {
  if (world_.tp != 2) GTEST_SKIP() << "the test model's 2 KV heads split over 2 ranks only";
  if (!std::filesystem::exists(kModelDir / "config.json")) GTEST_SKIP() << "test model not found at " << kModelDir;
  runtime::ModelConfig config;
  auto weights = runtime::open_model(kModelDir.string(), &config);
  Pair p = load(config, *weights);
  EXPECT_EQ(p.shard->shard().kv_heads.size(), 1);
  EXPECT_EQ(p.shard->shard().q_heads.size(), 4);
  const std::vector<int32_t> prompt = needle_prompt();  // 512 tokens
  ASSERT_EQ(prompt.size(), 512u);
  expect_same_generation(p, AttentionMode::kDense, {}, prompt, /*steps=*/8, /*prefill_chunk=*/200);
  // Small budgets, so that retrieval, estimation and dropped clusters all take part at 512 tokens.
  expect_same_generation(p, AttentionMode::kWave, test_support::small_wave_budgets(), prompt, /*steps=*/8,
                         /*prefill_chunk=*/512);
}

// score() gathers the logits of every position of a chunk ([n, vocab] from [n, vocab / 2] blocks).
TEST_F(TensorParallelModel, ScoreGathersTheLogitsOfEveryPosition) {
  if (world_.tp != 2) GTEST_SKIP() << "the test model's 2 KV heads split over 2 ranks only";
  if (!std::filesystem::exists(kModelDir / "config.json")) GTEST_SKIP() << "test model not found at " << kModelDir;
  runtime::ModelConfig config;
  auto weights = runtime::open_model(kModelDir.string(), &config);
  Pair p = load(config, *weights);
  std::vector<int32_t> tokens = needle_prompt();
  tokens.resize(72);
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  std::vector<std::vector<float>> want, got;
  auto keep = [](std::vector<std::vector<float>>& out) {
    return [&out](int64_t, std::span<const float> l) { out.emplace_back(l.begin(), l.end()); };
  };
  auto a = p.whole->new_sequence(AttentionMode::kDense);
  auto b = p.shard->new_sequence(AttentionMode::kDense);
  p.whole->score(*a, tokens, /*dense_prefix=*/64, keep(want), {.prefill_chunk = 24});
  p.shard->score(*b, tokens, /*dense_prefix=*/64, keep(got), {.prefill_chunk = 24});
  EXPECT_EQ(got.size(), tokens.size());
  for (size_t t = 0; t < std::min(want.size(), got.size()); ++t)
    for (size_t i = 0; i < vocab; ++i) EXPECT_NEAR(got[t][i], want[t][i], kLogitTolerance) << "position " << t;
}

// Biases are added once (the row-parallel ones by group rank 0 only), a tied LM head reads this
// rank's rows of the embedding, and 255 vocabulary rows split 128 + 127.
TEST_F(TensorParallelModel, BiasesTiedHeadAndUnevenVocabularyMatchTheWholeModel) {
  if (world_.tp != 2) GTEST_SKIP() << "written for 2 ranks";
  runtime::ModelConfig config = runtime::preset_config("tiny");
  config.attention_bias = config.attention_out_bias = config.mlp_bias = true;
  config.tie_word_embeddings = true;
  config.vocab_size = 255;
  runtime::SyntheticWeightSource weights(config, /*seed=*/3);
  Pair p = load(config, weights);
  EXPECT_EQ(p.shard->shard().vocab.size(), world_.tp_rank == 0 ? 128 : 127);
  std::vector<int32_t> prompt(40);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 11) % 255);
  expect_same_generation(p, AttentionMode::kDense, {}, prompt, /*steps=*/4, /*prefill_chunk=*/16);
}

// Llama-3-70B's heads (64 query / 8 KV heads of 128) on a shortened, narrowed model, split over every
// rank of the launch (up to tp 8: `mpirun -np 8`, one KV head each), with an uneven vocabulary;
// dense and wave attention.
TEST_F(TensorParallelModel, SeventyBHeadsOverEveryRankMatchTheWholeModel) {
  runtime::ModelConfig config = runtime::preset_config("llama3-70b");
  if (config.num_kv_heads % world_.tp != 0) GTEST_SKIP() << "8 KV heads do not split over " << world_.tp;
  config.num_layers = 2;
  config.hidden_size = 512;
  config.head_dim = 128;
  config.intermediate_size = 1024;
  config.vocab_size = 1001;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  runtime::SyntheticWeightSource weights(config, /*seed=*/5);
  Pair p = load(config, weights);
  EXPECT_EQ(p.shard->shard().kv_heads.size(), 8 / world_.tp);
  EXPECT_EQ(p.shard->shard().q_heads.size(), 64 / world_.tp);
  std::vector<int32_t> prompt(160);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 53 + 7) % 1001);
  expect_same_generation(p, AttentionMode::kDense, {}, prompt, /*steps=*/4, /*prefill_chunk=*/64);
  // Small clusters and window, so that 160 tokens make clusters to retrieve, estimate and drop.
  attention::WaveIndexParams wave = test_support::small_wave_budgets();
  wave.window_tokens = 16;
  wave.tokens_per_cluster = 8;
  wave.segment_tokens = 64;
  wave.update_segment_tokens = 64;
  expect_same_generation(p, AttentionMode::kWave, wave, prompt, /*steps=*/4, /*prefill_chunk=*/160);
}

}  // namespace
}  // namespace retro::parallel
