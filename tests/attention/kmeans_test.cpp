// Segmented spherical k-means: monotone loss, complete assignment, strided initialisation.

#include <gtest/gtest.h>

#include <numeric>

#include "attention/kmeans.h"
#include "runtime/core/error.h"
#include "tests/attention/reference.h"

namespace retro::attention {
namespace {

// Loss of an assignment with centroids set to the normalised member means (computed here, from
// the assignment alone): sum over x of |x| - x . c/|c|.
double spherical_loss(const std::vector<float>& x, int64_t n, int d, const std::vector<int32_t>& assignment,
                      int64_t m) {
  std::vector<double> sums(static_cast<size_t>(m * d), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < d; ++i) sums[static_cast<size_t>(assignment[static_cast<size_t>(t)] * d + i)] += x[static_cast<size_t>(t * d + i)];
  double loss = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const double* c = sums.data() + assignment[static_cast<size_t>(t)] * d;
    double norm = 0.0, xn = 0.0, dot = 0.0;
    for (int i = 0; i < d; ++i) {
      norm += c[i] * c[i];
      xn += static_cast<double>(x[static_cast<size_t>(t * d + i)]) * x[static_cast<size_t>(t * d + i)];
      dot += c[i] * x[static_cast<size_t>(t * d + i)];
    }
    loss += std::sqrt(xn) - (norm > 0 ? dot / std::sqrt(norm) : 0.0);
  }
  return loss;
}

// Clustered data: a few directions plus noise.
std::vector<float> clustered_data(std::mt19937_64& rng, int64_t n, int d, int directions) {
  auto centers = testing::random_normal(rng, static_cast<size_t>(directions * d), 2.0f);
  auto x = testing::random_normal(rng, static_cast<size_t>(n * d));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t c = static_cast<int64_t>(rng() % directions);
    for (int i = 0; i < d; ++i) x[static_cast<size_t>(t * d + i)] += centers[static_cast<size_t>(c * d + i)];
  }
  return x;
}

TEST(KMeans, LossDoesNotIncreaseAcrossIterations) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 32;
  const int64_t n = 2000;
  auto x = clustered_data(rng, n, d, 20);
  // One segment: the run with t iterations is the first t steps of the run with t + 1.
  double previous = std::numeric_limits<double>::infinity();
  for (int t = 1; t <= 10; ++t) {
    KMeansResult r = segmented_spherical_kmeans(x.data(), n, d, KMeansParams{16, n, t});
    const double loss = spherical_loss(x, n, d, r.assignment, r.num_clusters);
    EXPECT_LE(loss, previous * (1 + 1e-6) + 1e-3) << "iterations " << t;
    previous = loss;
  }
}

TEST(KMeans, ReportedLossIsMonotoneWithSegmentsAndCrossSegmentLastStep) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 16;
  const int64_t n = 3000;
  auto x = clustered_data(rng, n, d, 12);
  KMeansResult r = segmented_spherical_kmeans(x.data(), n, d, KMeansParams{16, 700, 10});
  ASSERT_EQ(r.loss.size(), 10u);
  for (size_t i = 1; i < r.loss.size(); ++i) EXPECT_LE(r.loss[i], r.loss[i - 1] * (1 + 1e-5) + 1e-2) << "iteration " << i;
  // 5 segments: 4 of 700 (44 clusters each) and one of 200 (13 clusters).
  EXPECT_EQ(r.num_clusters, 4 * 44 + 13);
}

TEST(KMeans, EveryVectorIsAssignedExactlyOnceAndCentroidsAreMemberMeans) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 8;
  const int64_t n = 1500;
  auto x = testing::random_normal(rng, static_cast<size_t>(n * d));
  KMeansResult r = segmented_spherical_kmeans(x.data(), n, d, KMeansParams{16, 512, 10});
  ASSERT_EQ(r.assignment.size(), static_cast<size_t>(n));
  std::vector<int32_t> counts(static_cast<size_t>(r.num_clusters), 0);
  std::vector<double> sums(static_cast<size_t>(r.num_clusters * d), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t a = r.assignment[static_cast<size_t>(t)];
    ASSERT_GE(a, 0);
    ASSERT_LT(a, r.num_clusters);
    ++counts[static_cast<size_t>(a)];
    for (int i = 0; i < d; ++i) sums[static_cast<size_t>(a * d + i)] += x[static_cast<size_t>(t * d + i)];
  }
  EXPECT_EQ(counts, r.sizes);
  EXPECT_EQ(std::accumulate(r.sizes.begin(), r.sizes.end(), int64_t{0}), n);
  for (int64_t c = 0; c < r.num_clusters; ++c)
    for (int i = 0; i < d; ++i) {
      const double mean = counts[static_cast<size_t>(c)] ? sums[static_cast<size_t>(c * d + i)] / counts[static_cast<size_t>(c)] : 0.0;
      EXPECT_NEAR(r.centroids[static_cast<size_t>(c * d + i)], mean, 1e-4);
    }
}

TEST(KMeans, OneIterationAssignsAgainstStridedSamples) {
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const int d = 8;
  const int64_t n = 100;
  auto x = testing::random_normal(rng, static_cast<size_t>(n * d));
  KMeansResult r = segmented_spherical_kmeans(x.data(), n, d, KMeansParams{10, 1000, 1});
  ASSERT_EQ(r.num_clusters, 10);
  // Centroid i starts at vector (i + 1/2) * 100 / 10 = 10 i + 5: each sample is its own best match.
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(r.assignment[static_cast<size_t>(10 * i + 5)], i);
}

TEST(KMeans, RejectsNonPositiveParameters) {
  std::vector<float> x(64, 1.0f);
  try {
    segmented_spherical_kmeans(x.data(), 8, 8, KMeansParams{16, 8192, 0});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("iterations must be positive"), std::string::npos) << e.message();
  }
  EXPECT_THROW(segmented_spherical_kmeans(x.data(), 8, 8, KMeansParams{0, 8192, 10}), Error);
  EXPECT_THROW(segmented_spherical_kmeans(x.data(), 8, 0, KMeansParams{}), Error);
}

}  // namespace
}  // namespace retro::attention
