#pragma once
// Device-side views of the wave index and the host store of one layer, shared by the CUDA wave
// kernels (index build, cluster selection, retrieval through the GPU cluster cache).
//
// A *group* is one (sequence, KV head): the G = num_q_heads / num_kv_heads query heads of a decode
// token that share one KV head, and the index over that head's clustered tokens. Groups are
// numbered g = b * num_kv_heads + h for batch row b and KV head h, so the queries of group g are the
// G contiguous rows q + (b * num_q_heads + h * G) * head_dim of a [batch, num_q_heads, head_dim]
// query tensor, i.e. q + g * G * head_dim.
//
// Every array lives on the GPU and is sized for a capacity fixed when the layer's state is created,
// so the pointers never move and a decode step over them can be captured in a CUDA graph; the
// counts that grow (clusters, rows) are read by the kernels from device memory.

#include <cstdint>

namespace retro::attention::cuda {

// The meta index of every group of a layer. Cluster c of group g is entry g * cluster_capacity + c.
struct WaveIndexView {
  int num_groups = 0;
  int group_size = 0;  // G: query heads per KV head
  int head_dim = 0;    // 64 or 128
  int64_t cluster_capacity = 0;
  const int32_t* num_clusters = nullptr;  // [groups] clusters in use (device)
  const void* centroids = nullptr;        // [groups, cluster_capacity, head_dim] bf16, mean key added back
  const float* value_sums = nullptr;      // [groups, cluster_capacity, head_dim] fp32
  const int32_t* sizes = nullptr;         // [groups, cluster_capacity] tokens per cluster, 0 = empty
  // [groups, cluster_capacity] first row of the cluster's list in the group's host store; the
  // cluster's rows are [cluster_begin, cluster_begin + size).
  const int64_t* cluster_begin = nullptr;
  // fp8 host KV: [groups, cluster_capacity] fp32 scale of each cluster's K rows and of its V rows (a
  // stored e4m3 element e stands for e * scale); both null when the host store holds bf16 rows.
  const float* k_scales = nullptr;
  const float* v_scales = nullptr;
};

// The host store of a layer: every clustered K/V row of a group, cluster-contiguous, in pinned host
// pages mapped into the device address space (kernels read misses straight from them). Row r of
// group g lives at k_pages[g * max_pages + r / page_rows] + (r % page_rows) * head_dim (elements),
// and the same for V. Pages are allocated as a sequence grows; unused entries are null.
struct HostStoreView {
  const void* const* k_pages = nullptr;  // [groups, max_pages] device-visible pointers
  const void* const* v_pages = nullptr;
  int max_pages = 0;
  int64_t page_rows = 0;
  int elem_bytes = 2;  // 2: bf16 rows; 1: fp8-e4m3 rows, scaled per cluster (WaveIndexView::k_scales)
};

// The estimation zone as the partial states of its slices, before their merge (wave_select.h:
// WaveSelectParams::keep_estimate_partials). Record (group g, slice s, row r) at partials +
// ((g * slices + s) * G + r) * (head_dim + 2) holds (m, mass, numerator[head_dim]) with m a natural-log
// reference; the slices of group g in use are the first ceil(count[g] / kWaveEstimateTile).
struct WaveEstimatePartials {
  const float* partials = nullptr;
  const int32_t* count = nullptr;  // [groups] estimated clusters
  int slices = 0;
};

// What cluster selection hands to retrieval: per group, the clusters to attend exactly (best first)
// and the attention state of the estimation zone (merged, or as its slices' partial states).
struct WaveSelection {
  int retrieve_capacity = 0;        // entries per group in retrieve_ids
  int32_t* retrieve_ids = nullptr;  // [groups, retrieve_capacity] cluster ids, best first
  int32_t* retrieve_count = nullptr;  // [groups]
  float* estimate_o = nullptr;      // [groups, G, head_dim] fp32, softmax-normalised over the estimated clusters
  float* estimate_lse = nullptr;    // [groups, G] fp32 natural log; -inf when nothing was estimated
  WaveEstimatePartials estimate_partials;  // instead of estimate_o / estimate_lse when partials is set
};

}  // namespace retro::attention::cuda
