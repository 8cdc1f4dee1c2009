#include "attention/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "attention/impl/thread_pool.h"
#include "attention/impl/vector_ops.h"
#include "runtime/core/error.h"

namespace retro::attention {

int64_t clusters_for_tokens(int64_t n, int64_t tokens_per_cluster) {
  RETRO_CHECK(tokens_per_cluster > 0, "tokens_per_cluster must be positive, got {}", tokens_per_cluster);
  return n <= 0 ? 0 : (n + tokens_per_cluster - 1) / tokens_per_cluster;
}

namespace {

// Rows per scoring block, so that a block of scores ([rows, m] fp32) stays near 4 MiB.
int64_t block_rows(int64_t m) { return std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(m, 1), 32, 1024); }

// Assigns each row of x [n, d] to the centroid c [m, d] of maximum inner product (ties to the lower
// index). assignment [n], best [n] receives that inner product.
void assign_block(const float* x, int64_t n, int d, const float* c, int64_t m, int32_t* assignment, float* best,
                  std::vector<float>& scores) {
  scores.resize(static_cast<size_t>(n * m));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m), d, 1.0f, x, d, c, d,
              0.0f, scores.data(), static_cast<int>(m));
  for (int64_t i = 0; i < n; ++i) {
    const float* s = scores.data() + i * m;
    int64_t arg = 0;
    float v = s[0];
    for (int64_t j = 1; j < m; ++j) {
      if (s[j] > v) {
        v = s[j];
        arg = j;
      }
    }
    assignment[i] = static_cast<int32_t>(arg);
    best[i] = v;
  }
}

void assign_rows(const float* x, int64_t n, int d, const float* c, int64_t m, int32_t* assignment, float* best,
                 bool parallel) {
  const int64_t b = block_rows(m);
  const int64_t blocks = (n + b - 1) / b;
  auto body = [&](int64_t bi) {
    thread_local std::vector<float> scores;
    const int64_t r0 = bi * b;
    const int64_t nr = std::min(b, n - r0);
    assign_block(x + r0 * d, nr, d, c, m, assignment + r0, best + r0, scores);
  };
  if (parallel) {
    impl::parallel_for(blocks, body);
  } else {
    for (int64_t bi = 0; bi < blocks; ++bi) body(bi);
  }
}

// Member sums [m, d] and counts [m] of an assignment.
void member_sums(const float* x, int64_t n, int d, const int32_t* assignment, int64_t m, std::vector<float>& sums,
                 std::vector<int32_t>& counts) {
  sums.assign(static_cast<size_t>(m * d), 0.0f);
  counts.assign(static_cast<size_t>(m), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t a = assignment[i];
    impl::axpy(1.0f, x + i * d, sums.data() + static_cast<int64_t>(a) * d, d);
    ++counts[static_cast<size_t>(a)];
  }
}

void normalize_rows(float* c, int64_t m, int d) {
  for (int64_t j = 0; j < m; ++j) {
    float* row = c + j * d;
    const float norm = std::sqrt(impl::dot(row, row, d));
    if (norm > 0.0f) impl::scale(1.0f / norm, row, d);
  }
}

}  // namespace

KMeansResult segmented_spherical_kmeans(const float* x, int64_t n, int dim, const KMeansParams& params) {
  RETRO_CHECK(n >= 0, "k-means: negative vector count {}", n);
  RETRO_CHECK(dim > 0, "k-means: dimension must be positive, got {}", dim);
  RETRO_CHECK(params.tokens_per_cluster > 0, "k-means: tokens_per_cluster must be positive, got {}",
              params.tokens_per_cluster);
  RETRO_CHECK(params.segment_tokens > 0, "k-means: segment_tokens must be positive, got {}", params.segment_tokens);
  RETRO_CHECK(params.iterations > 0, "k-means: iterations must be positive, got {}", params.iterations);
  const int d = dim;
  KMeansResult result;
  if (n == 0) return result;

  // Segment s covers rows [seg_begin[s], seg_begin[s+1]) and owns clusters [cl_begin[s], cl_begin[s+1]).
  const int64_t num_segments = (n + params.segment_tokens - 1) / params.segment_tokens;
  std::vector<int64_t> seg_begin(static_cast<size_t>(num_segments + 1)), cl_begin(static_cast<size_t>(num_segments + 1));
  for (int64_t s = 0; s <= num_segments; ++s) {
    seg_begin[static_cast<size_t>(s)] = std::min(n, s * params.segment_tokens);
    if (s > 0) {
      const int64_t ns = seg_begin[static_cast<size_t>(s)] - seg_begin[static_cast<size_t>(s - 1)];
      cl_begin[static_cast<size_t>(s)] = cl_begin[static_cast<size_t>(s - 1)] + clusters_for_tokens(ns, params.tokens_per_cluster);
    }
  }
  const int64_t m_total = cl_begin.back();
  result.num_clusters = m_total;

  std::vector<float> norms(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) norms[static_cast<size_t>(i)] = std::sqrt(impl::dot(x + i * d, x + i * d, d));

  // Normalised centroids of every segment, side by side: [m_total, d].
  std::vector<float> centroids(static_cast<size_t>(m_total * d));
  std::vector<int32_t> assignment(static_cast<size_t>(n));
  std::vector<float> best(static_cast<size_t>(n));
  const int local_iterations = params.iterations - 1;
  std::vector<double> seg_loss(static_cast<size_t>(num_segments * std::max(local_iterations, 1)), 0.0);

  impl::parallel_for(num_segments, [&](int64_t s) {
    const int64_t r0 = seg_begin[static_cast<size_t>(s)];
    const int64_t ns = seg_begin[static_cast<size_t>(s + 1)] - r0;
    const int64_t c0 = cl_begin[static_cast<size_t>(s)];
    const int64_t m = cl_begin[static_cast<size_t>(s + 1)] - c0;
    const float* xs = x + r0 * d;
    float* cs = centroids.data() + c0 * d;
    // Strided initialisation: centroid i is the vector at floor((i + 1/2) * ns / m).
    for (int64_t i = 0; i < m; ++i) {
      const int64_t src = std::min(ns - 1, ((2 * i + 1) * ns) / (2 * m));
      std::copy_n(xs + src * d, d, cs + i * d);
    }
    normalize_rows(cs, m, d);
    std::vector<float> sums;
    std::vector<int32_t> counts;
    for (int it = 0; it < local_iterations; ++it) {
      assign_rows(xs, ns, d, cs, m, assignment.data() + r0, best.data() + r0, /*parallel=*/false);
      double loss = 0.0;
      for (int64_t i = 0; i < ns; ++i) loss += norms[static_cast<size_t>(r0 + i)] - best[static_cast<size_t>(r0 + i)];
      seg_loss[static_cast<size_t>(s * local_iterations + it)] = loss;
      member_sums(xs, ns, d, assignment.data() + r0, m, sums, counts);
      for (int64_t j = 0; j < m; ++j) {
        float* row = sums.data() + j * d;
        const float norm = std::sqrt(impl::dot(row, row, d));
        // A centroid without members (or whose members cancel) keeps its previous direction.
        if (counts[static_cast<size_t>(j)] > 0 && norm > 0.0f) {
          for (int k = 0; k < d; ++k) cs[j * d + k] = row[k] / norm;
        }
      }
    }
  });
  for (int it = 0; it < local_iterations; ++it) {
    double loss = 0.0;
    for (int64_t s = 0; s < num_segments; ++s) loss += seg_loss[static_cast<size_t>(s * local_iterations + it)];
    result.loss.push_back(loss);
  }

  // Last iteration: every vector against every centroid, un-normalised means.
  assign_rows(x, n, d, centroids.data(), m_total, assignment.data(), best.data(), /*parallel=*/true);
  double loss = 0.0;
  for (int64_t i = 0; i < n; ++i) loss += norms[static_cast<size_t>(i)] - best[static_cast<size_t>(i)];
  result.loss.push_back(loss);
  std::vector<float> sums;
  member_sums(x, n, d, assignment.data(), m_total, sums, result.sizes);
  for (int64_t j = 0; j < m_total; ++j) {
    const int32_t count = result.sizes[static_cast<size_t>(j)];
    if (count > 0) impl::scale(1.0f / static_cast<float>(count), sums.data() + j * d, d);
  }
  result.centroids = std::move(sums);
  result.assignment = std::move(assignment);
  return result;
}

}  // namespace retro::attention
