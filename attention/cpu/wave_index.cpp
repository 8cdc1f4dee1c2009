#include "attention/wave_index.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/impl/paged_rows.h"
#include "attention/impl/thread_pool.h"
#include "attention/impl/vector_ops.h"
#include "runtime/core/error.h"

namespace retro::attention {

namespace {
// Clusters per page of the meta index.
constexpr int64_t kIndexPageClusters = 1024;

// ceil(fraction * n) without letting fp error push an exact product up by one (0.25 * 64 is 16).
int64_t budget_clusters(double fraction, int64_t n) {
  return static_cast<int64_t>(std::ceil(fraction * static_cast<double>(n) - 1e-9));
}
}  // namespace

void WaveIndexParams::validate() const {
  RETRO_CHECK(sink_tokens >= 0, "wave index: sink_tokens must be >= 0, got {}", sink_tokens);
  RETRO_CHECK(window_tokens >= 0, "wave index: window_tokens must be >= 0, got {}", window_tokens);
  RETRO_CHECK(tokens_per_cluster > 0, "wave index: tokens_per_cluster must be positive, got {}", tokens_per_cluster);
  RETRO_CHECK(segment_tokens > 0, "wave index: segment_tokens must be positive, got {}", segment_tokens);
  RETRO_CHECK(kmeans_iterations > 0, "wave index: kmeans_iterations must be positive, got {}", kmeans_iterations);
  RETRO_CHECK(update_segment_tokens > 0, "wave index: update_segment_tokens must be positive, got {}",
              update_segment_tokens);
  RETRO_CHECK(min_retrieve_clusters >= 0, "wave index: min_retrieve_clusters must be >= 0, got {}",
              min_retrieve_clusters);
  RETRO_CHECK(host_page_tokens > 0, "wave index: host_page_tokens must be positive, got {}", host_page_tokens);
  RETRO_CHECK(std::isfinite(retrieval_budget) && retrieval_budget >= 0.0 && retrieval_budget <= 1.0,
              "wave index: retrieval_budget must be a fraction in [0, 1], got {}", retrieval_budget);
  RETRO_CHECK(std::isfinite(estimation_budget) && estimation_budget >= 0.0,
              "wave index: estimation_budget must be >= 0 (>= 1 estimates every other cluster), got {}",
              estimation_budget);
  RETRO_CHECK(tokens_per_cluster <= segment_tokens,
              "wave index: tokens_per_cluster ({}) exceeds segment_tokens ({}): a segment would hold less than one "
              "cluster", tokens_per_cluster, segment_tokens);
  RETRO_CHECK(tokens_per_cluster <= update_segment_tokens,
              "wave index: tokens_per_cluster ({}) exceeds update_segment_tokens ({}): an update segment would hold "
              "less than one cluster", tokens_per_cluster, update_segment_tokens);
}

int64_t WaveIndexParams::update_clusters() const {
  return clusters_for_tokens(update_segment_tokens, tokens_per_cluster);
}

int64_t WaveIndexParams::num_retrieve(int64_t n_clusters) const {
  return std::min(n_clusters, std::max<int64_t>(budget_clusters(retrieval_budget, n_clusters), min_retrieve_clusters));
}

int64_t WaveIndexParams::num_estimate(int64_t n_clusters) const {
  const int64_t rest = n_clusters - num_retrieve(n_clusters);
  if (estimation_budget >= 1.0) return rest;
  return std::min(rest, budget_clusters(estimation_budget, n_clusters));
}

KMeansParams WaveIndexParams::kmeans_params() const {
  return KMeansParams{tokens_per_cluster, segment_tokens, kmeans_iterations};
}

// ---- WaveIndex ----

WaveIndex::WaveIndex(int head_dim, const WaveIndexParams& params, Allocator& allocator)
    : head_dim_(head_dim), params_(params), allocator_(&allocator) {
  RETRO_CHECK(head_dim > 0, "wave index: head_dim must be positive, got {}", head_dim);
  params_.validate();
  mean_key_.assign(static_cast<size_t>(head_dim), 0.0f);
  const int64_t page = params_.host_page_tokens;
  keys_ = std::make_unique<impl::PagedRows<float>>(allocator, MemoryPurpose::kKvHost, head_dim, page);
  values_ = std::make_unique<impl::PagedRows<float>>(allocator, MemoryPurpose::kKvHost, head_dim, page);
  positions_ = std::make_unique<impl::PagedRows<int32_t>>(allocator, MemoryPurpose::kIndex, 1, page);
  centroids_ = std::make_unique<impl::PagedRows<float>>(allocator, MemoryPurpose::kIndex, head_dim, kIndexPageClusters);
  value_sums_ = std::make_unique<impl::PagedRows<float>>(allocator, MemoryPurpose::kIndex, head_dim, kIndexPageClusters);
  sizes_ = std::make_unique<impl::PagedRows<int32_t>>(allocator, MemoryPurpose::kIndex, 1, kIndexPageClusters);
  begins_ = std::make_unique<impl::PagedRows<int64_t>>(allocator, MemoryPurpose::kIndex, 1, kIndexPageClusters);
}

WaveIndex::~WaveIndex() = default;
WaveIndex::WaveIndex(WaveIndex&&) noexcept = default;
WaveIndex& WaveIndex::operator=(WaveIndex&&) noexcept = default;

int64_t WaveIndex::num_clusters() const { return sizes_->size(); }
int64_t WaveIndex::num_tokens() const { return keys_->size(); }
const float* WaveIndex::centroid(int64_t c) const { return centroids_->row(c); }
const float* WaveIndex::value_sum(int64_t c) const { return value_sums_->row(c); }
int32_t WaveIndex::cluster_size(int64_t c) const { return *sizes_->row(c); }
int64_t WaveIndex::cluster_begin(int64_t c) const { return *begins_->row(c); }
size_t WaveIndex::host_bytes() const { return keys_->bytes() + values_->bytes(); }
size_t WaveIndex::index_bytes() const {
  return positions_->bytes() + centroids_->bytes() + value_sums_->bytes() + sizes_->bytes() + begins_->bytes();
}

void WaveIndex::build(const float* keys, const float* values, int64_t n, int64_t first_position) {
  RETRO_CHECK(num_clusters() == 0 && !has_mean_, "wave index: build() runs once, on an empty index");
  RETRO_CHECK(n >= 0, "wave index: negative token count {}", n);
  if (n == 0) return;
  const int d = head_dim_;
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < d; ++i) mean[static_cast<size_t>(i)] += keys[t * d + i];
  for (int i = 0; i < d; ++i) mean_key_[static_cast<size_t>(i)] = static_cast<float>(mean[static_cast<size_t>(i)] / n);
  has_mean_ = true;
  add_clusters(keys, values, n, first_position, params_.kmeans_params());
}

void WaveIndex::append_segment(const float* keys, const float* values, int64_t n, int64_t first_position) {
  RETRO_CHECK(n >= 0, "wave index: negative token count {}", n);
  if (n == 0) return;
  if (!has_mean_) {
    // No prefill build: the first segment supplies the mean key.
    std::vector<double> mean(static_cast<size_t>(head_dim_), 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int i = 0; i < head_dim_; ++i) mean[static_cast<size_t>(i)] += keys[t * head_dim_ + i];
    for (int i = 0; i < head_dim_; ++i) mean_key_[static_cast<size_t>(i)] = static_cast<float>(mean[static_cast<size_t>(i)] / n);
    has_mean_ = true;
  }
  KMeansParams km = params_.kmeans_params();
  km.segment_tokens = n;  // one segment: the last iteration sees only its own centroids
  add_clusters(keys, values, n, first_position, km);
}

void WaveIndex::add_clusters(const float* keys, const float* values, int64_t n, int64_t first_position,
                             const KMeansParams& kmeans) {
  RETRO_CHECK(first_position >= 0 && first_position + n <= INT32_MAX,
              "wave index: positions [{}, {}) do not fit the int32 position list", first_position, first_position + n);
  const int d = head_dim_;
  std::vector<float> centred(static_cast<size_t>(n * d));
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < d; ++i) centred[static_cast<size_t>(t * d + i)] = keys[t * d + i] - mean_key_[static_cast<size_t>(i)];
  KMeansResult km = segmented_spherical_kmeans(centred.data(), n, d, kmeans);
  centred.clear();
  centred.shrink_to_fit();

  // Cluster-contiguous order of the tokens (stable within a cluster: position order).
  const int64_t m = km.num_clusters;
  std::vector<int64_t> start(static_cast<size_t>(m + 1), 0);
  for (int64_t j = 0; j < m; ++j) start[static_cast<size_t>(j + 1)] = start[static_cast<size_t>(j)] + km.sizes[static_cast<size_t>(j)];
  std::vector<int64_t> order(static_cast<size_t>(n));
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < n; ++t) order[static_cast<size_t>(fill[static_cast<size_t>(km.assignment[static_cast<size_t>(t)])]++)] = t;
  }

  const int64_t base = keys_->size();
  std::vector<float> centroid(static_cast<size_t>(d)), vsum(static_cast<size_t>(d));
  std::vector<float> krows, vrows;
  std::vector<int32_t> prow;
  for (int64_t j = 0; j < m; ++j) {
    const int32_t size = km.sizes[static_cast<size_t>(j)];
    std::fill(vsum.begin(), vsum.end(), 0.0f);
    krows.resize(static_cast<size_t>(size * d));
    vrows.resize(static_cast<size_t>(size * d));
    prow.resize(static_cast<size_t>(size));
    for (int64_t r = 0; r < size; ++r) {
      const int64_t t = order[static_cast<size_t>(start[static_cast<size_t>(j)] + r)];
      std::copy_n(keys + t * d, d, krows.data() + r * d);
      std::copy_n(values + t * d, d, vrows.data() + r * d);
      impl::axpy(1.0f, values + t * d, vsum.data(), d);  // value sums accumulate in fp32
      prow[static_cast<size_t>(r)] = static_cast<int32_t>(first_position + t);
    }
    keys_->append(krows.data(), size, d);
    values_->append(vrows.data(), size, d);
    positions_->append(prow.data(), size, 1);
    // The stored centroid is the mean of the member keys: the centred mean plus the mean key.
    for (int i = 0; i < d; ++i)
      centroid[static_cast<size_t>(i)] = km.centroids[static_cast<size_t>(j * d + i)] + mean_key_[static_cast<size_t>(i)];
    centroids_->append(centroid.data(), 1, d);
    value_sums_->append(vsum.data(), 1, d);
    sizes_->append(&size, 1, 1);
    const int64_t begin = base + start[static_cast<size_t>(j)];
    begins_->append(&begin, 1, 1);
    if (size == 0) ++num_empty_;
  }
  num_segments_ += (n + kmeans.segment_tokens - 1) / kmeans.segment_tokens;
}

void WaveIndex::cluster_runs(int64_t c, std::vector<KvRun>& out) const {
  const int64_t begin = cluster_begin(c);
  const int64_t size = cluster_size(c);
  keys_->for_each_run(begin, size, [&](const float* k, int64_t first, int64_t count) {
    out.push_back(KvRun{k, values_->row(first), count, KvRun::kBeforeAllQueries});
  });
}

void WaveIndex::host_runs(std::vector<KvRun>& out) const {
  keys_->for_each_run(0, keys_->size(), [&](const float* k, int64_t first, int64_t count) {
    out.push_back(KvRun{k, values_->row(first), count, KvRun::kBeforeAllQueries});
  });
}

void WaveIndex::set_budgets(double retrieval_budget, double estimation_budget) {
  WaveIndexParams p = params_;
  p.retrieval_budget = retrieval_budget;
  p.estimation_budget = estimation_budget;
  p.validate();
  params_ = p;
}

void WaveIndex::cluster_positions(int64_t c, std::vector<int64_t>& out) const {
  positions_->for_each_run(cluster_begin(c), cluster_size(c), [&](const int32_t* p, int64_t, int64_t count) {
    out.insert(out.end(), p, p + count);
  });
}

void WaveIndex::centroid_logits(const float* q, int rows, float scale, float* logits) const {
  const int d = head_dim_;
  const int64_t m = num_clusters();
  centroids_->for_each_run(0, m, [&](const float* c, int64_t first, int64_t count) {
    for (int64_t j = 0; j < count; ++j)
      for (int r = 0; r < rows; ++r) logits[r * m + first + j] = scale * impl::dot(q + r * d, c + j * d, d);
  });
}

float WaveIndex::estimate_log_mass(const float* q, int64_t c, float scale) const {
  const int32_t size = cluster_size(c);
  if (size == 0) return -std::numeric_limits<float>::infinity();
  return std::log(static_cast<float>(size)) + scale * impl::dot(q, centroid(c), head_dim_);
}

void build_wave_indexes(std::span<const WaveIndexBuild> tasks) {
  for (const WaveIndexBuild& t : tasks) RETRO_CHECK(t.index != nullptr, "build_wave_indexes: task without an index");
  impl::parallel_for(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const WaveIndexBuild& t = tasks[static_cast<size_t>(i)];
    t.index->build(t.keys, t.values, t.n, t.first_position);
  });
}

}  // namespace retro::attention
