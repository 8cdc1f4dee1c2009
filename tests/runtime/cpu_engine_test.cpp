// CpuEngine: steps of interleaved slots give the bytes a lone run gives (Model::prefill in the same
// chunks, then Model::decode), with dense and with wave attention; the KV pool never holds more
// than EngineInfo's accounting bound; items that do not fit the slots are refused before anything
// runs; a released slot returns its KV to the pool. On a synthetic tiny model (fast, no files).

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "runtime/core/allocator.h"
#include "runtime/cpu_engine.h"
#include "runtime/model.h"
#include "runtime/model_presets.h"
#include "runtime/synthetic_weights.h"

namespace retro::runtime {
namespace {

using attention::AttentionMode;
using test_support::error_of;

// Tokens [begin, begin + n) of a prompt into `slot`.
WorkItem prefill(int slot, const std::vector<int32_t>& prompt, int64_t begin, int64_t n) {
  WorkItem item;
  item.slot = slot;
  item.kind = WorkKind::kPrefill;
  item.position = begin;
  item.tokens.assign(prompt.begin() + begin, prompt.begin() + begin + n);
  item.ends_prompt = begin + n == static_cast<int64_t>(prompt.size());
  return item;
}

WorkItem decode(int slot, int64_t position, int32_t token) {
  return WorkItem{.slot = slot, .kind = WorkKind::kDecode, .position = position, .tokens = {token}};
}

class CpuEngineTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    host_ = make_host_allocator().release();
    SyntheticWeightSource weights(preset_config("tiny"), /*seed=*/5);
    model_ = new Model(preset_config("tiny"), weights, *host_);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete host_;
  }

  // Small pages, window and update segments, so that paging, index growth and every wave zone
  // take part within a few hundred tokens.
  static EngineParams params(AttentionMode mode) {
    EngineParams p;
    p.max_slots = 3;
    p.prefill_chunk = 48;
    p.attention = mode;
    p.wave.window_tokens = 16;
    p.wave.update_segment_tokens = 64;
    p.wave.host_page_tokens = 32;
    p.wave.min_retrieve_clusters = 2;
    p.wave.retrieval_budget = 0.1;
    p.wave.estimation_budget = 0.3;
    return p;
  }

  static std::vector<int32_t> tokens(int n, int salt) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = (i * 31 + salt * 17 + 3) % 256;
    return t;
  }

  static inline Allocator* host_ = nullptr;
  static inline Model* model_ = nullptr;
};

// Two prompts (100 and 70 tokens) arrive in 48-token chunks, interleaved, then both decode in the
// same steps; every logits row is the bytes a lone run of that sequence writes.
void expect_steps_match_lone_runs(const Model& model, const EngineParams& p) {
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  std::vector<int32_t> a(100), b70(70);
  for (int i = 0; i < 100; ++i) a[static_cast<size_t>(i)] = (i * 31 + 3) % 256;
  for (int i = 0; i < 70; ++i) b70[static_cast<size_t>(i)] = (i * 47 + 11) % 256;
  const int steps = 6;

  // Lone runs.
  auto lone = [&](const std::vector<int32_t>& prompt) {
    auto seq = model.new_sequence(p.attention, p.wave);
    std::vector<std::vector<float>> rows(1, std::vector<float>(vocab, NAN));
    model.prefill(*seq, prompt, rows[0].data(), {.prefill_chunk = p.prefill_chunk});
    for (int s = 0; s < steps; ++s) {
      rows.emplace_back(vocab, NAN);
      model.decode(*seq, 7 + s, rows.back().data());
    }
    return rows;
  };
  const auto want_a = lone(a), want_b = lone(b70);

  CpuEngine engine(model, p);
  std::vector<float> logits(2 * vocab, NAN);
  engine.step(std::vector<WorkItem>{prefill(2, a, 0, 48), prefill(0, b70, 0, 48)}, nullptr);
  engine.step(std::vector<WorkItem>{prefill(0, b70, 48, 22), prefill(2, a, 48, 48)}, logits.data());
  EXPECT_EQ(std::memcmp(logits.data(), want_b[0].data(), vocab * sizeof(float)), 0) << "prompt b";
  engine.step(std::vector<WorkItem>{decode(0, 70, 7), prefill(2, a, 96, 4)}, logits.data());
  EXPECT_EQ(std::memcmp(logits.data(), want_b[1].data(), vocab * sizeof(float)), 0) << "b decode 0";
  EXPECT_EQ(std::memcmp(logits.data() + vocab, want_a[0].data(), vocab * sizeof(float)), 0) << "prompt a";
  for (int s = 0; s < steps - 1; ++s) {
    engine.step(std::vector<WorkItem>{decode(2, 100 + s, 7 + s), decode(0, 71 + s, 8 + s)}, logits.data());
    EXPECT_EQ(std::memcmp(logits.data(), want_a[static_cast<size_t>(s) + 1].data(), vocab * sizeof(float)), 0)
        << "a decode " << s;
    EXPECT_EQ(std::memcmp(logits.data() + vocab, want_b[static_cast<size_t>(s) + 2].data(), vocab * sizeof(float)), 0)
        << "b decode " << s + 1;
  }
  EXPECT_EQ(engine.length(2), 100 + steps - 1);
  EXPECT_EQ(engine.length(0), 70 + steps);
  EXPECT_EQ(engine.length(1), 0);
  EXPECT_EQ(engine.sequence(2)->indexed(), p.attention == AttentionMode::kWave);
}

TEST_F(CpuEngineTest, InterleavedStepsGiveTheBytesOfLoneRunsWithDenseAttention) {
  expect_steps_match_lone_runs(*model_, params(AttentionMode::kDense));
}

TEST_F(CpuEngineTest, InterleavedStepsGiveTheBytesOfLoneRunsWithWaveAttention) {
  expect_steps_match_lone_runs(*model_, params(AttentionMode::kWave));
}

// One sequence at a time, in a pool of exactly the bound of its length: prefill and 150 decode
// steps (two update segments clustered in wave mode) never run it dry, and the peak stays within.
TEST_F(CpuEngineTest, KvPoolStaysWithinTheAccountingBound) {
  for (AttentionMode mode : {AttentionMode::kDense, AttentionMode::kWave}) {
    for (int prompt_tokens : {1, 33, 140}) {
      EngineParams p = params(mode);
      const int decodes = 150;
      const SequenceKvCost cost = sequence_kv_cost(*model_, mode, p.wave);
      p.kv_capacity_bytes = cost.per_token * static_cast<size_t>(prompt_tokens + decodes) + cost.per_sequence;
      CpuEngine engine(*model_, p);
      EXPECT_EQ(engine.info().kv_bytes(prompt_tokens + decodes), p.kv_capacity_bytes);
      const std::vector<int32_t> prompt = tokens(prompt_tokens, prompt_tokens);
      std::vector<float> logits(static_cast<size_t>(model_->config().vocab_size));
      for (int64_t begin = 0; begin < prompt_tokens; begin += p.prefill_chunk)
        engine.step(std::vector<WorkItem>{prefill(0, prompt, begin,
                                                  std::min<int64_t>(p.prefill_chunk, prompt_tokens - begin))},
                    logits.data());
      for (int s = 0; s < decodes; ++s)
        engine.step(std::vector<WorkItem>{decode(0, prompt_tokens + s, 9)}, logits.data());
      const MemoryUsage used = engine.kv_pool().accounting().total();
      EXPECT_LE(used.peak_bytes, p.kv_capacity_bytes) << attention::attention_mode_name(mode) << ", " << prompt_tokens;
      EXPECT_GT(used.peak_bytes, 0u);
      engine.release(0);
      EXPECT_EQ(engine.kv_pool().accounting().total().live_bytes, 0u);
    }
  }
}

TEST_F(CpuEngineTest, ItemsThatDoNotFitTheSlotsAreRefusedBeforeAnythingRuns) {
  CpuEngine engine(*model_, params(AttentionMode::kDense));
  const std::vector<int32_t> prompt = tokens(60, 1);
  std::vector<float> logits(2 * 256);
  auto refused = [&](std::vector<WorkItem> items) {
    return error_of([&] { engine.step(items, logits.data()); }, ErrorKind::kInvalidArgument);
  };
  // The first item is sound; the second sinks the step, and slot 1 stays empty.
  std::string msg = refused({prefill(1, prompt, 0, 48), decode(1, 48, 5)});
  EXPECT_NE(msg.find("step item 1 (decode of slot 1): the slot's prompt has not ended"), std::string::npos) << msg;
  EXPECT_EQ(engine.length(1), 0);
  msg = refused({prefill(1, prompt, 48, 12)});
  EXPECT_NE(msg.find("step item 0 (prefill of slot 1): at position 48, but the slot holds 0 tokens"), std::string::npos)
      << msg;
  msg = refused({prefill(1, prompt, 0, 60)});
  EXPECT_NE(msg.find("60 tokens, more than a prefill chunk of 48"), std::string::npos) << msg;
  msg = refused({WorkItem{.slot = 3, .kind = WorkKind::kPrefill, .tokens = {1}}});
  EXPECT_NE(msg.find("slot 3 is not in [0, 3)"), std::string::npos) << msg;
  msg = refused({WorkItem{.slot = 0, .kind = WorkKind::kPrefill, .tokens = {256}, .ends_prompt = true}});
  EXPECT_NE(msg.find("token 256 is not in the vocabulary [0, 256)"), std::string::npos) << msg;
  engine.step(std::vector<WorkItem>{prefill(1, prompt, 0, 48), prefill(1, prompt, 48, 12)}, logits.data());
  msg = refused({prefill(1, prompt, 0, 48)});  // the slot must be released first
  EXPECT_NE(msg.find("at position 0, but the slot holds 60 tokens"), std::string::npos) << msg;
  msg = refused({WorkItem{.slot = 1, .kind = WorkKind::kDecode, .position = 60, .tokens = {1, 2}}});
  EXPECT_NE(msg.find("a decode item carries one token, got 2"), std::string::npos) << msg;
  engine.release(1);
  EXPECT_EQ(engine.length(1), 0);
  EXPECT_EQ(engine.kv_pool().accounting().total().live_bytes, 0u);
  engine.step(std::vector<WorkItem>{prefill(1, prompt, 0, 48)}, nullptr);  // the slot is free again
  EXPECT_EQ(engine.length(1), 48);
}

// pack_decoding_slots: after its swaps, model slots [0, n) hold exactly the decoding sequences,
// whatever holes and idle sequences lay below n; nothing moves when they are already there.
TEST(PackDecodingSlots, SwapsBringEveryDecodingSequenceBelowN) {
  auto apply = [](std::vector<int> held, const std::vector<std::pair<int, int>>& swaps) {
    for (const auto& [a, b] : swaps) std::swap(held[size_t(a)], held[size_t(b)]);
    return held;
  };
  // Model slot -> engine slot (-1: empty); decoding by engine slot.
  const std::vector<std::vector<int>> layouts = {{0, 1, 2, 3, -1}, {-1, 3, 0, -1, 1}, {4, -1, -1, 2, 0}, {2, 0, 1, -1, -1}};
  const std::vector<std::vector<bool>> decodings = {
      {true, false, true, false, false}, {false, true, false, true, false}, {true, false, true, false, true}, {true, true, true, false, false}};
  for (const auto& held : layouts) {
    for (const auto& decoding : decodings) {
      bool valid = true;  // every decoding engine slot must be held by some model slot
      for (size_t e = 0; e < decoding.size(); ++e)
        if (decoding[e] && std::find(held.begin(), held.end(), int(e)) == held.end()) valid = false;
      if (!valid) {
        EXPECT_THROW(pack_decoding_slots(held, decoding), Error);
        continue;
      }
      const auto swaps = pack_decoding_slots(held, decoding);
      const std::vector<int> after = apply(held, swaps);
      const int n = int(std::count(decoding.begin(), decoding.end(), true));
      for (int m = 0; m < int(after.size()); ++m) {
        const bool decodes = after[size_t(m)] >= 0 && decoding[size_t(after[size_t(m)])];
        EXPECT_EQ(decodes, m < n) << "model slot " << m;
      }
      int holes = 0;
      for (int m = 0; m < n; ++m) holes += held[size_t(m)] >= 0 && decoding[size_t(held[size_t(m)])] ? 0 : 1;
      EXPECT_EQ(int(swaps.size()), holes);  // one swap per hole, none when already packed
    }
  }
}

}  // namespace
}  // namespace retro::runtime
