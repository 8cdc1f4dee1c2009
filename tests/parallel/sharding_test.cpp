// Head sharding plan: each rank's KV heads, query heads, MLP channels and vocabulary rows, the
// slice of every weight it loads (the slices of all ranks tile each tensor exactly once), the
// errors for a tp that does not fit, and ShardedWeightSource reading exactly those slices.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel/sharded_weights.h"
#include "parallel/sharding.h"
#include "runtime/core/allocator.h"
#include "runtime/model_presets.h"
#include "runtime/model_weights.h"
#include "runtime/synthetic_weights.h"

namespace retro::parallel {
namespace {

using runtime::ModelConfig;
using runtime::WeightInfo;
using test_support::error_of;
using Axis = WeightSlice::Axis;

// Every bias, a tied LM head and a vocabulary that does not split evenly.
ModelConfig biased_tied_config() {
  ModelConfig c = runtime::preset_config("tiny");
  c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
  c.tie_word_embeddings = true;
  c.vocab_size = 255;
  return c;
}

TEST(ShardingPlan, TwoRanksOfTheTinyPresetSplitHeadsChannelsAndVocabularyInHalves) {
  ModelConfig c = runtime::preset_config("tiny");  // 8 query heads, 2 KV heads, head_dim 32, 768 channels, 256 rows
  ShardingPlan p = plan_sharding(c, 2, 1);
  EXPECT_EQ(p.shard.kv_heads, (runtime::IndexRange{1, 2}));
  EXPECT_EQ(p.shard.q_heads, (runtime::IndexRange{4, 8}));
  EXPECT_EQ(p.shard.intermediate, (runtime::IndexRange{384, 768}));
  EXPECT_EQ(p.shard.vocab, (runtime::IndexRange{128, 256}));
  EXPECT_EQ(p.slice("model.layers.1.self_attn.q_proj.weight"), (WeightSlice{Axis::kRows, 128, 256}));
  EXPECT_EQ(p.slice("model.layers.1.self_attn.k_proj.weight"), (WeightSlice{Axis::kRows, 32, 64}));
  EXPECT_EQ(p.slice("model.layers.1.self_attn.v_proj.bias"), (WeightSlice{Axis::kRows, 32, 64}));
  EXPECT_EQ(p.slice("model.layers.0.self_attn.o_proj.weight"), (WeightSlice{Axis::kColumns, 128, 256}));
  EXPECT_EQ(p.slice("model.layers.0.mlp.gate_proj.weight"), (WeightSlice{Axis::kRows, 384, 768}));
  EXPECT_EQ(p.slice("model.layers.0.mlp.up_proj.bias"), (WeightSlice{Axis::kRows, 384, 768}));
  EXPECT_EQ(p.slice("model.layers.0.mlp.down_proj.weight"), (WeightSlice{Axis::kColumns, 384, 768}));
  EXPECT_EQ(p.slice("lm_head.weight"), (WeightSlice{Axis::kRows, 128, 256}));
  // Replicated: added once (o/down biases) or needed whole by every rank.
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias"})
    EXPECT_EQ(p.slice(name).axis, Axis::kWhole) << name;
  EXPECT_EQ(p.slice("model.layers.0.mlp.down_proj.weight").local_shape({256, 768}), (Shape{256, 384}));
}

TEST(ShardingPlan, OneRankHoldsTheWholeModel) {
  ModelConfig c = runtime::preset_config("llama3-8b");
  ShardingPlan p = plan_sharding(c, 1, 0);
  EXPECT_EQ(p.shard.q_heads, (runtime::IndexRange{0, c.num_heads}));
  EXPECT_EQ(p.shard.vocab, (runtime::IndexRange{0, c.vocab_size}));
  EXPECT_TRUE(p.shard.is_whole());
  for (const WeightInfo& w : runtime::expected_weights(c))
    EXPECT_EQ(p.slice(w.name).local_shape(w.shape), w.shape) << w.name;
}

// Over all ranks of every tp a model allows, the slices of each weight tile it exactly once.
TEST(ShardingPlan, SlicesOfAllRanksTileEveryWeightExactlyOnce) {
  for (const ModelConfig& c : {runtime::preset_config("llama3-8b"), runtime::preset_config("qwen2.5-7b"),
                               runtime::preset_config("llama3-70b"), biased_tied_config()}) {
    for (int tp : valid_tp_sizes(c)) {
      std::vector<ShardingPlan> plans;
      for (int r = 0; r < tp; ++r) plans.push_back(plan_sharding(c, tp, r));
      for (const WeightInfo& w : runtime::expected_weights(c)) {
        const Axis axis = plans[0].slice(w.name).axis;
        std::vector<WeightSlice> slices;
        for (const ShardingPlan& p : plans) {
          EXPECT_EQ(p.slice(w.name).axis, axis) << w.name << " tp " << tp;
          slices.push_back(p.slice(w.name));
        }
        if (axis == Axis::kWhole) continue;
        const int64_t extent = w.shape[axis == Axis::kRows ? 0 : 1];
        int64_t next = 0;
        for (const WeightSlice& s : slices) {  // rank order is position order
          EXPECT_EQ(s.begin, next) << w.name << " tp " << tp;
          EXPECT_GT(s.end, s.begin) << w.name << " tp " << tp;
          next = s.end;
        }
        EXPECT_EQ(next, extent) << w.name << " tp " << tp;
      }
    }
  }
}

TEST(ShardingPlan, TensorParallelSizesThatFitAreTheDivisorsOfTheKvHeads) {
  EXPECT_EQ(valid_tp_sizes(runtime::preset_config("llama3-8b")), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_EQ(valid_tp_sizes(runtime::preset_config("qwen2.5-7b")), (std::vector<int>{1, 2, 4}));
}

TEST(ShardingPlan, TpThatDoesNotDivideTheKvHeadsIsRefusedWithTheSizesThatFit) {
  ModelConfig c = runtime::preset_config("qwen2.5-7b");  // 4 KV heads
  std::string msg = error_of([&] { plan_sharding(c, 8, 0); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("does not divide the 4 KV heads"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tp that fit: 1, 2, 4"), std::string::npos) << msg;
  msg = error_of([&] { plan_sharding(c, 3, 0); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("tensor parallelism 3"), std::string::npos) << msg;
}

TEST(ShardingPlan, TpThatDoesNotDivideTheMlpIsRefused) {
  ModelConfig c = runtime::preset_config("tiny");
  c.num_kv_heads = 4;
  c.intermediate_size = 770;  // 4 KV heads fit tp 4, 770 channels do not
  std::string msg = error_of([&] { plan_sharding(c, 4, 0); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("does not divide the MLP intermediate size 770"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tp that fit: 1, 2)"), std::string::npos) << msg;
}

TEST(ShardingPlan, VocabularyTooSmallToGiveEveryRankRowsIsRefused) {
  ModelConfig c = runtime::preset_config("tiny");
  c.num_kv_heads = 4;
  c.vocab_size = 5;  // ceil(5 / 4) = 2: ranks 0-2 would hold all 5 rows, rank 3 none
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  std::string msg = error_of([&] { plan_sharding(c, 4, 3); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("vocabulary of 5 rows"), std::string::npos) << msg;
  // An uneven split that fits: the last rank holds fewer rows.
  c.vocab_size = 255;
  EXPECT_EQ(plan_sharding(c, 2, 1).shard.vocab, (runtime::IndexRange{128, 255}));
}

TEST(ShardingPlan, RankOutsideTheGroupIsRefused) {
  ModelConfig c = runtime::preset_config("tiny");
  error_of([&] { plan_sharding(c, 2, 2); }, ErrorKind::kInvalidArgument);
  error_of([&] { plan_sharding(c, 0, 0); }, ErrorKind::kInvalidArgument);
}

// ShardedWeightSource presents each rank's slice; put back together they are the full tensors,
// bit for bit (the same bf16 -> fp32 conversion as a whole read).
// Both through a source that generates only the block (synthetic) and through WeightSource's
// whole-read fallback.
void expect_slices_reassemble(const ModelConfig& c, const runtime::WeightSource& full) {
  const int tp = 2;
  std::vector<ShardedWeightSource> ranks;
  ranks.reserve(tp);
  for (int r = 0; r < tp; ++r) ranks.emplace_back(c, full, plan_sharding(c, tp, r));
  for (const WeightInfo& w : runtime::expected_weights(c)) {
    std::vector<float> want(static_cast<size_t>(w.shape.numel()));
    full.read(w.name, Tensor(want.data(), DType::kFP32, w.shape));
    std::vector<float> got(want.size(), -1.0f);
    const int64_t rows = w.shape[0], cols = w.shape.size() > 1 ? w.shape[1] : 1;
    for (const ShardedWeightSource& src : ranks) {
      const WeightSlice s = src.plan().slice(w.name);
      const Shape local = src.info(w.name).shape;
      ASSERT_EQ(local, s.local_shape(w.shape)) << w.name;
      std::vector<float> part(static_cast<size_t>(local.numel()));
      src.read(w.name, Tensor(part.data(), DType::kFP32, local));
      for (int64_t i = 0; i < local.numel(); ++i) {
        int64_t row = i / (local.size() > 1 ? local[1] : 1), col = i % (local.size() > 1 ? local[1] : 1);
        if (s.axis == Axis::kRows) row += s.begin;
        if (s.axis == Axis::kColumns) col += s.begin;
        ASSERT_LT(row, rows);
        got[static_cast<size_t>(row * cols + col)] = part[static_cast<size_t>(i)];
      }
    }
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << w.name;
  }
}

// Reads through read() only, so read_block is WeightSource's default.
class WholeReadsOnly final : public runtime::WeightSource {
 public:
  explicit WholeReadsOnly(const runtime::WeightSource& inner) : inner_(inner) {}
  std::vector<std::string> names() const override { return inner_.names(); }
  bool contains(const std::string& name) const override { return inner_.contains(name); }
  WeightInfo info(const std::string& name) const override { return inner_.info(name); }
  void read(const std::string& name, const Tensor& dst) const override { inner_.read(name, dst); }

 private:
  const runtime::WeightSource& inner_;
};

TEST(ShardedWeightSource, SlicesOfBothRanksReassembleEveryTensor) {
  const ModelConfig c = biased_tied_config();
  runtime::SyntheticWeightSource full(c, /*seed=*/7);
  expect_slices_reassemble(c, full);
  expect_slices_reassemble(c, WholeReadsOnly(full));
}

TEST(ShardedWeightSource, DestinationOfTheFullShapeIsRefused) {
  const ModelConfig c = runtime::preset_config("tiny");
  runtime::SyntheticWeightSource full(c);
  ShardedWeightSource src(c, full, plan_sharding(c, 2, 0));
  std::vector<float> buf(static_cast<size_t>(c.q_size() * c.hidden_size));
  const Tensor whole(buf.data(), DType::kFP32, {c.q_size(), c.hidden_size});
  std::string msg =
      error_of([&] { src.read("model.layers.0.self_attn.q_proj.weight", whole); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("[128, 256]"), std::string::npos) << msg;
}

TEST(ShardedWeightSource, SourceThatDoesNotMatchTheConfigIsReportedWithFullShapes) {
  ModelConfig c = runtime::preset_config("tiny");
  runtime::SyntheticWeightSource full(c);
  ModelConfig other = c;
  other.intermediate_size = 512;
  test_support::expect_error([&] { ShardedWeightSource(other, full, plan_sharding(other, 2, 0)); },
                             ErrorKind::kInvalidInput, {"mlp.gate_proj.weight", "[768, 256]"});
}

}  // namespace
}  // namespace retro::parallel
