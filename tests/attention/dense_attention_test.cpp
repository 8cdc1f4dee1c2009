// Dense attention with GQA: decode and causal prefill against the double-precision reference.

#include <gtest/gtest.h>

#include "attention/dense_attention.h"
#include "runtime/core/error.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

// Checks out/lse of dense_attention_causal against the reference for every query token and head.
void expect_matches_reference(const AttentionShape& shape, int64_t n_q, int64_t n_kv, std::mt19937_64& rng) {
  const int d = shape.head_dim;
  const int hq = shape.num_q_heads;
  const int hkv = shape.num_kv_heads;
  auto q = testing::random_normal(rng, static_cast<size_t>(n_q * hq * d), 1.5f);
  auto k = testing::random_normal(rng, static_cast<size_t>(n_kv * hkv * d));
  auto v = testing::random_normal(rng, static_cast<size_t>(n_kv * hkv * d));
  std::vector<float> out(q.size(), std::nanf("")), lse(static_cast<size_t>(n_q * hq), std::nanf(""));
  dense_attention_causal(shape, q.data(), n_q, k.data(), v.data(), n_kv, out.data(), lse.data());
  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t pos = n_kv - n_q + i;
    for (int h = 0; h < hq; ++h) {
      const int g = h / shape.group_size();
      testing::RefState ref = testing::reference_attention(q.data() + (i * hq + h) * d, k.data() + g * d,
                                                           v.data() + g * d, testing::iota_rows(pos + 1), d,
                                                           static_cast<int64_t>(hkv) * d);
      EXPECT_LT(testing::relative_l2(out.data() + (i * hq + h) * d, ref.o), 2e-5) << "token " << i << " head " << h;
      EXPECT_NEAR(lse[static_cast<size_t>(i * hq + h)], ref.lse, 2e-4 * std::max(1.0, std::abs(ref.lse)));
    }
  }
}

TEST(DenseAttention, DecodeMatchesReferenceWithGqa) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  expect_matches_reference({8, 2, 64}, 1, 1000, rng);
  expect_matches_reference({4, 4, 32}, 1, 3, rng);
  expect_matches_reference({6, 1, 16}, 1, 1, rng);
}

TEST(DenseAttention, CausalPrefillMatchesReference) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  expect_matches_reference({8, 2, 64}, 300, 300, rng);  // GEMM path, whole prompt
  expect_matches_reference({4, 2, 32}, 37, 600, rng);   // a chunk after earlier tokens
  expect_matches_reference({2, 2, 16}, 5, 5, rng);      // vector-loop path
}

TEST(DenseAttention, RejectsBadShapesWithClearMessages) {
  std::vector<float> buf(4096);
  auto message = [&](AttentionShape shape, int64_t n_q, int64_t n_kv) -> std::string {
    try {
      dense_attention_causal(shape, buf.data(), n_q, buf.data(), buf.data(), n_kv, buf.data());
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      return e.message();
    }
    return "no error";
  };
  EXPECT_NE(message({6, 4, 8}, 1, 1).find("multiple of num_kv_heads"), std::string::npos);
  EXPECT_NE(message({4, 0, 8}, 1, 1).find("num_kv_heads must be positive"), std::string::npos);
  EXPECT_NE(message({4, 2, 0}, 1, 1).find("head_dim must be positive"), std::string::npos);
  EXPECT_NE(message({4, 2, 8}, 5, 3).find("5 query tokens but only 3 stored"), std::string::npos);
}

}  // namespace
}  // namespace retro::attention
