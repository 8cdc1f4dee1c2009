// SequenceKv: the store the model appends to; dense causal attention in chunks, modes, growth of
// accounted host memory, and rejection of bad shapes and calls.

#include <gtest/gtest.h>

#include "attention/kv_store.h"
#include "runtime/core/error.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

template <typename Fn>
std::string error_message(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.message();
  }
  return "no error";
}

TEST(SequenceKv, CausalPrefillInChunksMatchesReference) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const AttentionShape shape{8, 2, 32};
  const int d = 32;
  WaveIndexParams p;
  p.host_page_tokens = 64;  // several pages
  for (AttentionMode mode : {AttentionMode::kDense, AttentionMode::kWave}) {
    auto host = make_host_allocator();
    SequenceKv kv(shape, mode, p, *host);
    std::vector<float> k_all, v_all;
    for (int64_t chunk : {1, 3, 100, 57, 1}) {
      const size_t kv_count = static_cast<size_t>(chunk * 2 * d);
      auto k = testing::random_normal(rng, kv_count, 1.0f, 0.3f);
      auto v = testing::random_normal(rng, kv_count);
      auto q = testing::random_normal(rng, static_cast<size_t>(chunk * 8 * d));
      kv.append(k.data(), v.data(), chunk);
      k_all.insert(k_all.end(), k.begin(), k.end());
      v_all.insert(v_all.end(), v.begin(), v.end());
      std::vector<float> out(q.size()), lse(static_cast<size_t>(chunk * 8));
      kv.attend_causal_dense(q.data(), chunk, out.data(), lse.data());
      for (int64_t i = 0; i < chunk; ++i) {
        const int64_t pos = kv.size() - chunk + i;
        for (int h = 0; h < 8; ++h) {
          auto ref = testing::reference_attention(q.data() + (i * 8 + h) * d, k_all.data() + (h / 4) * d,
                                                  v_all.data() + (h / 4) * d, testing::iota_rows(pos + 1), d, 2 * d);
          ASSERT_LT(testing::relative_l2(out.data() + (i * 8 + h) * d, ref.o), 2e-5) << attention_mode_name(mode);
          ASSERT_NEAR(lse[static_cast<size_t>(i * 8 + h)], ref.lse, 2e-4 * std::max(1.0, std::abs(ref.lse)));
        }
      }
    }
  }
}

TEST(SequenceKv, DenseModeIgnoresBuildIndexAndDecodesExactly) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  auto host = make_host_allocator();
  SequenceKv kv({4, 2, 16}, AttentionMode::kDense, WaveIndexParams{}, *host);
  auto k = testing::random_normal(rng, 500 * 2 * 16);
  auto v = testing::random_normal(rng, 500 * 2 * 16);
  kv.append(k.data(), v.data(), 500);
  kv.build_index();
  EXPECT_FALSE(kv.index_built());
  EXPECT_EQ(kv.index(0), nullptr);
  auto q = testing::random_normal(rng, 4 * 16);
  std::vector<float> out(q.size());
  kv.attend_decode(q.data(), out.data());
  EXPECT_FALSE(kv.last_stats().wave);
  EXPECT_EQ(kv.last_stats().exact_tokens(), 1000);
  for (int h = 0; h < 4; ++h) {
    auto ref = testing::reference_attention(q.data() + h * 16, k.data() + (h / 2) * 16, v.data() + (h / 2) * 16,
                                            testing::iota_rows(500), 16, 32);
    EXPECT_LT(testing::relative_l2(out.data() + h * 16, ref.o), 2e-5);
  }
}

TEST(SequenceKv, HostMemoryGrowsInAccountedPagesAndIsReleased) {
  auto host = make_host_allocator();
  WaveIndexParams p;
  p.host_page_tokens = 128;
  p.segment_tokens = 512;
  {
    SequenceKv kv({2, 1, 8}, AttentionMode::kWave, p, *host);
    std::vector<float> k(8, 0.5f), v(8, 1.0f);
    const auto& acc = host->accounting();
    kv.append(k.data(), v.data(), 1);  // a sink row
    const size_t sink_bytes = acc.usage(MemoryPurpose::kKvHost).live_bytes;
    EXPECT_EQ(sink_bytes, 2u * 4 * 8 * sizeof(float));  // one page of sink_tokens rows for K and V
    for (int i = 0; i < 4; ++i) kv.append(k.data(), v.data(), 1);
    const size_t one_page = acc.usage(MemoryPurpose::kKvHost).live_bytes - sink_bytes;
    EXPECT_EQ(one_page, 2u * 128 * 8 * sizeof(float));
    for (int i = 0; i < 200; ++i) kv.append(k.data(), v.data(), 1);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes - sink_bytes, 2 * one_page);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes, kv.host_bytes());
    kv.build_index();
    EXPECT_GT(acc.usage(MemoryPurpose::kIndex).live_bytes, 0u);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes + acc.usage(MemoryPurpose::kIndex).live_bytes,
              kv.host_bytes());
  }
  EXPECT_EQ(host->accounting().total().live_bytes, 0u);
}

TEST(SequenceKv, RejectsBadShapesAndCallsWithClearMessages) {
  auto host = make_host_allocator();
  EXPECT_NE(error_message([&] { SequenceKv({8, 3, 16}, AttentionMode::kWave, {}, *host); })
                .find("num_q_heads (8) must be a multiple of num_kv_heads (3)"), std::string::npos);
  EXPECT_NE(error_message([&] { SequenceKv({8, 2, 0}, AttentionMode::kWave, {}, *host); }).find("head_dim must be positive"),
            std::string::npos);
  WaveIndexParams bad;
  bad.tokens_per_cluster = 0;
  EXPECT_NE(error_message([&] { SequenceKv({8, 2, 16}, AttentionMode::kWave, bad, *host); }).find("tokens_per_cluster"),
            std::string::npos);

  WaveIndexParams p;
  p.window_tokens = 8;
  SequenceKv kv({2, 1, 8}, AttentionMode::kWave, p, *host);
  std::vector<float> buf(8 * 400, 0.25f), out(8 * 400);
  EXPECT_NE(error_message([&] { kv.attend_decode(buf.data(), out.data()); }).find("no tokens stored"), std::string::npos);
  EXPECT_NE(error_message([&] { kv.append(buf.data(), buf.data(), -1); }).find("negative token count"), std::string::npos);
  kv.append(buf.data(), buf.data(), 200);
  EXPECT_NE(error_message([&] { kv.attend_causal_dense(buf.data(), 201, out.data()); })
                .find("201 query tokens but 200 tokens stored"), std::string::npos);
  kv.build_index();
  EXPECT_NE(error_message([&] { kv.attend_causal_dense(buf.data(), 9, out.data()); })
                .find("reach past the 8 steady-zone tokens"), std::string::npos);
  EXPECT_NE(error_message([&] { kv.set_budgets(2.0, 0.1); }).find("retrieval_budget"), std::string::npos);
  EXPECT_NE(error_message([&] { kv.index(1); }).find("kv head 1 out of range"), std::string::npos);
}

}  // namespace
}  // namespace retro::attention
