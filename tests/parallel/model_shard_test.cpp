// runtime::Model built as a shard: what it refuses (no collectives, weights that are not its
// slices, ranges that do not fit the model), and a one-rank group computing the very same logits
// as the plain model.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <cstring>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "parallel/tensor_parallel.h"
#include "runtime/model.h"
#include "runtime/model_presets.h"
#include "runtime/synthetic_weights.h"

namespace retro::parallel {
namespace {

using runtime::Model;
using test_support::error_of;

class ModelShard : public testing::Test {
 protected:
  runtime::ModelConfig config_ = runtime::preset_config("tiny");
  runtime::SyntheticWeightSource weights_{config_, /*seed=*/5};
  std::unique_ptr<Allocator> host_ = make_host_allocator();
};

TEST_F(ModelShard, ShardOfATwoRankGroupWithoutCollectivesIsRefused) {
  const ShardingPlan plan = plan_sharding(config_, 2, 0);
  std::string msg =
      error_of([&] { Model(config_, weights_, *host_, plan.shard, nullptr); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("needs collectives"), std::string::npos) << msg;
}

// The first tensor the model takes is checked first: the LM head.
TEST_F(ModelShard, ShardGivenTheWholeWeightsNamesTheTensorAndBothShapes) {
  const ShardingPlan plan = plan_sharding(config_, 2, 1);
  SelfCommunicator self;
  CommunicatorCollectives collectives(self);
  test_support::expect_error([&] { Model(config_, weights_, *host_, plan.shard, &collectives); },
                             ErrorKind::kInvalidInput, {"lm_head.weight", "[256, 256]", "[128, 256]"});
}

TEST_F(ModelShard, RangesThatDoNotFitTheModelAreRefused) {
  runtime::ModelShard s = plan_sharding(config_, 2, 1).shard;
  s.q_heads = {0, 4};  // not the query heads of KV head 1
  std::string msg = error_of([&] { s.validate(config_); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("query heads [0, 4)"), std::string::npos) << msg;
  s = plan_sharding(config_, 2, 1).shard;
  s.vocab = {100, 256};
  error_of([&] { s.validate(config_); }, ErrorKind::kInvalidArgument);
}

// The one-rank path through the collectives (a self group) is the plain model, bit for bit.
TEST_F(ModelShard, OneRankGroupComputesTheSameLogitsAsThePlainModel) {
  Model plain(config_, weights_, *host_);
  SelfCommunicator self;
  CommunicatorCollectives collectives(self);
  Model grouped(config_, weights_, *host_, runtime::ModelShard::whole(config_), &collectives);
  std::vector<int32_t> prompt = {1, 17, 42, 99, 3, 250, 7};
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  std::vector<float> a(vocab), b(vocab);
  auto sa = plain.new_sequence(attention::AttentionMode::kDense);
  auto sb = grouped.new_sequence(attention::AttentionMode::kDense);
  plain.prefill(*sa, prompt, a.data());
  grouped.prefill(*sb, prompt, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), vocab * sizeof(float)), 0);
  plain.decode(*sa, 5, a.data());
  grouped.decode(*sb, 5, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), vocab * sizeof(float)), 0);
}

}  // namespace
}  // namespace retro::parallel
