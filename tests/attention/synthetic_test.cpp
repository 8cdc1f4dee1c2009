// The synthetic workload: deterministic from its seed, with needles that dominate attention.

#include <gtest/gtest.h>

#include "attention/dense_attention.h"
#include "attention/synthetic.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

SyntheticParams small(uint64_t seed) {
  SyntheticParams p;
  p.shape = {4, 2, 32};
  p.context_tokens = 2000;
  p.seed = seed;
  return p;
}

TEST(Synthetic, SameSeedSameStreamOtherSeedOtherStream) {
  RETRO_SEEDED(seed);
  SyntheticWorkload a(small(seed)), b(small(seed)), c(small(seed + 1));
  std::vector<float> ka(100 * 64), va(ka.size()), kb(ka.size()), vb(ka.size()), kc(ka.size()), vc(ka.size());
  a.next_kv(100, ka.data(), va.data());
  b.next_kv(60, kb.data(), vb.data());
  b.next_kv(40, kb.data() + 60 * 64, vb.data() + 60 * 64);  // chunking does not change the stream
  c.next_kv(100, kc.data(), vc.data());
  EXPECT_EQ(ka, kb);
  EXPECT_EQ(va, vb);
  EXPECT_NE(ka, kc);
  std::vector<float> qa(4 * 32), qb(qa.size());
  a.next_query(qa.data());
  b.next_query(qb.data());
  EXPECT_EQ(qa, qb);
  EXPECT_EQ(a.needle_positions(0), b.needle_positions(0));
}

TEST(Synthetic, QueriesDriftWithTheRequestedCorrelationAndFindTheNeedles) {
  RETRO_SEEDED(seed);
  SyntheticParams p = small(seed);
  SyntheticWorkload w(p);
  std::vector<float> k(static_cast<size_t>(p.context_tokens * 64)), v(k.size());
  w.next_kv(p.context_tokens, k.data(), v.data());
  std::vector<float> q(4 * 32), prev(q.size()), out(q.size()), lse(4);
  w.next_query(prev.data());
  double same = 0.0;
  for (int s = 0; s < 20; ++s) {
    w.next_query(q.data());
    double diff = 0.0;
    for (size_t i = 0; i < q.size(); ++i) diff += (q[i] - prev[i]) * (q[i] - prev[i]);
    same += diff;
    prev = q;
    // The needles of each group carry a visible share of the attention mass.
    const int d = 32;
    for (int h = 0; h < 4; ++h) {
      const int g = h / 2;
      auto all = testing::reference_attention(q.data() + h * d, k.data() + g * d, v.data() + g * d,
                                              testing::iota_rows(p.context_tokens), d, 64);
      auto needles = testing::reference_attention(q.data() + h * d, k.data() + g * d, v.data() + g * d,
                                                  w.needle_positions(g), d, 64);
      EXPECT_GT(needles.lse - all.lse, std::log(0.05)) << "needle mass share below 5%, head " << h;
    }
  }
  // E|q_s - q_{s-1}|^2 = 2 (1 - rho) noise^2 per dimension.
  const double expected = 2.0 * (1.0 - p.query_correlation) * p.query_noise * p.query_noise * q.size() * 20;
  EXPECT_NEAR(same / expected, 1.0, 0.35);
}

}  // namespace
}  // namespace retro::attention
