// Wave attention: exact at full retrieval, zones that partition the tokens while the index grows,
// GQA-summed cluster scores, and the estimation zone.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "attention/kv_store.h"
#include "attention/wave_attention.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

// A sequence whose K/V the test also keeps in position order, for the references.
struct Fixture {
  AttentionShape shape;
  std::unique_ptr<Allocator> host = make_host_allocator();
  SequenceKv kv;
  std::vector<float> k, v;  // [tokens, kv heads, d]

  Fixture(AttentionShape s, const WaveIndexParams& p) : shape(s), kv(s, AttentionMode::kWave, p, *host) {}

  void append(std::mt19937_64& rng, int64_t n, float key_mean = 0.5f) {
    const size_t count = static_cast<size_t>(n * shape.num_kv_heads * shape.head_dim);
    auto kn = testing::random_normal(rng, count, 1.0f, key_mean);
    auto vn = testing::random_normal(rng, count);
    kv.append(kn.data(), vn.data(), n);
    k.insert(k.end(), kn.begin(), kn.end());
    v.insert(v.end(), vn.begin(), vn.end());
  }

  // Reference decode over every stored token: o [num_q_heads, d] in double.
  std::vector<testing::RefState> reference(const std::vector<float>& q) const {
    std::vector<testing::RefState> out;
    const int d = shape.head_dim;
    for (int h = 0; h < shape.num_q_heads; ++h) {
      const int g = h / shape.group_size();
      out.push_back(testing::reference_attention(q.data() + h * d, k.data() + g * d, v.data() + g * d,
                                                 testing::iota_rows(kv.size()), d,
                                                 static_cast<int64_t>(shape.num_kv_heads) * d));
    }
    return out;
  }

  void expect_decode_matches_reference(std::mt19937_64& rng, double tol) {
    const int d = shape.head_dim;
    auto q = testing::random_normal(rng, static_cast<size_t>(shape.num_q_heads * d), 1.0f);
    std::vector<float> out(q.size(), std::nanf("")), lse(static_cast<size_t>(shape.num_q_heads), std::nanf(""));
    kv.attend_decode(q.data(), out.data(), lse.data());
    auto ref = reference(q);
    for (int h = 0; h < shape.num_q_heads; ++h) {
      EXPECT_LT(testing::relative_l2(out.data() + h * d, ref[static_cast<size_t>(h)].o), tol) << "head " << h;
      EXPECT_NEAR(lse[static_cast<size_t>(h)], ref[static_cast<size_t>(h)].lse, 1e-4 * std::max(1.0, std::abs(ref[static_cast<size_t>(h)].lse)));
    }
  }
};

WaveIndexParams test_params() {
  WaveIndexParams p;
  p.tokens_per_cluster = 16;
  p.segment_tokens = 1024;
  p.update_segment_tokens = 256;
  p.host_page_tokens = 300;
  return p;
}

TEST(WaveAttention, FullRetrievalBudgetEqualsDenseAttention) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  WaveIndexParams p = test_params();
  p.retrieval_budget = 1.0;
  Fixture f({8, 2, 64}, p);
  f.append(rng, 3000);
  f.kv.build_index();
  ASSERT_TRUE(f.kv.index_built());
  f.expect_decode_matches_reference(rng, 1e-5);
  EXPECT_TRUE(f.kv.last_stats().wave);
  EXPECT_EQ(f.kv.last_stats().estimated_clusters, 0);
  EXPECT_EQ(f.kv.last_stats().dropped_tokens, 0);
  EXPECT_EQ(f.kv.last_stats().exact_tokens(), f.kv.size() * 2);
  // Across growth: 700 more tokens make two update segments.
  f.append(rng, 700);
  EXPECT_EQ(f.kv.index(0)->num_segments(), 3 + 2);
  f.expect_decode_matches_reference(rng, 1e-5);
}

TEST(WaveAttention, SingletonClustersMakeEstimationExact) {
  // With one token per cluster the centroid is the key and the value sum the value, so the
  // estimation zone alone (no retrieval) reproduces dense attention: a check of the estimate's
  // mass, numerator and merge.
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  WaveIndexParams p = test_params();
  p.tokens_per_cluster = 1;
  p.retrieval_budget = 0.0;
  p.min_retrieve_clusters = 0;  // everything in the estimation zone
  p.estimation_budget = 1.0;
  Fixture f({4, 2, 32}, p);
  f.append(rng, 500, 0.0f);
  f.kv.build_index();
  ASSERT_EQ(f.kv.index(0)->num_empty_clusters(), 0);
  f.expect_decode_matches_reference(rng, 1e-4);
  EXPECT_EQ(f.kv.last_stats().retrieved_clusters, 0);
  EXPECT_EQ(f.kv.last_stats().estimated_tokens, (500 - 4 - 64) * 2);
}

TEST(WaveAttention, ZonesPartitionTheTokensWhileTheIndexGrowsTokenByToken) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  WaveIndexParams p;
  p.sink_tokens = 4;
  p.window_tokens = 16;
  p.tokens_per_cluster = 4;
  p.segment_tokens = 64;
  p.update_segment_tokens = 32;
  p.retrieval_budget = 0.1;
  p.estimation_budget = 0.3;
  p.host_page_tokens = 50;
  Fixture f({4, 2, 16}, p);
  f.kv.set_record_zones(true);
  f.append(rng, 200);
  f.kv.build_index();
  const int64_t clusters_after_build = f.kv.index(0)->num_clusters();
  EXPECT_EQ(clusters_after_build, 16 + 16 + 13);  // 180 tokens: segments of 64, 64, 52
  std::vector<float> q(static_cast<size_t>(4 * 16)), out(q.size());
  for (int step = 0; step < 150; ++step) {  // past four update segments
    f.append(rng, 1);
    auto qn = testing::random_normal(rng, q.size());
    f.kv.attend_decode(qn.data(), out.data());
    const WaveStepStats s = f.kv.last_stats();
    ASSERT_TRUE(s.wave);
    ASSERT_EQ(f.kv.last_zones().size(), 2u);
    for (int g = 0; g < 2; ++g) {
      const DecodeZones& z = f.kv.last_zones()[static_cast<size_t>(g)];
      std::vector<int> seen(static_cast<size_t>(f.kv.size()), 0);
      for (const auto* zone : {&z.steady, &z.retrieved, &z.estimated, &z.dropped})
        for (int64_t pos : *zone) {
          ASSERT_GE(pos, 0);
          ASSERT_LT(pos, f.kv.size());
          ++seen[static_cast<size_t>(pos)];
        }
      for (size_t pos = 0; pos < seen.size(); ++pos)
        ASSERT_EQ(seen[pos], 1) << "position " << pos << " at step " << step << " group " << g;
      // The steady zone: the sinks, then everything not yet clustered (window + new tokens).
      ASSERT_LE(static_cast<int64_t>(z.steady.size()), 4 + 16 + 32 - 1);
      ASSERT_GE(static_cast<int64_t>(z.steady.size()), 4 + 16);
      for (int i = 0; i < 4; ++i) ASSERT_EQ(z.steady[static_cast<size_t>(i)], i);
      ASSERT_EQ(z.steady.back(), f.kv.size() - 1);
    }
    ASSERT_EQ(s.total_tokens(), 2 * f.kv.size());
    ASSERT_EQ(s.steady_tokens, 2 * f.kv.steady_tokens());
    // Budgets grow with the cluster count.
    const int64_t m = f.kv.index(0)->num_clusters();
    // Every 32 tokens past the window become one more segment of 8 clusters.
    ASSERT_EQ(f.kv.index(0)->num_segments(), 3 + (f.kv.size() - 200) / 32);
    ASSERT_EQ(m, clusters_after_build + 8 * ((f.kv.size() - 200) / 32));
    ASSERT_EQ(s.clusters, 2 * m);
    ASSERT_EQ(s.retrieved_clusters, 2 * p.num_retrieve(m));
    ASSERT_EQ(s.retrieved_clusters + s.estimated_clusters + s.dropped_clusters + s.empty_clusters, s.clusters);
  }
  EXPECT_EQ(f.kv.index(0)->num_segments(), 3 + 4);
  EXPECT_EQ(f.kv.index(0)->num_clusters(), clusters_after_build + 4 * 8);
}

TEST(WaveAttention, GroupScoresAreSoftmaxesSummedOverTheGroupWithEmptyClustersMasked) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 16;
  WaveIndexParams p = test_params();
  p.segment_tokens = 256;
  p.retrieval_budget = 1.0;
  auto host = make_host_allocator();
  WaveIndex index(d, p, *host);
  // The first segment repeats one key: its strided samples coincide, ties go to the first cluster,
  // and the other clusters of that segment end up empty.
  std::vector<float> keys = testing::random_normal(rng, static_cast<size_t>(1024 * d));
  for (int64_t t = 1; t < 256; ++t) std::copy_n(keys.data(), d, keys.data() + t * d);
  auto values = testing::random_normal(rng, keys.size());
  index.build(keys.data(), values.data(), 1024, 0);
  ASSERT_GT(index.num_empty_clusters(), 0);

  const int rows = 4;
  const float scale = 0.25f;
  auto q = testing::random_normal(rng, static_cast<size_t>(rows * d));
  const int64_t m = index.num_clusters();
  std::vector<float> logits(static_cast<size_t>(rows * m)), scores(static_cast<size_t>(m));
  index.centroid_logits(q.data(), rows, scale, logits.data());
  group_cluster_scores(index, logits.data(), rows, scores.data());
  // Independent: per head softmax over non-empty clusters of q . C * scale, summed.
  std::vector<double> expect(static_cast<size_t>(m), 0.0);
  for (int r = 0; r < rows; ++r) {
    std::vector<double> l(static_cast<size_t>(m));
    double mx = -1e300, sum = 0.0;
    for (int64_t c = 0; c < m; ++c) {
      double dot = 0.0;
      for (int i = 0; i < d; ++i) dot += static_cast<double>(q[static_cast<size_t>(r * d + i)]) * index.centroid(c)[i];
      l[static_cast<size_t>(c)] = dot * scale;
      if (index.cluster_size(c) > 0) mx = std::max(mx, l[static_cast<size_t>(c)]);
    }
    for (int64_t c = 0; c < m; ++c)
      if (index.cluster_size(c) > 0) sum += std::exp(l[static_cast<size_t>(c)] - mx);
    for (int64_t c = 0; c < m; ++c)
      if (index.cluster_size(c) > 0) expect[static_cast<size_t>(c)] += std::exp(l[static_cast<size_t>(c)] - mx) / sum;
  }
  for (int64_t c = 0; c < m; ++c) {
    if (index.cluster_size(c) == 0) {
      EXPECT_EQ(scores[static_cast<size_t>(c)], -std::numeric_limits<float>::infinity());
    } else {
      EXPECT_NEAR(scores[static_cast<size_t>(c)], expect[static_cast<size_t>(c)], 1e-5);
    }
  }
  // Even a budget of every cluster never selects an empty one.
  ClusterSelection sel = select_clusters(scores.data(), m, m, m);
  EXPECT_EQ(sel.non_empty, m - index.num_empty_clusters());
  EXPECT_EQ(static_cast<int64_t>(sel.retrieved.size()), sel.non_empty);
  EXPECT_TRUE(sel.estimated.empty());
  for (int64_t c : sel.retrieved) EXPECT_GT(index.cluster_size(c), 0);
  for (size_t i = 1; i < sel.retrieved.size(); ++i)
    EXPECT_GE(scores[static_cast<size_t>(sel.retrieved[i - 1])], scores[static_cast<size_t>(sel.retrieved[i])]);
}

TEST(WaveAttention, EstimationBudgetOfOneLeavesNoClusterOut) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  WaveIndexParams p = test_params();
  p.estimation_budget = 1.0;
  Fixture f({4, 1, 32}, p);
  f.append(rng, 2000);
  f.kv.build_index();
  auto q = testing::random_normal(rng, 4 * 32);
  std::vector<float> out(q.size());
  f.kv.attend_decode(q.data(), out.data());
  const WaveStepStats s = f.kv.last_stats();
  EXPECT_EQ(s.dropped_clusters, 0);
  EXPECT_EQ(s.dropped_tokens, 0);
  EXPECT_EQ(s.retrieved_clusters, p.num_retrieve(s.clusters));
  EXPECT_EQ(s.retrieved_clusters + s.estimated_clusters + s.empty_clusters, s.clusters);
}

}  // namespace
}  // namespace retro::attention
