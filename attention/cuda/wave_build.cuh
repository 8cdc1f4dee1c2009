#pragma once
// Kernels of the GPU wave-index build (wave_build.h). Framework-free: raw pointers and sizes.
//
// Per pass of the k-means: wave_assign_kernel (scores on tensor cores, running argmax, cluster
// histogram) -> radix sort of the keys (CUB, in the launcher) -> cluster_begin_kernel (exclusive
// scan of the histogram) -> member_partial_kernel (sums over chunks of the sorted rows) ->
// finalize_kernel (per cluster: combine the chunk sums in order; normalise, or mean + mean key).
//
// Member sums without atomics: chunk j holds sorted rows [j * kSumRows, (j + 1) * kSumRows); the
// part of cluster c inside chunk j is summed into partial slot c + j. The slot is unique per
// (cluster, chunk) pair: rows are sorted by cluster, so a later cluster never has rows in an earlier
// chunk. Each cluster then adds its slots c + j0 .. c + j1 in order: deterministic, and a huge
// cluster costs one row read per kSumRows members, not one warp walking all of them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "attention/cuda/prefill_attention.cuh"  // mma.sync, ldmatrix, cp.async and swizzle helpers
#include "attention/cuda/wave_build.h"

namespace retro::attention::cuda::kernels {

constexpr int kBuildThreads = 256;
constexpr int kBuildWarps = kBuildThreads / 32;
constexpr int kSumRows = kWaveBuildSumRows;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- per-lane slices of a row: lane l holds elements [l * kV, (l + 1) * kV), kV = head_dim / 32 ----

template <int kV>
__device__ __forceinline__ void load_bf16_slice(const __nv_bfloat16* p, float* f) {
  if constexpr (kV == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
  } else {
    static_assert(kV == 2, "head_dim 64 or 128");
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    f[0] = a.x, f[1] = a.y;
  }
}

template <int kV>
__device__ __forceinline__ void store_bf16_slice(__nv_bfloat16* p, const float* f) {
  if constexpr (kV == 4) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16(f[0], f[1]), pack_bf16(f[2], f[3]));
  } else {
    *reinterpret_cast<uint32_t*>(p) = pack_bf16(f[0], f[1]);
  }
}

__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <int kV>
__device__ __forceinline__ void store_f16_slice(__half* p, const float* f) {
  if constexpr (kV == 4) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_f16(f[0], f[1]), pack_f16(f[2], f[3]));
  } else {
    *reinterpret_cast<uint32_t*>(p) = pack_f16(f[0], f[1]);
  }
}

// c += a.b on tensor cores, fp16 operands (m16n8k16, fp32 accumulators).
__device__ __forceinline__ void mma_16816_f16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int kV>
__device__ __forceinline__ void load_f32_slice(const float* p, float* f) {
  if constexpr (kV == 4) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
  } else {
    const float2 a = *reinterpret_cast<const float2*>(p);
    f[0] = a.x, f[1] = a.y;
  }
}

template <int kV>
__device__ __forceinline__ void store_f32_slice(float* p, const float* f) {
  if constexpr (kV == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  } else {
    *reinterpret_cast<float2*>(p) = make_float2(f[0], f[1]);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

// ---- mean key ----

// partial [groups, chunks, head_dim] fp64: sums of the keys of token chunk blockIdx.x of group
// blockIdx.y. Each thread owns two dimensions of every kRows-th token of the chunk.
template <int kHeadDim>
__global__ void __launch_bounds__(kBuildThreads)
    mean_partial_kernel(const __nv_bfloat16* __restrict__ k, int64_t stride_group, int64_t stride_token, int64_t n,
                        double* __restrict__ partial) {
  constexpr int kPairs = kHeadDim / 2;
  constexpr int kRows = kBuildThreads / kPairs;
  const int g = blockIdx.y;
  const int64_t chunk = blockIdx.x;
  const int pair = threadIdx.x % kPairs, rr = threadIdx.x / kPairs;
  const int64_t t0 = chunk * kWaveBuildMeanRows;
  const int64_t t1 = min(n, t0 + kWaveBuildMeanRows);
  const __nv_bfloat16* kg = k + int64_t(g) * stride_group + pair * 2;
  double a0 = 0.0, a1 = 0.0;
  for (int64_t t = t0 + rr; t < t1; t += kRows) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(kg + t * stride_token));
    a0 += f.x;
    a1 += f.y;
  }
  __shared__ double red[kBuildThreads][2];
  red[threadIdx.x][0] = a0;
  red[threadIdx.x][1] = a1;
  __syncthreads();
  if (rr == 0) {
    for (int r = 1; r < kRows; ++r) {  // fixed order: the result does not depend on scheduling
      a0 += red[r * kPairs + pair][0];
      a1 += red[r * kPairs + pair][1];
    }
    double* out = partial + (int64_t(g) * gridDim.x + chunk) * kHeadDim + pair * 2;
    out[0] = a0;
    out[1] = a1;
  }
}

// mean_key [groups, head_dim] fp32 = (sum of the chunk sums, in order) / n. One CTA per group,
// one thread per dimension.
__global__ void mean_finalize_kernel(const double* __restrict__ partial, int64_t chunks, int64_t n, int head_dim,
                                     float* __restrict__ mean_key) {
  const int g = blockIdx.x, i = threadIdx.x;
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[(int64_t(g) * chunks + c) * head_dim + i];
  mean_key[int64_t(g) * head_dim + i] = static_cast<float>(s / static_cast<double>(n));
}

// ---- initialisation ----

// centroids [groups, C, head_dim] fp16: cluster c (local index i of segment s with M clusters and
// n_s tokens) starts as the L2-normalised centred key of token floor((2i + 1) * n_s / (2M)) of its
// segment. One warp per cluster.
template <int kHeadDim>
__global__ void __launch_bounds__(kBuildThreads)
    init_centroids_kernel(const __nv_bfloat16* __restrict__ k, int64_t stride_group, int64_t stride_token,
                          const float* __restrict__ mean_key, int64_t n, int64_t segment_tokens,
                          int64_t clusters_per_segment, int64_t num_clusters, __half* __restrict__ centroids) {
  constexpr int kV = kHeadDim / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = blockIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kBuildWarps + warp;
  if (c >= num_clusters) return;
  const int64_t s = c / clusters_per_segment;
  const int64_t i = c - s * clusters_per_segment;
  const int64_t seg_begin = s * segment_tokens;
  const int64_t ns = min(n, seg_begin + segment_tokens) - seg_begin;
  const int64_t m = min(clusters_per_segment, num_clusters - s * clusters_per_segment);
  const int64_t src = min(ns - 1, ((2 * i + 1) * ns) / (2 * m));
  float x[kV], mu[kV];
  load_bf16_slice<kV>(k + int64_t(g) * stride_group + (seg_begin + src) * stride_token + lane * kV, x);
  load_f32_slice<kV>(mean_key + int64_t(g) * kHeadDim + lane * kV, mu);
  float sq = 0.0f;
#pragma unroll
  for (int e = 0; e < kV; ++e) {
    x[e] -= mu[e];
    sq += x[e] * x[e];
  }
  const float norm = sqrtf(warp_sum(sq));
  if (norm > 0.0f) {
    const float inv = 1.0f / norm;
#pragma unroll
    for (int e = 0; e < kV; ++e) x[e] *= inv;
  }
  const int64_t at = (int64_t(g) * num_clusters + c) * kHeadDim + lane * kV;
  store_f16_slice<kV>(centroids + at, x);
}

// tokens [groups, n] i32 = t: the values the radix sort carries along with the cluster keys.
__global__ void token_index_kernel(int64_t n, int32_t* __restrict__ tokens) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) tokens[int64_t(blockIdx.y) * n + t] = static_cast<int32_t>(t);
}

// ---- assignment: scores on tensor cores, running argmax ----

struct AssignTile {
  static constexpr int kRows = kWaveAssignRows;  // tokens per CTA: 4 warps along M x 32 rows
  static constexpr int kCols = kWaveAssignCols;  // centroids per tile: 2 warps along N x 64
  template <int kHeadDim>
  static constexpr int kSmemBytes = (kRows + 2 * kCols) * kHeadDim * 2;  // X + 2 centroid stages
};

// Loads centroids [c0, c0 + kCols) (those at or past c_hi zero-filled) into a swizzled tile.
template <int kHeadDim>
__device__ __forceinline__ void load_centroid_tile(uint32_t tile, const __half* centroids, int64_t c0, int64_t c_hi) {
  constexpr int kChunks = kHeadDim / 8;
  for (int i = threadIdx.x; i < kWaveAssignCols * kChunks; i += kBuildThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = c0 + r;
    const bool valid = row < c_hi;
    cp_async_16(tile + swizzled<kChunks>(r, c), centroids + (valid ? row : 0) * kHeadDim + c * 8, valid);
  }
}

// One CTA: kRows tokens of one segment of group blockIdx.y (blockIdx.x = segment * tiles_per_segment
// + tile) against centroids [c_lo, c_hi): those of the segment (within_segment) or all of the group.
// The X tile is built once in shared memory and held in registers as A fragments: each key centred
// in fp32 and scaled to unit length (the argmax over centroids does not change under a positive
// scale, and unit rows fit fp16's range whatever the keys' magnitude), then rounded to fp16, whose
// 11-bit significand keeps near-ties apart far better than bf16's 8 at the same mma rate. Centroid
// tiles (fp16 unit vectors) stream through two cp.async stages. Each thread keeps, for its 4 rows,
// the best score and centroid over the columns it sees in increasing order (strict >: ties keep the
// lower index); quads and the two column warps then combine with ties to the lower index, as the
// CPU's argmax does.
// keys [groups, n] u32 = g * C + best; counts [groups, C] += 1.
template <int kHeadDim>
__global__ void __launch_bounds__(kBuildThreads, 1)
    wave_assign_kernel(const __nv_bfloat16* __restrict__ x, int64_t stride_group, int64_t stride_token,
                       const float* __restrict__ mean_key, const __half* __restrict__ centroids, int64_t n,
                       int64_t segment_tokens, int64_t clusters_per_segment, int64_t num_centroids,
                       int tiles_per_segment, int within_segment, uint32_t* __restrict__ keys,
                       int32_t* __restrict__ counts) {
  constexpr int kRows = AssignTile::kRows, kCols = AssignTile::kCols;
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kMTiles = 2;  // m16 tiles per warp (32 rows)
  constexpr int kNTiles = 8;  // n8 tiles per warp (64 centroids)
  constexpr uint32_t kTileBytes = kCols * kHeadDim * 2;
  static_assert(kRows == 4 * kMTiles * 16 && kCols == 2 * kNTiles * 8 && kBuildWarps == 8, "warp layout 4 x 2");
  static_assert(32 % kChunks == 0, "a row's chunks lie in consecutive lanes of one warp");
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float s_mean[kHeadDim];
  __shared__ float s_best[2][kRows];
  __shared__ int s_arg[2][kRows];

  const int g = blockIdx.y;
  const int64_t seg = blockIdx.x / tiles_per_segment;
  const int tile_in_seg = blockIdx.x % tiles_per_segment;
  const int64_t seg_begin = seg * segment_tokens;
  const int64_t seg_end = min(n, seg_begin + segment_tokens);
  const int64_t row0 = seg_begin + int64_t(tile_in_seg) * kRows;
  if (row0 >= seg_end) return;  // the short last segment needs fewer tiles (uniform per CTA)
  const int64_t c_lo = within_segment ? seg * clusters_per_segment : 0;
  const int64_t c_hi = within_segment ? min(num_centroids, c_lo + clusters_per_segment) : num_centroids;
  const int num_tiles = static_cast<int>((c_hi - c_lo + kCols - 1) / kCols);

  // Shared memory: X, then the two centroid stages.
  const uint32_t sx = smem_u32(smem);
  const uint32_t sc0 = sx + kRows * kHeadDim * 2;
  auto sc = [&](int stage) { return sc0 + uint32_t(stage) * kTileBytes; };
  const __half* cg = centroids + int64_t(g) * num_centroids * kHeadDim;

  load_centroid_tile<kHeadDim>(sc(0), cg, c_lo, c_hi);
  cp_async_commit();
  for (int i = threadIdx.x; i < kHeadDim; i += kBuildThreads)
    s_mean[i] = mean_key != nullptr ? mean_key[int64_t(g) * kHeadDim + i] : 0.0f;
  __syncthreads();

  // X tile: rows of this segment only (the rest zero), centred and scaled to unit length in fp32,
  // rounded to fp16. The kChunks threads of a row are consecutive lanes (the trip count is uniform),
  // so the row's squared norm is a shuffle sum over them.
  const __nv_bfloat16* xg = x + int64_t(g) * stride_group;
  static_assert((kRows * kChunks) % kBuildThreads == 0, "uniform trip count for the shuffles");
  for (int i = threadIdx.x; i < kRows * kChunks; i += kBuildThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = row0 + r;
    float v[8];
    float sq = 0.0f;
    if (row < seg_end) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xg + row * stride_token + c * 8);
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = __bfloat1622float2(h[q]);
        v[2 * q] = f.x - s_mean[c * 8 + 2 * q];
        v[2 * q + 1] = f.y - s_mean[c * 8 + 2 * q + 1];
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = 0.0f;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sq = fmaf(v[e], v[e], sq);
#pragma unroll
    for (int off = 1; off < kChunks; off <<= 1) sq += __shfl_xor_sync(kFullMask, sq, off);
    const float inv = sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f;  // correctly rounded: the CPU twin repeats it
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) w[q] = pack_f16(v[2 * q] * inv, v[2 * q + 1] * inv);
    *reinterpret_cast<uint4*>(smem + swizzled<kChunks>(r, c)) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp % 4, wn = warp / 4;
  uint32_t a[kMTiles][kKSteps][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const int r = wm * 32 + mt * 16 + (lane % 16), c = ks * 2 + lane / 16;
      ldmatrix_x4(sx + swizzled<kChunks>(r, c), a[mt][ks][0], a[mt][ks][1], a[mt][ks][2], a[mt][ks][3]);
    }

  // best[mt][h]: rows wm*32 + mt*16 + lane/4 + 8h.
  float best[kMTiles][2];
  int arg[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      best[mt][h] = -INFINITY;
      arg[mt][h] = static_cast<int>(c_lo);
    }

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < num_tiles) load_centroid_tile<kHeadDim>(sc(stage ^ 1), cg, c_lo + int64_t(tile + 1) * kCols, c_hi);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    float s[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int j = 0; j < kNTiles; j += 2) {
        const int r = wn * 64 + j * 8 + (lane / 16) * 8 + lane % 8, c = ks * 2 + (lane / 8) % 2;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(sc(stage) + swizzled<kChunks>(r, c), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816_f16(s[mt][j], a[mt][ks], b0, b1);
          mma_16816_f16(s[mt][j + 1], a[mt][ks], b2, b3);
        }
      }
    }
    const int64_t col0 = c_lo + int64_t(tile) * kCols + wn * 64 + (lane % 4) * 2;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int j = 0; j < kNTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t col = col0 + j * 8 + (e & 1);
          if (col < c_hi && s[mt][j][e] > best[mt][e / 2]) {
            best[mt][e / 2] = s[mt][j][e];
            arg[mt][e / 2] = static_cast<int>(col);
          }
        }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v = best[mt][h];
      int i = arg[mt][h];
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {  // the quad of lanes sharing the row
        const float ov = __shfl_xor_sync(kFullMask, v, off);
        const int oi = __shfl_xor_sync(kFullMask, i, off);
        if (ov > v || (ov == v && oi < i)) {
          v = ov;
          i = oi;
        }
      }
      if (lane % 4 == 0) {
        const int r = wm * 32 + mt * 16 + lane / 4 + 8 * h;
        s_best[wn][r] = v;
        s_arg[wn][r] = i;
      }
    }
  __syncthreads();
  if (threadIdx.x < kRows) {
    const int r = threadIdx.x;
    const int64_t row = row0 + r;
    if (row < seg_end) {
      const float v0 = s_best[0][r], v1 = s_best[1][r];
      const int i0 = s_arg[0][r], i1 = s_arg[1][r];
      const int pick = (v1 > v0 || (v1 == v0 && i1 < i0)) ? i1 : i0;
      keys[int64_t(g) * n + row] = static_cast<uint32_t>(int64_t(g) * num_centroids + pick);
      atomicAdd(&counts[int64_t(g) * num_centroids + pick], 1);
    }
  }
}

// ---- cluster-contiguous layout ----

// begins [groups, C] i64 = exclusive prefix sum of counts [groups, C]; with out_sizes / out_begin
// (the final pass) also the build's outputs at capacity strides. One CTA of kScanThreads per group.
constexpr int kScanThreads = 512;
__global__ void __launch_bounds__(kScanThreads)
    cluster_begin_kernel(const int32_t* __restrict__ counts, int64_t num_clusters, int64_t* __restrict__ begins,
                         int32_t* __restrict__ out_sizes, int64_t* __restrict__ out_begin, int64_t capacity) {
  using Scan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int64_t g = blockIdx.x;
  int64_t carry = 0;
  for (int64_t base = 0; base < num_clusters; base += kScanThreads) {
    const int64_t c = base + threadIdx.x;
    const int32_t count = c < num_clusters ? counts[g * num_clusters + c] : 0;
    int64_t excl = 0, total = 0;
    Scan(temp).ExclusiveSum(int64_t(count), excl, total);
    if (c < num_clusters) {
      begins[g * num_clusters + c] = carry + excl;
      if (out_sizes != nullptr) {
        out_sizes[g * capacity + c] = count;
        out_begin[g * capacity + c] = carry + excl;
      }
    }
    carry += total;
    __syncthreads();  // the scan's shared storage is reused by the next tile
  }
}

// Sums over chunk blockIdx.x * kBuildWarps + warp of the sorted rows of group blockIdx.y: the
// centred keys (k - mean, fp32) and, with kValues, the values of each cluster's run inside the
// chunk go to partial slot cluster + chunk ([groups, C + chunks, head_dim] fp32). With kValues
// (the final pass) the rows' tokens are already the output order.
template <int kHeadDim, bool kValues>
__global__ void __launch_bounds__(kBuildThreads)
    member_partial_kernel(const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                          int64_t stride_group, int64_t stride_token, const float* __restrict__ mean_key,
                          const uint32_t* __restrict__ sorted_keys, const int32_t* __restrict__ sorted_tokens,
                          int64_t n, int64_t num_clusters, int64_t chunks, float* __restrict__ key_partial,
                          float* __restrict__ value_partial) {
  constexpr int kV = kHeadDim / 32;
  constexpr int kUnroll = 4;  // rows loaded before the first is used
  static_assert(kSumRows == 64, "two rows per lane");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * kBuildWarps + warp;
  if (j >= chunks) return;
  const int64_t r0 = j * kSumRows;
  const int cnt = static_cast<int>(min(int64_t(kSumRows), n - r0));
  const int64_t base = int64_t(g) * n + r0;
  const int64_t key0 = int64_t(g) * num_clusters;
  // Lane l holds rows l and 32 + l of the chunk.
  int c_lo = 0, c_hi = 0, t_lo = 0, t_hi = 0;
  if (lane < cnt) {
    c_lo = static_cast<int>(int64_t(sorted_keys[base + lane]) - key0);
    t_lo = sorted_tokens[base + lane];
  }
  if (lane + 32 < cnt) {
    c_hi = static_cast<int>(int64_t(sorted_keys[base + 32 + lane]) - key0);
    t_hi = sorted_tokens[base + 32 + lane];
  }
  float mu[kV];
  load_f32_slice<kV>(mean_key + int64_t(g) * kHeadDim + lane * kV, mu);
  const __nv_bfloat16* kg = k + int64_t(g) * stride_group + lane * kV;
  const __nv_bfloat16* vg = kValues ? v + int64_t(g) * stride_group + lane * kV : nullptr;
  const int64_t slot0 = int64_t(g) * (num_clusters + chunks) + j;
  float acc[kV], vacc[kV];
#pragma unroll
  for (int e = 0; e < kV; ++e) acc[e] = vacc[e] = 0.0f;
  int cur = __shfl_sync(kFullMask, c_lo, 0);
  auto flush = [&]() {
    const int64_t slot = slot0 + cur;
    store_f32_slice<kV>(key_partial + slot * kHeadDim + lane * kV, acc);
    if constexpr (kValues) store_f32_slice<kV>(value_partial + slot * kHeadDim + lane * kV, vacc);
#pragma unroll
    for (int e = 0; e < kV; ++e) acc[e] = vacc[e] = 0.0f;
  };
  for (int i0 = 0; i0 < cnt; i0 += kUnroll) {
    float xr[kUnroll][kV], vr[kUnroll][kV];
    int cr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u;  // uniform across the warp
      cr[u] = __shfl_sync(kFullMask, i < 32 ? c_lo : c_hi, i & 31);
      const int t = __shfl_sync(kFullMask, i < 32 ? t_lo : t_hi, i & 31);
      if (i < cnt) {
        load_bf16_slice<kV>(kg + int64_t(t) * stride_token, xr[u]);
        if constexpr (kValues) load_bf16_slice<kV>(vg + int64_t(t) * stride_token, vr[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i0 + u >= cnt) break;
      if (cr[u] != cur) {
        flush();
        cur = cr[u];
      }
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        acc[e] += xr[u][e] - mu[e];
        if constexpr (kValues) vacc[e] += vr[u][e];
      }
    }
  }
  flush();
}

// Per cluster (one warp each, cluster blockIdx.x * kBuildWarps + warp of group blockIdx.y): adds the
// cluster's partial slots in order. kFinal = false: centroids [groups, C, head_dim] fp16 = the
// L2-normalised sum, kept as it was when the cluster is empty or its sum is zero. kFinal = true: out_centroids = sum / size + mean key
// (the mean key alone when empty), out_value_sums = value sum, both [groups, capacity, head_dim].
template <int kHeadDim, bool kFinal>
__global__ void __launch_bounds__(kBuildThreads)
    finalize_kernel(const int32_t* __restrict__ counts, const int64_t* __restrict__ begins,
                    const float* __restrict__ key_partial, const float* __restrict__ value_partial,
                    int64_t num_clusters, int64_t chunks, const float* __restrict__ mean_key,
                    __half* __restrict__ centroids, __nv_bfloat16* __restrict__ out_centroids, float* __restrict__ out_value_sums,
                    int64_t capacity) {
  constexpr int kV = kHeadDim / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = blockIdx.y;
  const int64_t c = int64_t(blockIdx.x) * kBuildWarps + warp;
  if (c >= num_clusters) return;
  const int32_t size = counts[int64_t(g) * num_clusters + c];
  const int64_t begin = begins[int64_t(g) * num_clusters + c];
  float sum[kV], vsum[kV];
#pragma unroll
  for (int e = 0; e < kV; ++e) sum[e] = vsum[e] = 0.0f;
  if (size > 0) {
    const int64_t j0 = begin / kSumRows, j1 = (begin + size - 1) / kSumRows;
    const int64_t slot0 = int64_t(g) * (num_clusters + chunks) + c;
    for (int64_t j = j0; j <= j1; ++j) {
      float p[kV];
      load_f32_slice<kV>(key_partial + (slot0 + j) * kHeadDim + lane * kV, p);
#pragma unroll
      for (int e = 0; e < kV; ++e) sum[e] += p[e];
      if constexpr (kFinal) {
        load_f32_slice<kV>(value_partial + (slot0 + j) * kHeadDim + lane * kV, p);
#pragma unroll
        for (int e = 0; e < kV; ++e) vsum[e] += p[e];
      }
    }
  }
  if constexpr (!kFinal) {
    float sq = 0.0f;
#pragma unroll
    for (int e = 0; e < kV; ++e) sq += sum[e] * sum[e];
    const float norm = sqrtf(warp_sum(sq));
    if (size > 0 && norm > 0.0f) {
#pragma unroll
      for (int e = 0; e < kV; ++e) sum[e] = sum[e] / norm;
      const int64_t at = (int64_t(g) * num_clusters + c) * kHeadDim + lane * kV;
      store_f16_slice<kV>(centroids + at, sum);
    }
  } else {
    float mu[kV];
    load_f32_slice<kV>(mean_key + int64_t(g) * kHeadDim + lane * kV, mu);
    const float inv = size > 0 ? 1.0f / static_cast<float>(size) : 0.0f;
#pragma unroll
    for (int e = 0; e < kV; ++e) sum[e] = sum[e] * inv + mu[e];
    const int64_t out = (int64_t(g) * capacity + c) * kHeadDim + lane * kV;
    store_bf16_slice<kV>(out_centroids + out, sum);
    store_f32_slice<kV>(out_value_sums + out, vsum);
  }
}

// ---- host store ----

// dst row r of group g = K/V row order[g * n + r]; one 16-byte chunk per thread, grid-stride.
template <int kHeadDim>
__global__ void scatter_clustered_kv_kernel(const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                                            int64_t stride_group, int64_t stride_token,
                                            const int32_t* __restrict__ order, int64_t n, int64_t total_chunks,
                                            __nv_bfloat16* __restrict__ dst_k, __nv_bfloat16* __restrict__ dst_v,
                                            int64_t dst_stride_group) {
  constexpr int kChunks = kHeadDim / 8;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total_chunks;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / kChunks;
    const int chunk = static_cast<int>(idx % kChunks);
    const int64_t g = row / n, r = row - g * n;
    const int64_t t = order[row];
    const int64_t src = g * stride_group + t * stride_token + chunk * 8;
    const int64_t dst = g * dst_stride_group + r * kHeadDim + chunk * 8;
    if (dst_k != nullptr) *reinterpret_cast<uint4*>(dst_k + dst) = *reinterpret_cast<const uint4*>(k + src);
    if (dst_v != nullptr) *reinterpret_cast<uint4*>(dst_v + dst) = *reinterpret_cast<const uint4*>(v + src);
  }
}

}  // namespace retro::attention::cuda::kernels
