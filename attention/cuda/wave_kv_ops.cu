// Kernels of wave_kv_ops.h.

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "attention/cuda/wave_kv_ops.h"
#include "runtime/core/dtype.h"

namespace retro::attention::cuda {

namespace {

__global__ void steady_append_kernel(const uint4* __restrict__ k_new, const uint4* __restrict__ v_new, uint4* k_steady,
                                     uint4* v_steady, int32_t* steady_len, int64_t row_vecs, int64_t slot_vecs) {
  const int b = blockIdx.x;
  const int64_t row = steady_len[b];
  uint4* kd = k_steady + b * slot_vecs + row * row_vecs;
  uint4* vd = v_steady + b * slot_vecs + row * row_vecs;
  for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) {
    kd[i] = k_new[b * row_vecs + i];
    vd[i] = v_new[b * row_vecs + i];
  }
  __syncthreads();  // every thread has read steady_len[b] before it moves
  if (threadIdx.x == 0) steady_len[b] = int32_t(row + 1);
}

// One warp per (group, row); 16 bytes per lane.
__global__ void store_rows_kernel(const uint4* __restrict__ k_src, const uint4* __restrict__ v_src,
                                  int64_t src_stride_group, int64_t src_stride_token, const int32_t* __restrict__ order,
                                  int groups, int64_t n, int vecs, const void* const* __restrict__ k_pages,
                                  const void* const* __restrict__ v_pages, int max_pages, int64_t page_rows,
                                  int first_group, int64_t row_base, RowStaging staging) {
  const int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (item >= int64_t(groups) * n || lane >= vecs) return;
  const int g = int(item / n);
  const int64_t r = item % n;
  const int64_t token = order[item];
  const int64_t src = (g * src_stride_group + token * src_stride_token) / 8 + lane;  // elements -> uint4
  if (staging.k != nullptr) {
    static_cast<uint4*>(staging.k)[item * vecs + lane] = k_src[src];
    static_cast<uint4*>(staging.v)[item * vecs + lane] = v_src[src];
    return;
  }
  const int64_t row = row_base + r;
  const int64_t page = int64_t(first_group + g) * max_pages + row / page_rows;
  const int64_t dst = (row % page_rows) * vecs + lane;
  static_cast<uint4*>(const_cast<void*>(k_pages[page]))[dst] = k_src[src];
  static_cast<uint4*>(const_cast<void*>(v_pages[page]))[dst] = v_src[src];
}

// Largest |x| of 8 bf16.
__device__ __forceinline__ float abs_max8(const uint4& raw) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    m = fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
  }
  return m;
}

// 8 bf16 -> 8 e4m3 of x / scale, rounded to nearest even and saturated; byte i holds element i.
__device__ __forceinline__ uint2 quantise8(const uint4& raw, float scale) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  unsigned w[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    unsigned half[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float2 f = __bfloat1622float2(h[2 * i + j]);
      half[j] = __nv_cvt_float2_to_fp8x2(make_float2(__fdiv_rn(f.x, scale), __fdiv_rn(f.y, scale)), __NV_SATFINITE,
                                         __NV_E4M3);
    }
    w[i] = half[0] | (half[1] << 16);
  }
  return make_uint2(w[0], w[1]);
}

// One CTA per (cluster, group): the scales from the cluster's rows, then the rows quantised into
// the host store (8 elements a thread, consecutive threads on consecutive bytes of a row).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    store_rows_fp8_kernel(const uint4* __restrict__ k_src, const uint4* __restrict__ v_src, int64_t src_stride_group,
                          int64_t src_stride_token, const int32_t* __restrict__ order, int64_t n, int vecs,
                          const int32_t* __restrict__ sizes, const int64_t* __restrict__ begins, int64_t capacity,
                          float* __restrict__ k_scales, float* __restrict__ v_scales,
                          const void* const* __restrict__ k_pages, const void* const* __restrict__ v_pages,
                          int max_pages, int64_t page_rows, int first_group, int64_t row_base, RowStaging staging) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float s_max[2][kWarps];
  const int64_t c = blockIdx.x;
  const int g = blockIdx.y;
  const int64_t entry = int64_t(g) * capacity + c;
  const int64_t size = sizes[entry];
  const int64_t first = begins[entry] - row_base;  // the cluster's first row in the segment's list
  const int32_t* tokens = order + int64_t(g) * n + first;
  const int64_t items = size * vecs;
  // Element offset / 8 of item i: 8 elements of row i / vecs of the cluster.
  auto src_at = [&](int64_t i) {
    return (int64_t(g) * src_stride_group + int64_t(tokens[i / vecs]) * src_stride_token) / 8 + i % vecs;
  };
  float kmax = 0.0f, vmax = 0.0f;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) {
    const int64_t at = src_at(i);
    kmax = fmaxf(kmax, abs_max8(k_src[at]));
    vmax = fmaxf(vmax, abs_max8(v_src[at]));
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    kmax = fmaxf(kmax, __shfl_xor_sync(0xffffffffu, kmax, off));
    vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
  }
  if (threadIdx.x % 32 == 0) {
    s_max[0][threadIdx.x / 32] = kmax;
    s_max[1][threadIdx.x / 32] = vmax;
  }
  __syncthreads();
  kmax = vmax = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    kmax = fmaxf(kmax, s_max[0][w]);
    vmax = fmaxf(vmax, s_max[1][w]);
  }
  const float ks = kmax > 0.0f ? __fdiv_rn(kmax, kFp8E4M3Max) : 1.0f;
  const float vs = vmax > 0.0f ? __fdiv_rn(vmax, kFp8E4M3Max) : 1.0f;
  if (threadIdx.x == 0) {
    k_scales[entry] = ks;
    v_scales[entry] = vs;
  }
  const int64_t table = int64_t(first_group + g) * max_pages;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) {
    const int64_t at = src_at(i);
    if (staging.k != nullptr) {  // row first + i / vecs of the group's list, a row being vecs uint2
      const int64_t dst = (int64_t(g) * n + first) * vecs + i;
      static_cast<uint2*>(staging.k)[dst] = quantise8(k_src[at], ks);
      static_cast<uint2*>(staging.v)[dst] = quantise8(v_src[at], vs);
      continue;
    }
    const int64_t row = row_base + first + i / vecs;
    const int64_t page = table + row / page_rows;
    const int64_t dst = (row % page_rows) * vecs + i % vecs;  // a row of head_dim e4m3 is vecs uint2
    static_cast<uint2*>(const_cast<void*>(k_pages[page]))[dst] = quantise8(k_src[at], ks);
    static_cast<uint2*>(const_cast<void*>(v_pages[page]))[dst] = quantise8(v_src[at], vs);
  }
}

__global__ void offset_begins_kernel(int64_t* begins, int64_t capacity, int64_t count, int64_t add) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < count) begins[blockIdx.y * capacity + c] += add;
}

__global__ void fill_i32_kernel(int32_t* dst, int64_t count, int32_t value) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) dst[i] = value;
}

__global__ void iota_i64_kernel(int64_t* dst, int64_t count, int64_t first) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) dst[i] = first + i;
}

// One CTA per (row, build group); 16 bytes a thread.
__global__ void gather_growth_rows_kernel(const uint4* __restrict__ k_steady, const uint4* __restrict__ v_steady,
                                          int64_t slot_vecs, int64_t row0, int64_t n, int heads, int vecs,
                                          const GrowthSlots slots, uint4* dst_k, uint4* dst_v) {
  const int64_t r = blockIdx.x;
  const int g = blockIdx.y, j = g / heads, h = g % heads;
  const int64_t src = int64_t(slots.slot[j]) * slot_vecs + ((row0 + r) * heads + h) * vecs;
  const int64_t dst = (int64_t(g) * n + r) * vecs;
  for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
    dst_k[dst + i] = k_steady[src + i];
    dst_v[dst + i] = v_steady[src + i];
  }
}

// One CTA per (cluster, build group); a thread per element of the centroid and value-sum rows.
__global__ void scatter_growth_index_kernel(const GrowthSlots slots, int heads, int head_dim,
                                            const __nv_bfloat16* __restrict__ src_centroids,
                                            const float* __restrict__ src_value_sums, const int32_t* __restrict__ src_sizes,
                                            const int64_t* __restrict__ src_begins, int64_t src_capacity,
                                            __nv_bfloat16* centroids, float* value_sums, int32_t* sizes, int64_t* begins,
                                            int64_t capacity) {
  const int64_t c = blockIdx.x;
  const int g = blockIdx.y, j = g / heads, h = g % heads;
  const int64_t src = int64_t(g) * src_capacity + c;
  const int64_t dst = (int64_t(slots.slot[j]) * heads + h) * capacity + slots.first_cluster[j] + c;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    centroids[dst * head_dim + i] = src_centroids[src * head_dim + i];
    value_sums[dst * head_dim + i] = src_value_sums[src * head_dim + i];
  }
  if (threadIdx.x == 0) {
    sizes[dst] = src_sizes[src];
    begins[dst] = src_begins[src] + slots.row_base[j];
  }
}

unsigned blocks(int64_t items, int per_block) { return unsigned((items + per_block - 1) / per_block); }

}  // namespace

cudaError_t steady_append(const void* k_new, const void* v_new, void* k_steady, void* v_steady, int32_t* steady_len,
                          int batch, int64_t row_elems, int64_t slot_stride, cudaStream_t stream) {
  if (batch < 0 || row_elems % 8 != 0 || slot_stride % 8 != 0) return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;
  steady_append_kernel<<<batch, 256, 0, stream>>>(static_cast<const uint4*>(k_new), static_cast<const uint4*>(v_new),
                                                  static_cast<uint4*>(k_steady), static_cast<uint4*>(v_steady),
                                                  steady_len, row_elems / 8, slot_stride / 8);
  return cudaGetLastError();
}

cudaError_t store_clustered_rows(const void* k_src, const void* v_src, int64_t src_stride_group,
                                 int64_t src_stride_token, const int32_t* order, int groups, int64_t n, int head_dim,
                                 HostStoreView store, int first_group, int64_t row_base, cudaStream_t stream,
                                 RowStaging staging) {
  if (head_dim % 8 != 0 || head_dim / 8 > 32 || src_stride_group % 8 != 0 || src_stride_token % 8 != 0 || n < 0 ||
      groups < 0 || store.elem_bytes != 2)
    return cudaErrorInvalidValue;
  const int64_t items = int64_t(groups) * n;
  if (items == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  store_rows_kernel<<<blocks(items * 32, kThreads), kThreads, 0, stream>>>(
      static_cast<const uint4*>(k_src), static_cast<const uint4*>(v_src), src_stride_group, src_stride_token, order,
      groups, n, head_dim / 8, store.k_pages, store.v_pages, store.max_pages, store.page_rows, first_group, row_base,
      staging);
  return cudaGetLastError();
}

cudaError_t store_clustered_rows_fp8(const void* k_src, const void* v_src, int64_t src_stride_group,
                                     int64_t src_stride_token, const int32_t* order, int groups, int64_t n,
                                     int head_dim, const int32_t* sizes, const int64_t* begins, int64_t capacity,
                                     int64_t num_clusters, float* k_scales, float* v_scales, HostStoreView store,
                                     int first_group, int64_t row_base, cudaStream_t stream, RowStaging staging) {
  if (head_dim % 8 != 0 || head_dim <= 0 || src_stride_group % 8 != 0 || src_stride_token % 8 != 0 || n < 0 ||
      groups < 0 || groups > 65535 || num_clusters < 0 || num_clusters > capacity || store.elem_bytes != 1 ||
      sizes == nullptr || begins == nullptr || k_scales == nullptr || v_scales == nullptr)
    return cudaErrorInvalidValue;
  if (groups == 0 || num_clusters == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  store_rows_fp8_kernel<kThreads><<<dim3(unsigned(num_clusters), unsigned(groups)), kThreads, 0, stream>>>(
      static_cast<const uint4*>(k_src), static_cast<const uint4*>(v_src), src_stride_group, src_stride_token, order,
      n, head_dim / 8, sizes, begins, capacity, k_scales, v_scales, store.k_pages, store.v_pages, store.max_pages,
      store.page_rows, first_group, row_base, staging);
  return cudaGetLastError();
}

cudaError_t offset_cluster_begins(int64_t* begins, int groups, int64_t capacity, int64_t count, int64_t add,
                                  cudaStream_t stream) {
  if (groups < 0 || count < 0) return cudaErrorInvalidValue;
  if (groups == 0 || count == 0 || add == 0) return cudaSuccess;
  offset_begins_kernel<<<dim3(blocks(count, 256), unsigned(groups)), 256, 0, stream>>>(begins, capacity, count, add);
  return cudaGetLastError();
}

cudaError_t gather_growth_rows(const void* k_steady, const void* v_steady, int64_t slot_stride, int64_t row0,
                               int64_t n, int heads, int head_dim, const GrowthSlots& slots, void* dst_k, void* dst_v,
                               cudaStream_t stream) {
  if (slots.count < 0 || slots.count > kMaxGrowthSlots || heads <= 0 || head_dim % 8 != 0 || slot_stride % 8 != 0 ||
      n < 0 || row0 < 0 || int64_t(slots.count) * heads > 65535)
    return cudaErrorInvalidValue;
  if (slots.count == 0 || n == 0) return cudaSuccess;
  gather_growth_rows_kernel<<<dim3(unsigned(n), unsigned(slots.count * heads)), 32, 0, stream>>>(
      static_cast<const uint4*>(k_steady), static_cast<const uint4*>(v_steady), slot_stride / 8, row0, n, heads,
      head_dim / 8, slots, static_cast<uint4*>(dst_k), static_cast<uint4*>(dst_v));
  return cudaGetLastError();
}

cudaError_t scatter_growth_index(const GrowthSlots& slots, int heads, int head_dim, int64_t clusters,
                                 const void* src_centroids, const float* src_value_sums, const int32_t* src_sizes,
                                 const int64_t* src_begins, int64_t src_capacity, void* centroids, float* value_sums,
                                 int32_t* sizes, int64_t* begins, int64_t capacity, cudaStream_t stream) {
  if (slots.count < 0 || slots.count > kMaxGrowthSlots || heads <= 0 || head_dim <= 0 || clusters < 0 ||
      clusters > src_capacity || clusters > 65535 || int64_t(slots.count) * heads > 65535)
    return cudaErrorInvalidValue;
  if (slots.count == 0 || clusters == 0) return cudaSuccess;
  scatter_growth_index_kernel<<<dim3(unsigned(clusters), unsigned(slots.count * heads)), 128, 0, stream>>>(
      slots, heads, head_dim, static_cast<const __nv_bfloat16*>(src_centroids), src_value_sums, src_sizes, src_begins,
      src_capacity, static_cast<__nv_bfloat16*>(centroids), value_sums, sizes, begins, capacity);
  return cudaGetLastError();
}

cudaError_t fill_i32(int32_t* dst, int64_t count, int32_t value, cudaStream_t stream) {
  if (count <= 0) return count == 0 ? cudaSuccess : cudaErrorInvalidValue;
  fill_i32_kernel<<<blocks(count, 256), 256, 0, stream>>>(dst, count, value);
  return cudaGetLastError();
}

cudaError_t iota_i64(int64_t* dst, int64_t count, int64_t first, cudaStream_t stream) {
  if (count <= 0) return count == 0 ? cudaSuccess : cudaErrorInvalidValue;
  iota_i64_kernel<<<blocks(count, 256), 256, 0, stream>>>(dst, count, first);
  return cudaGetLastError();
}

}  // namespace retro::attention::cuda
