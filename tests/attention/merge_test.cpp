// The log-sum-exp merge: associative, and equal to attention over the union of the key sets.

#include <gtest/gtest.h>

#include <algorithm>

#include "attention/merge.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

using testing::reference_attention;
using testing::RefState;

struct State {
  std::vector<float> o;
  float lse;
};

State to_state(const RefState& r) {
  State s;
  s.o.assign(r.o.begin(), r.o.end());
  s.lse = static_cast<float>(r.lse);
  return s;
}

State merged(State a, const State& b, int d) {
  merge_state(a.o.data(), &a.lse, b.o.data(), b.lse, d);
  return a;
}

TEST(Merge, IsAssociativeAndEqualsAttentionOverTheUnion) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 64;
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 30 + static_cast<int64_t>(rng() % 200);
    auto q = testing::random_normal(rng, d, 1.5f);
    auto k = testing::random_normal(rng, static_cast<size_t>(n * d));
    auto v = testing::random_normal(rng, static_cast<size_t>(n * d));
    // Split the keys at random into three disjoint non-empty sets.
    std::vector<int64_t> all = testing::iota_rows(n), sets[3];
    std::shuffle(all.begin(), all.end(), rng);
    for (size_t j = 0; j < all.size(); ++j) sets[j < 3 ? j : rng() % 3].push_back(all[j]);
    State a = to_state(reference_attention(q.data(), k.data(), v.data(), sets[0], d, d));
    State b = to_state(reference_attention(q.data(), k.data(), v.data(), sets[1], d, d));
    State c = to_state(reference_attention(q.data(), k.data(), v.data(), sets[2], d, d));
    RefState whole = reference_attention(q.data(), k.data(), v.data(), testing::iota_rows(n), d, d);

    State left = merged(merged(a, b, d), c, d);
    State right = merged(a, merged(b, c, d), d);
    State swapped = merged(merged(c, a, d), b, d);
    for (const State* s : {&left, &right, &swapped}) {
      EXPECT_LT(testing::relative_l2(s->o.data(), whole.o), 1e-5);
      EXPECT_NEAR(s->lse, whole.lse, 1e-4 * std::max(1.0, std::abs(whole.lse)));
    }
    for (int i = 0; i < d; ++i) EXPECT_NEAR(left.o[static_cast<size_t>(i)], right.o[static_cast<size_t>(i)], 1e-5);
  }
}

TEST(Merge, EmptyStateIsTheIdentity) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 16;
  State a{testing::random_normal(rng, d), 3.25f};
  State empty{std::vector<float>(d, 123.0f), kEmptyLse};  // o of an empty state is ignored
  State r1 = merged(a, empty, d);
  State r2 = merged(empty, a, d);
  EXPECT_EQ(r1.o, a.o);
  EXPECT_EQ(r1.lse, a.lse);
  EXPECT_EQ(r2.o, a.o);
  EXPECT_EQ(r2.lse, a.lse);
  State both_empty = merged(empty, empty, d);
  EXPECT_EQ(both_empty.lse, kEmptyLse);
}

TEST(Merge, StaysFiniteForFarApartLogSumExps) {
  const int d = 4;
  State a{{1, 2, 3, 4}, 500.0f};
  State b{{-1, -1, -1, -1}, -500.0f};
  State r = merged(a, b, d);
  for (float x : r.o) EXPECT_TRUE(std::isfinite(x));
  EXPECT_FLOAT_EQ(r.lse, 500.0f);
  EXPECT_FLOAT_EQ(r.o[0], 1.0f);
}

}  // namespace
}  // namespace retro::attention
