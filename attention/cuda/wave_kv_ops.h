#pragma once
// Small stream-ordered kernels behind WaveLayerKv (wave_kv.h): appending decode tokens to the
// steady zone, writing clustered rows into the paged host store (bf16, or fp8 with per-cluster
// scales), and offsetting the list rows of a new index segment. Launchers return the launch status
// and never synchronise.

#include <cuda_runtime.h>

#include <cstdint>

#include "attention/cuda/wave_layout.h"

namespace retro::attention::cuda {

// Appends one K and one V row per slot: slot b's rows ([row_elems] bf16 each, at k_new + b *
// row_elems) go to row steady_len[b] of its steady store (slot_stride elements between slots,
// row_elems between rows), then steady_len[b] is incremented. Slots [0, batch).
cudaError_t steady_append(const void* k_new, const void* v_new, void* k_steady, void* v_steady, int32_t* steady_len,
                          int batch, int64_t row_elems, int64_t slot_stride, cudaStream_t stream);

// Where the store kernels below write instead of the host store when k is not null: device rows
// [groups, n, head_dim] (K and V, the store's element type), row r of group g being what row
// row_base + r of store group first_group + g would hold. HostKvStore::upload_rows then moves them
// with the copy engines, which leaves the SMs to the work beside (the next prefill layer) where
// kernel stores into mapped host memory hold them for as long as PCIe takes.
struct RowStaging {
  void* k = nullptr;
  void* v = nullptr;
};

// Writes the rows of `groups` groups in list order into the host store: row r of group g (g in
// [0, groups)) is the source token order[g * n + r], read at src + g * src_stride_group + token *
// src_stride_token, and stored at row row_base + r of store group first_group + g. K and V, bf16
// (store: elem_bytes 2).
cudaError_t store_clustered_rows(const void* k_src, const void* v_src, int64_t src_stride_group,
                                 int64_t src_stride_token, const int32_t* order, int groups, int64_t n, int head_dim,
                                 HostStoreView store, int first_group, int64_t row_base, cudaStream_t stream,
                                 RowStaging staging = {});

// The fp8 twin of store_clustered_rows for the clusters [0, num_clusters) of a new index segment
// (store: elem_bytes 1). Entry g * capacity + c of sizes, begins, k_scales and v_scales is cluster
// c of group g; its rows are the segment's list rows [begins - row_base, begins - row_base + sizes)
// (begins already offset to store rows). Per cluster, the scale of its K rows is max |x| / 448 over
// them (1 when they are all zero), the same for V, both written to k_scales / v_scales, and every
// element is stored as x / scale rounded to e4m3 (nearest even, saturating to +-448: the conversion
// of runtime/core/dtype.h). One CTA per cluster; nothing is written for clusters past num_clusters.
cudaError_t store_clustered_rows_fp8(const void* k_src, const void* v_src, int64_t src_stride_group,
                                     int64_t src_stride_token, const int32_t* order, int groups, int64_t n,
                                     int head_dim, const int32_t* sizes, const int64_t* begins, int64_t capacity,
                                     int64_t num_clusters, float* k_scales, float* v_scales, HostStoreView store,
                                     int first_group, int64_t row_base, cudaStream_t stream,
                                     RowStaging staging = {});

// begins[g * capacity + c] += add for g in [0, groups), c in [0, count).
cudaError_t offset_cluster_begins(int64_t* begins, int groups, int64_t capacity, int64_t count, int64_t add,
                                  cudaStream_t stream);

// The slots of one batched growth call (gather_growth_rows, scatter_growth_index), passed by value.
inline constexpr int kMaxGrowthSlots = 32;
struct GrowthSlots {
  int count = 0;
  int32_t slot[kMaxGrowthSlots] = {};
  int64_t first_cluster[kMaxGrowthSlots] = {};  // the slot's index entries (per KV head) before this growth
  int64_t row_base[kMaxGrowthSlots] = {};       // the slot's host-store rows (per KV head) before this growth
};

// Gathers the update segments of the listed slots into one batch of build groups: rows
// [row0, row0 + n) of slot s's steady zone (token-major [rows, heads, head_dim] bf16, slot_stride
// elements between slots) -> dst [count * heads, n, head_dim], group j * heads + h being head h of
// slots.slot[j]. K and V.
cudaError_t gather_growth_rows(const void* k_steady, const void* v_steady, int64_t slot_stride, int64_t row0,
                               int64_t n, int heads, int head_dim, const GrowthSlots& slots, void* dst_k, void* dst_v,
                               cudaStream_t stream);

// Scatters the index entries of a batched build into the slots' index: clusters [0, clusters) of
// build group j * heads + h (entries at src_capacity strides) -> entries first_cluster[j] + c of index
// group slots.slot[j] * heads + h (capacity strides); centroids bf16 and value_sums fp32 rows of
// head_dim, sizes, and begins with row_base[j] added (the rows the slot held before).
cudaError_t scatter_growth_index(const GrowthSlots& slots, int heads, int head_dim, int64_t clusters,
                                 const void* src_centroids, const float* src_value_sums, const int32_t* src_sizes,
                                 const int64_t* src_begins, int64_t src_capacity, void* centroids, float* value_sums,
                                 int32_t* sizes, int64_t* begins, int64_t capacity, cudaStream_t stream);

// dst[i] = value for i in [0, count).
cudaError_t fill_i32(int32_t* dst, int64_t count, int32_t value, cudaStream_t stream);
// dst[i] = first + i for i in [0, count).
cudaError_t iota_i64(int64_t* dst, int64_t count, int64_t first, cudaStream_t stream);

}  // namespace retro::attention::cuda
