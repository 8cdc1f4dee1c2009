// The wave index: parameters, budgets, the Jensen bound of estimation, and the host store layout.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "attention/wave_index.h"
#include "runtime/core/error.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

std::string validation_message(const WaveIndexParams& p) {
  try {
    p.validate();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    return e.message();
  }
  return "valid";
}

TEST(WaveIndexParams, DefaultsAreTheReferenceValues) {
  WaveIndexParams p;
  EXPECT_EQ(p.sink_tokens, 4);
  EXPECT_EQ(p.window_tokens, 64);
  EXPECT_EQ(p.tokens_per_cluster, 16);
  EXPECT_EQ(p.segment_tokens, 8192);
  EXPECT_EQ(p.kmeans_iterations, 10);
  EXPECT_DOUBLE_EQ(p.retrieval_budget, 0.018);
  EXPECT_DOUBLE_EQ(p.estimation_budget, 0.232);
  EXPECT_EQ(p.update_segment_tokens, 1024);
  EXPECT_EQ(p.update_clusters(), 64);
  EXPECT_NO_THROW(p.validate());
}

TEST(WaveIndexParams, BudgetsRoundUpAndGrowWithTheClusterCount) {
  WaveIndexParams p;
  EXPECT_EQ(p.min_retrieve_clusters, 32);
  EXPECT_EQ(p.num_retrieve(8192), 148);  // ceil(147.456): above the floor
  EXPECT_EQ(p.num_retrieve(1000), 32);   // ceil(18) lifted to the floor
  EXPECT_EQ(p.num_retrieve(20), 20);     // never more than there are
  p.min_retrieve_clusters = 0;           // the reference's pure fractions below
  EXPECT_EQ(p.num_estimate(8192), 1901); // ceil(1900.544)
  EXPECT_EQ(p.num_retrieve(64), 2);      // ceil(1.152)
  EXPECT_EQ(p.num_estimate(64), 15);     // ceil(14.848)
  EXPECT_EQ(p.num_retrieve(0), 0);
  EXPECT_EQ(p.num_estimate(0), 0);
  p.retrieval_budget = 0.25;
  EXPECT_EQ(p.num_retrieve(64), 16);  // an exact product is not pushed up by fp error
  p.estimation_budget = 1.0;
  EXPECT_EQ(p.num_estimate(64), 48);  // all remaining clusters
  p.retrieval_budget = 0.9;
  p.estimation_budget = 0.5;
  EXPECT_EQ(p.num_retrieve(10), 9);
  EXPECT_EQ(p.num_estimate(10), 1);  // clamped to what is left
}

TEST(WaveIndexParams, RejectsInvalidValuesNamingTheField) {
  auto with = [](auto edit) {
    WaveIndexParams p;
    edit(p);
    return validation_message(p);
  };
  EXPECT_NE(with([](auto& p) { p.tokens_per_cluster = 0; }).find("tokens_per_cluster must be positive, got 0"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.segment_tokens = -5; }).find("segment_tokens must be positive, got -5"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.kmeans_iterations = 0; }).find("kmeans_iterations must be positive"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.update_segment_tokens = 0; }).find("update_segment_tokens must be positive"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.sink_tokens = -1; }).find("sink_tokens must be >= 0, got -1"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.window_tokens = -64; }).find("window_tokens must be >= 0"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.host_page_tokens = 0; }).find("host_page_tokens must be positive"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.retrieval_budget = 1.5; }).find("retrieval_budget must be a fraction in [0, 1], got 1.5"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.retrieval_budget = -0.1; }).find("retrieval_budget"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.estimation_budget = -1; }).find("estimation_budget must be >= 0"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.estimation_budget = std::nan(""); }).find("estimation_budget"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.tokens_per_cluster = 32; p.update_segment_tokens = 16; })
                .find("tokens_per_cluster (32) exceeds update_segment_tokens (16)"), std::string::npos);
  EXPECT_NE(with([](auto& p) { p.tokens_per_cluster = 64; p.segment_tokens = 32; })
                .find("tokens_per_cluster (64) exceeds segment_tokens (32)"), std::string::npos);
}

WaveIndexParams small_params() {
  WaveIndexParams p;
  p.tokens_per_cluster = 8;
  p.segment_tokens = 512;
  p.update_segment_tokens = 128;
  p.host_page_tokens = 100;  // lists straddle pages
  return p;
}

TEST(WaveIndex, HostStoreHoldsEveryTokenOnceInClusterContiguousLists) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 16;
  const int64_t n = 1300, first = 4;
  auto keys = testing::random_normal(rng, static_cast<size_t>(n * d), 1.0f, 0.7f);
  auto values = testing::random_normal(rng, static_cast<size_t>(n * d));
  auto host = make_host_allocator();
  WaveIndex index(d, small_params(), *host);
  index.build(keys.data(), values.data(), n, first);
  // A growth segment of 128 tokens: 16 more clusters.
  auto k2 = testing::random_normal(rng, static_cast<size_t>(128 * d));
  auto v2 = testing::random_normal(rng, static_cast<size_t>(128 * d));
  index.append_segment(k2.data(), v2.data(), 128, first + n);
  EXPECT_EQ(index.num_clusters(), 163 + 16);  // ceil(512/8) * 2 + ceil(276/8) = 163
  EXPECT_EQ(index.num_tokens(), n + 128);
  EXPECT_EQ(index.num_segments(), 3 + 1);

  std::vector<int> seen(static_cast<size_t>(n + 128), 0);
  int64_t next_begin = 0, empty = 0;
  for (int64_t c = 0; c < index.num_clusters(); ++c) {
    EXPECT_EQ(index.cluster_begin(c), next_begin);  // lists are contiguous and in cluster order
    next_begin += index.cluster_size(c);
    empty += index.cluster_size(c) == 0;
    std::vector<int64_t> pos;
    index.cluster_positions(c, pos);
    std::vector<KvRun> runs;
    index.cluster_runs(c, runs);
    ASSERT_EQ(static_cast<int32_t>(pos.size()), index.cluster_size(c));
    std::vector<double> kmean(static_cast<size_t>(d), 0.0), vsum(static_cast<size_t>(d), 0.0);
    size_t j = 0;
    for (const KvRun& run : runs) {
      for (int64_t r = 0; r < run.n; ++r, ++j) {
        const int64_t p = pos[j] - first;
        ASSERT_GE(p, 0);
        ASSERT_LT(p, n + 128);
        ++seen[static_cast<size_t>(p)];
        const float* src_k = p < n ? keys.data() + p * d : k2.data() + (p - n) * d;
        const float* src_v = p < n ? values.data() + p * d : v2.data() + (p - n) * d;
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(run.k[r * d + i], src_k[i]) << "the host store holds the token's key unchanged";
          ASSERT_EQ(run.v[r * d + i], src_v[i]);
          kmean[static_cast<size_t>(i)] += src_k[i];
          vsum[static_cast<size_t>(i)] += src_v[i];
        }
      }
    }
    ASSERT_EQ(j, pos.size());
    if (index.cluster_size(c) == 0) continue;
    for (int i = 0; i < d; ++i) {
      EXPECT_NEAR(index.centroid(c)[i], kmean[static_cast<size_t>(i)] / index.cluster_size(c), 1e-4);
      EXPECT_NEAR(index.value_sum(c)[i], vsum[static_cast<size_t>(i)], 1e-3);
    }
  }
  EXPECT_EQ(next_begin, n + 128);
  EXPECT_EQ(empty, index.num_empty_clusters());
  for (size_t p = 0; p < seen.size(); ++p) ASSERT_EQ(seen[p], 1) << "position " << p + first;
  // Growth clusters only hold growth tokens: old clusters are never re-clustered.
  for (int64_t c = 163; c < index.num_clusters(); ++c) {
    std::vector<int64_t> pos;
    index.cluster_positions(c, pos);
    for (int64_t p : pos) EXPECT_GE(p, first + n);
  }
}

TEST(WaveIndex, EstimatedMassNeverExceedsExactMass) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 32;
  const int64_t n = 2000;
  auto keys = testing::random_normal(rng, static_cast<size_t>(n * d), 1.0f, 0.5f);
  auto values = testing::random_normal(rng, static_cast<size_t>(n * d));
  auto host = make_host_allocator();
  WaveIndex index(d, small_params(), *host);
  index.build(keys.data(), values.data(), n, 0);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int trial = 0; trial < 20; ++trial) {
    auto q = testing::random_normal(rng, d, 0.5f + trial * 0.2f);
    for (int64_t c = 0; c < index.num_clusters(); ++c) {
      std::vector<int64_t> pos;
      index.cluster_positions(c, pos);
      if (pos.empty()) continue;
      // Exact ln(sum over members of exp(scale q . k)), in double from the original keys.
      std::vector<double> l;
      for (int64_t p : pos) {
        double dot = 0.0;
        for (int i = 0; i < d; ++i) dot += static_cast<double>(q[static_cast<size_t>(i)]) * keys[static_cast<size_t>(p * d + i)];
        l.push_back(dot * scale);
      }
      const double mx = *std::max_element(l.begin(), l.end());
      double sum = 0.0;
      for (double x : l) sum += std::exp(x - mx);
      const double exact = mx + std::log(sum);
      EXPECT_LE(index.estimate_log_mass(q.data(), c, scale), exact + 1e-4) << "cluster " << c;
    }
  }
}

TEST(WaveIndex, EmptyBuildLetsGrowthStartTheIndex) {
  auto host = make_host_allocator();
  WaveIndex index(8, small_params(), *host);
  index.build(nullptr, nullptr, 0, 0);
  EXPECT_EQ(index.num_clusters(), 0);
  std::vector<float> k(128 * 8, 1.0f), v(128 * 8, 2.0f);
  index.append_segment(k.data(), v.data(), 128, 10);
  EXPECT_EQ(index.num_clusters(), 16);
  EXPECT_EQ(index.num_tokens(), 128);
}

TEST(WaveIndex, MemoryIsAccountedByPurposeAndReleased) {
  auto host = make_host_allocator();
  {
    WaveIndex index(16, small_params(), *host);
    std::vector<float> k(1000 * 16), v(1000 * 16);
    std::mt19937_64 rng(7);
    k = testing::random_normal(rng, k.size());
    v = testing::random_normal(rng, v.size());
    index.build(k.data(), v.data(), 1000, 0);
    const auto& acc = host->accounting();
    EXPECT_GE(acc.usage(MemoryPurpose::kKvHost).live_bytes, 2u * 1000 * 16 * sizeof(float));
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes, index.host_bytes());
    EXPECT_GT(acc.usage(MemoryPurpose::kIndex).live_bytes, 0u);
    EXPECT_EQ(acc.usage(MemoryPurpose::kIndex).live_bytes, index.index_bytes());
  }
  EXPECT_EQ(host->accounting().total().live_bytes, 0u);
}

}  // namespace
}  // namespace retro::attention
