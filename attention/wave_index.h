#pragma once
// The wave index of one (sequence, KV head): a meta index (centroid, value sum and size of every
// cluster) over a host store that keeps the clustered K/V cluster-contiguous (DESIGN.md section 3).
//
// Build (prefill): keys are centred by their mean, cut into segments, clustered by segmented
// spherical k-means, and the mean is added back to the stored centroids. Growth (decode): every
// update segment of new tokens is clustered on its own and appended; old clusters never change.
//
// Storage choice of this CPU twin: K/V are kept in fp32, not the bf16 of the GPU host store, so that
// it is the exact reference the CUDA path is checked against (no storage rounding hides a kernel
// difference) and the CPU backend computes in fp32 end to end. Host memory grows in pages of
// host_page_tokens rows, allocated from the caller's Allocator: K/V lists as MemoryPurpose::kKvHost,
// the meta index and the token positions as MemoryPurpose::kIndex.

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "attention/dense_attention.h"
#include "attention/kmeans.h"
#include "runtime/core/allocator.h"

namespace retro::attention {

// Defaults are the reference values of ALGORITHM.md; each is a parameter, not a constant.
struct WaveIndexParams {
  // Steady zone (exact attention, never clustered): the first sink_tokens and the last window_tokens.
  int sink_tokens = 4;
  int window_tokens = 64;
  // Clustering: about tokens_per_cluster tokens per cluster, prefill cut into segments of
  // segment_tokens, k-means with kmeans_iterations iterations.
  int tokens_per_cluster = 16;
  int segment_tokens = 8192;
  int kmeans_iterations = 10;
  // Decode growth: every update_segment_tokens new tokens past the window become
  // update_segment_tokens / tokens_per_cluster clusters (1024 -> 64).
  int update_segment_tokens = 1024;
  // Fractions of the clusters of a (sequence, KV head) attended exactly (retrieval) and estimated
  // from the meta index (estimation). estimation_budget >= 1 estimates every non-retrieved cluster.
  double retrieval_budget = 0.018;
  double estimation_budget = 0.232;
  // Floor on the retrieval zone in clusters (not in the reference, whose budgets were set for
  // 128K+ contexts): at 1K-4K tokens 1.8% is 1-5 clusters, less than one needle sentence of a
  // character-level model, and retrieval accuracy collapses (needle-llama-tiny at 1K: 30% vs 95%
  // dense without the floor). From 29K tokens on, 1.8% exceeds 32 clusters and the floor is inert.
  int min_retrieve_clusters = 32;
  // Rows per page of the host store (and of the steady-zone store of SequenceKv).
  int host_page_tokens = 1024;

  // Throws retro::Error (kInvalidArgument) naming the field and the value when a count is zero or
  // negative, a budget is outside [0, 1] (estimation: >= 0), or values contradict each other
  // (tokens_per_cluster larger than a segment or an update segment).
  void validate() const;

  // Clusters made from one update segment (64 at the reference values).
  int64_t update_clusters() const;
  // Budgets in clusters for an index of n_clusters clusters, rounded up so that any positive budget
  // keeps at least one cluster: n_retrieve = min(n, max(ceil(retrieval_budget * n),
  // min_retrieve_clusters)), n_estimate =
  // min(n - n_retrieve, ceil(estimation_budget * n)), or n - n_retrieve when estimation_budget >= 1.
  int64_t num_retrieve(int64_t n_clusters) const;
  int64_t num_estimate(int64_t n_clusters) const;
  KMeansParams kmeans_params() const;
};

namespace impl {
template <typename T>
class PagedRows;
}

class WaveIndex {
 public:
  WaveIndex(int head_dim, const WaveIndexParams& params, Allocator& allocator);
  ~WaveIndex();
  WaveIndex(WaveIndex&&) noexcept;
  WaveIndex& operator=(WaveIndex&&) noexcept;

  // Prefill build of the tokens at positions [first_position, first_position + n): centres the keys
  // by their mean, clusters them in segments of segment_tokens, and stores the clusters. Only once,
  // on an empty index. keys, values [n, head_dim] fp32.
  void build(const float* keys, const float* values, int64_t n, int64_t first_position);
  // Growth: clusters n new tokens as one segment (ceil(n / tokens_per_cluster) clusters), centred
  // by the build's mean key, and appends them; existing clusters are left as they are.
  void append_segment(const float* keys, const float* values, int64_t n, int64_t first_position);

  int head_dim() const { return head_dim_; }
  const WaveIndexParams& params() const { return params_; }
  // Changes the decode budgets (validated like the constructor's params).
  void set_budgets(double retrieval_budget, double estimation_budget);
  int64_t num_clusters() const;
  int64_t num_tokens() const;  // clustered tokens in the host store
  int64_t num_empty_clusters() const { return num_empty_; }
  int64_t num_segments() const { return num_segments_; }  // k-means segments clustered so far
  const float* mean_key() const { return mean_key_.data(); }  // [head_dim]; zeros before build

  // Meta index of cluster c.
  const float* centroid(int64_t c) const;   // [head_dim] mean of the member keys (mean key added back)
  const float* value_sum(int64_t c) const;  // [head_dim] fp32 sum of the member values
  int32_t cluster_size(int64_t c) const;
  int64_t cluster_begin(int64_t c) const;   // first row of the cluster's list in the host store

  // The cluster's K/V rows in the host store, appended to out (one run per page it touches).
  void cluster_runs(int64_t c, std::vector<KvRun>& out) const;
  // Positions of the cluster's tokens, appended to out in list order.
  void cluster_positions(int64_t c, std::vector<int64_t>& out) const;
  // Every K/V row of the host store, appended to out (one run per page): the clustered tokens for
  // exact attention over the whole sequence.
  void host_runs(std::vector<KvRun>& out) const;

  // logits [rows, num_clusters] = scale * q_r . centroid_c for the query rows q [rows, head_dim].
  void centroid_logits(const float* q, int rows, float scale, float* logits) const;
  // Estimated ln(mass) of cluster c for one query: ln(size) + scale * q . centroid, -inf if empty.
  // By Jensen it never exceeds ln(sum over members of exp(scale * q . k)).
  float estimate_log_mass(const float* q, int64_t c, float scale) const;

  size_t host_bytes() const;   // K/V lists
  size_t index_bytes() const;  // meta index and positions

 private:
  void add_clusters(const float* keys, const float* values, int64_t n, int64_t first_position,
                    const KMeansParams& kmeans);

  int head_dim_;
  WaveIndexParams params_;
  Allocator* allocator_;
  std::vector<float> mean_key_;
  bool has_mean_ = false;
  int64_t num_empty_ = 0;
  int64_t num_segments_ = 0;
  // Host store: cluster-contiguous lists.
  std::unique_ptr<impl::PagedRows<float>> keys_;       // [tokens, head_dim]
  std::unique_ptr<impl::PagedRows<float>> values_;     // [tokens, head_dim]
  std::unique_ptr<impl::PagedRows<int32_t>> positions_;  // [tokens]
  // Meta index.
  std::unique_ptr<impl::PagedRows<float>> centroids_;    // [clusters, head_dim]
  std::unique_ptr<impl::PagedRows<float>> value_sums_;   // [clusters, head_dim]
  std::unique_ptr<impl::PagedRows<int32_t>> sizes_;      // [clusters]
  std::unique_ptr<impl::PagedRows<int64_t>> begins_;     // [clusters]
};

// One build task of build_wave_indexes: the prefill tokens of one (sequence, KV head).
struct WaveIndexBuild {
  WaveIndex* index = nullptr;
  const float* keys = nullptr;    // [n, head_dim] fp32
  const float* values = nullptr;  // [n, head_dim] fp32
  int64_t n = 0;
  int64_t first_position = 0;
};

// Builds many (sequence, KV head) indexes, in parallel over the tasks.
void build_wave_indexes(std::span<const WaveIndexBuild> tasks);

}  // namespace retro::attention
