#pragma once
// Segmented spherical k-means: the clustering behind the wave index (ALGORITHM.md section 3).
//
// The input is cut into segments of segment_tokens consecutive vectors; segment s of n_s vectors gets
// ceil(n_s / tokens_per_cluster) clusters, initialised by strided sampling (centroid i = vector at
// floor((i + 1/2) * n_s / M)). Iterations 1 .. iterations-1 run inside each segment: assign every
// vector to the centroid of maximum inner product, then set each centroid to the L2-normalised mean
// of its members (a centroid that lost all members keeps its previous value). The last iteration
// assigns every vector against the centroids of all segments (a vector may move to another
// segment's cluster) and stores un-normalised member means.

#include <cstdint>
#include <vector>

namespace retro::attention {

struct KMeansParams {
  int64_t tokens_per_cluster = 16;
  int64_t segment_tokens = 8192;
  int iterations = 10;
};

// Clusters of a segment of n vectors: ceil(n / tokens_per_cluster) (so clusters hold at most
// tokens_per_cluster on average), at least 1 for n > 0.
int64_t clusters_for_tokens(int64_t n, int64_t tokens_per_cluster);

struct KMeansResult {
  int64_t num_clusters = 0;
  std::vector<float> centroids;     // [num_clusters, dim] un-normalised member means; zero when empty
  std::vector<int32_t> sizes;       // [num_clusters]
  std::vector<int32_t> assignment;  // [n] cluster of each vector
  // Loss after each assignment step, sum over vectors of (|x| - x . c/|c|) with c the centroid the
  // vector was assigned to: non-increasing from one iteration to the next. [iterations]
  std::vector<double> loss;
};

// x [n, dim] fp32 (callers centre it first). Segments are clustered in parallel.
KMeansResult segmented_spherical_kmeans(const float* x, int64_t n, int dim, const KMeansParams& params);

}  // namespace retro::attention
