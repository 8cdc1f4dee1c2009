#pragma once
// Cluster selection and the estimation zone on the GPU: the first half of a wave attention decode
// step (ALGORITHM.md sections 1-2) for every group of a layer at once. CPU twin: group_cluster_scores,
// select_clusters and estimate_clusters (attention/wave_attention.h) with the budgets of
// WaveIndexParams::num_retrieve / num_estimate.
//
// Per group g (one sequence, one KV head) with C = num_clusters[g] clusters and query rows q_r:
//   l[r, c] = sm_scale * q_r . centroid_c
//   score_c = sum_r softmax_c(l[r, :]) over the non-empty clusters (size > 0); empty ones never win
//   top-k by score, k = min(n_retrieve + n_estimate, non-empty clusters), ties to the lower id;
//   the first n_retrieve are retrieved (ids written best first), the rest estimated:
//   estimate_o[r] = sum_i exp(l_ri) VS_i / sum_i s_i exp(l_ri), estimate_lse[r] = ln sum_i s_i exp(l_ri).
// n_retrieve and n_estimate are computed on the device from num_clusters[g] with the CPU formulas,
// because the cluster count grows during decode inside a captured CUDA graph.
//
// Work split (kernels in wave_select.cuh): logits with many CTAs per group (tiles of clusters, so one
// group never waits on one SM) into a fp32 workspace with per-tile softmax partials; scores as
// order-preserving integer keys; per group one CTA runs a radix select for the n_retrieve-th and the
// k-th key, lists the chosen ids and sorts only the retrieved ones; the estimation zone is summed
// over slices of the estimated list by many CTAs and merged by log-sum-exp.
//
// Plan / run: plan_wave_select() sizes the workspace once per shape and capacity; run_wave_select()
// only launches (no host synchronisation), so it can be captured in a CUDA graph.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention/cuda/wave_layout.h"

namespace retro::attention::cuda {

// Geometry shared by the planner and the kernels.
inline constexpr int kWaveLogitTile = 256;        // clusters per CTA of the logit kernel
inline constexpr int kWaveScoreTile = 1024;       // clusters per CTA of the score kernel
inline constexpr int kWaveEstimateTile = 256;     // estimated clusters per CTA of the estimation kernel
inline constexpr int kWaveSelectThreads = 1024;   // threads of the per-group selection CTA
inline constexpr int kWaveSortSharedMax = 4096;   // larger retrieval sorts run in the workspace

// Per-group counters written to WaveSelectParams::stats ([groups, kWaveSelectStatCount] int64).
inline constexpr int kWaveStatClusters = 0;           // num_clusters[g]
inline constexpr int kWaveStatNonEmptyClusters = 1;   // clusters with size > 0
inline constexpr int kWaveStatRetrievedClusters = 2;
inline constexpr int kWaveStatEstimatedClusters = 3;
inline constexpr int kWaveStatRetrievedTokens = 4;
inline constexpr int kWaveStatEstimatedTokens = 5;
inline constexpr int kWaveStatClusteredTokens = 6;    // sum of all sizes
inline constexpr int kWaveSelectStatCount = 7;

// The zone budgets, with the meaning and defaults of WaveIndexParams (attention/wave_index.h).
struct WaveSelectBudgets {
  double retrieval_budget = 0.018;   // fraction of clusters retrieved, in [0, 1]
  double estimation_budget = 0.232;  // fraction estimated; >= 1 estimates every other cluster
  int min_retrieve_clusters = 32;    // floor of the retrieval zone in clusters
};

struct WaveSelectShape {
  int num_groups = 0;  // batch * num_kv_heads
  int group_size = 0;  // G: query heads per KV head, 1..8
  int head_dim = 0;    // 64 or 128
};

struct WaveSelectPlan {
  WaveSelectShape shape;
  WaveSelectBudgets budgets;
  int64_t cluster_capacity = 0;
  int retrieve_capacity = 0;  // num_retrieve(cluster_capacity): the most ids a group can retrieve
  int estimate_capacity = 0;  // num_estimate(cluster_capacity)
  int logit_tiles = 0;        // ceil(cluster_capacity / kWaveLogitTile)
  int score_tiles = 0;        // ceil(cluster_capacity / kWaveScoreTile)
  int estimate_slices = 0;    // ceil(estimate_capacity / kWaveEstimateTile)
  int sort_capacity = 0;      // power of two >= retrieve_capacity
  bool sort_in_workspace = false;  // sort_capacity > kWaveSortSharedMax
  int64_t key_stride = 0;     // cluster_capacity rounded up to 4 (16-byte key rows)
  // Byte offsets of the workspace sections (each 256-byte aligned) and the total.
  size_t logits_offset = 0;             // [groups, cluster_capacity, G] fp32
  size_t tile_partials_offset = 0;      // [groups, logit_tiles, G, 2] fp32 (max, sum of exp)
  size_t tile_counts_offset = 0;        // [groups, logit_tiles, 2] int64 (non-empty clusters, tokens)
  size_t keys_offset = 0;               // [groups, key_stride] uint32 score keys
  size_t estimate_ids_offset = 0;       // [groups, cluster_capacity] int32
  size_t estimate_count_offset = 0;     // [groups] int32
  size_t estimate_partials_offset = 0;  // [groups, estimate_slices, G, head_dim + 2] fp32
  size_t sort_offset = 0;               // [groups, sort_capacity] uint64 (when sort_in_workspace)
  size_t workspace_bytes = 0;
};

struct WaveSelectParams {
  // [batch, num_q_heads, head_dim] bf16, contiguous: the G rows of group g start at q + g * G * head_dim.
  const void* q = nullptr;
  WaveIndexView index;  // centroids, value_sums, sizes, num_clusters (cluster_begin is not read)
  float sm_scale = 0.0f;
  WaveSelection out;    // retrieve_ids / retrieve_count / estimate_o / estimate_lse
  // Optional outputs (null: not written).
  int64_t* stats = nullptr;           // [groups, kWaveSelectStatCount] per-group counters
  int32_t* estimate_ids = nullptr;    // [groups, cluster_capacity] estimated ids in id order
  int32_t* estimate_count = nullptr;  // [groups]
  // Leave the estimation zone as its slices' partial states (wave_estimate_partials) for the
  // consumer to merge, out.estimate_o / estimate_lse not written (they may be null): one kernel
  // fewer.
  bool keep_estimate_partials = false;
};

// Sizes the workspace for clusters_per_group <= cluster_capacity at run time. Throws retro::Error
// on an unsupported shape or out-of-range budgets. Needs no device.
WaveSelectPlan plan_wave_select(const WaveSelectShape& shape, const WaveSelectBudgets& budgets,
                                int64_t cluster_capacity);

// Checks the arguments against the plan, then launches on stream. workspace: device memory of
// plan.workspace_bytes, 256-byte aligned. num_clusters[g] above the capacity is read as the capacity.
void run_wave_select(const WaveSelectParams& params, const WaveSelectPlan& plan, void* workspace,
                     cudaStream_t stream);

// Where a run with keep_estimate_partials left the estimation zone (the workspace's partials and
// the estimated counts: params.estimate_count when given, else the workspace's).
WaveEstimatePartials wave_estimate_partials(const WaveSelectParams& params, const WaveSelectPlan& plan,
                                            const void* workspace);

// The bare launches without checks (wave_select.cu); returns the first launch error.
cudaError_t launch_wave_select(const WaveSelectParams& params, const WaveSelectPlan& plan, void* workspace,
                               cudaStream_t stream);

}  // namespace retro::attention::cuda
