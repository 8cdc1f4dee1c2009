#pragma once
// Kernels of GPU cluster selection (wave_select.h). Framework-free: raw pointers and plain structs.
//
// Five kernels per call, every one reading its group's cluster count from device memory:
//   logits_kernel            CTA per (tile of kWaveLogitTile clusters, group): l = scale * q . centroid into
//                            [groups, capacity, G] fp32, plus per tile and row the max and sum of exp over
//                            the non-empty clusters, and the tile's non-empty clusters and tokens.
//   scores_kernel            CTA per (tile of kWaveScoreTile clusters, group): merges the tile partials into
//                            the softmax of each row and writes score keys (0 = empty, else float bits + 1,
//                            so a larger key is a larger score).
//   select_kernel            CTA per group: radix select of the n_retrieve-th and the k-th largest key, one
//                            ordered pass that lists the retrieved and the estimated ids (ties by the lower
//                            id), and a bitonic sort of only the retrieved ids, best first.
//   estimate_partials_kernel CTA per (slice of the estimated list, group): the estimation zone of the slice
//                            as (max, mass, numerator) per row.
//   estimate_merge_kernel    CTA per group: log-sum-exp merge of the slices into estimate_o / estimate_lse.

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/wave_estimate.cuh"
#include "attention/cuda/wave_select.h"

namespace retro::attention::cuda::wave_select_kernels {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kLogitWarps = 4;
constexpr int kScoreThreads = 256;
constexpr int kEstimateThreads = 256;
constexpr int kMaxGroup = 8;
// Key of a cluster that is not chosen as a threshold: larger than every score key (scores are <= G).
constexpr unsigned kNoThreshold = 0xffffffffu;

struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void bf16x8_to_float(const Bf16x8& v, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(v.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// ---- Budgets: the formulas of WaveIndexParams::num_retrieve / num_estimate ----

// ceil(fraction * n - 1e-9) with each operation rounded on its own: a fused multiply-add would round
// differently from the host and move a count by one.
__device__ __forceinline__ long long budget_clusters(double fraction, long long n) {
  return static_cast<long long>(ceil(__dadd_rn(__dmul_rn(fraction, static_cast<double>(n)), -1e-9)));
}

__device__ __forceinline__ long long num_retrieve(const WaveSelectBudgets& b, long long n) {
  return min(n, max(budget_clusters(b.retrieval_budget, n), static_cast<long long>(b.min_retrieve_clusters)));
}

__device__ __forceinline__ long long num_estimate(const WaveSelectBudgets& b, long long n) {
  const long long rest = n - num_retrieve(b, n);
  if (b.estimation_budget >= 1.0) return rest;
  return min(rest, budget_clusters(b.estimation_budget, n));
}

// Clusters in use of group g, clamped to [0, capacity] so a bad count cannot read past the arrays.
__device__ __forceinline__ int group_clusters(const int32_t* num_clusters, int g, long long capacity) {
  const long long c = num_clusters[g];
  return static_cast<int>(c < 0 ? 0 : (c > capacity ? capacity : c));
}

// Merges the softmax partial (m2, s2) into (m, s): m a max, s the sum of exp(x - m).
__device__ __forceinline__ void merge_max_sum(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

// Transposing butterfly over the lane bits below 2 * kOffset: on entry every lane holds 2 * kOffset
// partial sums v[0..2*kOffset); on exit v[0] of lane L is the full sum, over those lanes, of value
// index (L mod 2 * kOffset). Each level halves the values a lane carries, so it costs 2 * kOffset - 1
// shuffles instead of a full reduction per value.
template <int kOffset>
__device__ __forceinline__ void transpose_reduce(float* v, int lane) {
  if constexpr (kOffset >= 1) {
    const bool upper = (lane & kOffset) != 0;
#pragma unroll
    for (int i = 0; i < kOffset; ++i) {
      const float send = upper ? v[i] : v[i + kOffset];
      const float keep = upper ? v[i + kOffset] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, kOffset);
    }
    transpose_reduce<kOffset / 2>(v, lane);
  }
}

// ---- Kernel 1: logits and per-tile softmax partials ----
//
// A cluster row of kHeadDim bf16 is read by kLanes lanes, 16 bytes each (coalesced); a warp covers
// kSlots clusters per load step. Every lane holds the query slice of all kRows rows (G padded to a
// power of two; padded rows are zero and never written), so after kU load steps it carries
// kRows * kU = kLanes partial dot products, which one transposing reduction turns into one finished
// logit per lane: lane part j holds step j / kRows, row j % kRows.
//
// q [groups * G, kHeadDim] bf16; centroids [groups, capacity, kHeadDim] bf16; sizes [groups, capacity];
// logits [groups, capacity, G] fp32; tile_partials [groups, logit_tiles, G, 2] fp32;
// tile_counts [groups, logit_tiles, 2] int64.
template <int kHeadDim, int kRows>
__global__ void __launch_bounds__(kLogitWarps * 32)
    logits_kernel(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ centroids,
                  const int32_t* __restrict__ sizes, const int32_t* __restrict__ num_clusters, int group_size,
                  long long capacity, int logit_tiles, float sm_scale, float* __restrict__ logits,
                  float* __restrict__ tile_partials, long long* __restrict__ tile_counts) {
  constexpr int kLanes = kHeadDim / 8;
  constexpr int kSlots = 32 / kLanes;
  constexpr int kU = kLanes / kRows;
  constexpr int kBatch = kU >= 4 ? 1 : 4 / kU;  // reductions per iteration, so >= 4 loads are in flight
  constexpr int kLoads = kBatch * kU;
  constexpr int kStep = kLoads * kSlots;  // clusters per warp iteration
  static_assert(kU >= 1 && kLanes % kRows == 0, "rows must divide the lanes of a cluster row");
  static_assert(kWaveLogitTile % (kStep * kLogitWarps) == 0, "a tile is whole warp iterations");

  const int tile = blockIdx.x, g = blockIdx.y;
  const int C = group_clusters(num_clusters, g, capacity);
  const int begin = tile * kWaveLogitTile;
  if (begin >= C) return;  // nothing reads the partials of tiles past the cluster count
  const int end = min(C, begin + kWaveLogitTile);
  const int G = group_size;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = lane / kLanes, part = lane % kLanes;
  const int my_u = part / kRows, my_r = part % kRows;

  float qf[kRows][8];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r < G) {
      const Bf16x8 raw =
          *reinterpret_cast<const Bf16x8*>(q + (int64_t(g) * G + r) * kHeadDim + part * 8);
      bf16x8_to_float(raw, qf[r]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) qf[r][i] = 0.0f;
    }
  }

  const int64_t gbase = int64_t(g) * capacity;
  const Bf16x8* cent = reinterpret_cast<const Bf16x8*>(centroids) + gbase * kLanes;  // row c: cent + c * kLanes
  const int32_t* gsizes = sizes + gbase;
  float* glogits = logits + gbase * G;

  float run_m = -INFINITY, run_s = 0.0f;  // softmax partial of row my_r over this lane's clusters
  long long n_nonempty = 0, n_tokens = 0;  // counted by the row-0 lanes only

#pragma unroll 1
  for (int t0 = begin + warp * kStep; t0 < end; t0 += kLogitWarps * kStep) {
    Bf16x8 raw[kLoads];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int c = t0 + i * kSlots + slot;
      raw[i] = c < end ? cent[int64_t(c) * kLanes + part] : Bf16x8{};
    }
    int sz[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int c = t0 + (b * kU + my_u) * kSlots + slot;
      sz[b] = c < end ? gsizes[c] : 0;
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      float v[kLanes];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        float kf[8];
        bf16x8_to_float(raw[b * kU + u], kf);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float s = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) s = fmaf(qf[r][i], kf[i], s);
          v[u * kRows + r] = s;
        }
      }
      transpose_reduce<kLanes / 2>(v, lane);
      const float l = sm_scale * v[0];
      const int c = t0 + (b * kU + my_u) * kSlots + slot;
      if (c < end && my_r < G) {
        glogits[int64_t(c) * G + my_r] = l;
        if (sz[b] > 0) {
          const float mn = fmaxf(run_m, l);
          run_s = run_s * expf(run_m - mn) + expf(l - mn);
          run_m = mn;
          if (my_r == 0) {
            ++n_nonempty;
            n_tokens += sz[b];
          }
        }
      }
    }
  }

  // Lanes of the same row differ in the lane bits from kRows up.
#pragma unroll
  for (int o = kRows; o < 32; o *= 2) {
    const float m2 = __shfl_xor_sync(kFullMask, run_m, o);
    const float s2 = __shfl_xor_sync(kFullMask, run_s, o);
    merge_max_sum(run_m, run_s, m2, s2);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    n_nonempty += __shfl_xor_sync(kFullMask, n_nonempty, o);
    n_tokens += __shfl_xor_sync(kFullMask, n_tokens, o);
  }
  __shared__ float sm_m[kLogitWarps][kRows], sm_s[kLogitWarps][kRows];
  __shared__ long long sm_counts[kLogitWarps][2];
  if (lane < kRows) {  // lane r < kRows holds row r
    sm_m[warp][lane] = run_m;
    sm_s[warp][lane] = run_s;
  }
  if (lane == 0) {
    sm_counts[warp][0] = n_nonempty;
    sm_counts[warp][1] = n_tokens;
  }
  __syncthreads();
  const int64_t tile_row = int64_t(g) * logit_tiles + tile;
  if (threadIdx.x < G) {
    const int r = threadIdx.x;
    float m = -INFINITY, s = 0.0f;
#pragma unroll
    for (int w = 0; w < kLogitWarps; ++w) merge_max_sum(m, s, sm_m[w][r], sm_s[w][r]);
    tile_partials[(tile_row * G + r) * 2] = m;
    tile_partials[(tile_row * G + r) * 2 + 1] = s;
  }
  if (threadIdx.x == 0) {
    long long n = 0, t = 0;
#pragma unroll
    for (int w = 0; w < kLogitWarps; ++w) {
      n += sm_counts[w][0];
      t += sm_counts[w][1];
    }
    tile_counts[tile_row * 2] = n;
    tile_counts[tile_row * 2 + 1] = t;
  }
}

// ---- Kernel 2: score keys ----
//
// score_c = sum_r exp(l[c, r] - max_r) / sum_r over the non-empty clusters (rows summed in order, as
// the CPU twin does). The key is the score's float bits + 1 (scores are >= 0, so the bits order
// like the values), 0 for an empty cluster: empty clusters sort below every candidate.
// keys [groups, key_stride] uint32; entries from num_clusters[g] up are not written.
__global__ void __launch_bounds__(kScoreThreads)
    scores_kernel(const float* __restrict__ logits, const float* __restrict__ tile_partials,
                  const int32_t* __restrict__ sizes, const int32_t* __restrict__ num_clusters, int group_size,
                  long long capacity, int logit_tiles, long long key_stride, uint32_t* __restrict__ keys) {
  const int tile = blockIdx.x, g = blockIdx.y;
  const int C = group_clusters(num_clusters, g, capacity);
  const int begin = tile * kWaveScoreTile;
  if (begin >= C) return;
  const int end = min(C, begin + kWaveScoreTile);
  const int G = group_size;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  constexpr int kWarps = kScoreThreads / 32;

  // Softmax max and sum of every row, merged from the logit tiles of this group.
  const int n_tiles = (C + kWaveLogitTile - 1) / kWaveLogitTile;
  const float* partials = tile_partials + int64_t(g) * logit_tiles * G * 2;
  float m[kMaxGroup], s[kMaxGroup];
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r) {
    m[r] = -INFINITY;
    s[r] = 0.0f;
  }
  for (int t = tid; t < n_tiles; t += kScoreThreads) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r)
      if (r < G) merge_max_sum(m[r], s[r], partials[(int64_t(t) * G + r) * 2], partials[(int64_t(t) * G + r) * 2 + 1]);
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) {
      if (r < G) {  // G is uniform: every lane takes the same branch
        const float m2 = __shfl_xor_sync(kFullMask, m[r], o);
        const float s2 = __shfl_xor_sync(kFullMask, s[r], o);
        merge_max_sum(m[r], s[r], m2, s2);
      }
    }
  }
  __shared__ float sm_m[kWarps][kMaxGroup], sm_s[kWarps][kMaxGroup];
  __shared__ float sm_max[kMaxGroup], sm_inv[kMaxGroup];
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) {
      sm_m[warp][r] = m[r];
      sm_s[warp][r] = s[r];
    }
  }
  __syncthreads();
  if (tid < G) {
    float mm = -INFINITY, ss = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) merge_max_sum(mm, ss, sm_m[w][tid], sm_s[w][tid]);
    sm_max[tid] = mm;
    sm_inv[tid] = ss > 0.0f ? 1.0f / ss : 0.0f;
  }
  __syncthreads();

  const int64_t gbase = int64_t(g) * capacity;
  uint32_t* gkeys = keys + int64_t(g) * key_stride;
  for (int c = begin + tid; c < end; c += kScoreThreads) {
    uint32_t key = 0;
    if (sizes[gbase + c] > 0) {
      const float* l = logits + (gbase + c) * G;
      float score = 0.0f;
#pragma unroll
      for (int r = 0; r < kMaxGroup; ++r)
        if (r < G) score += expf(l[r] - sm_max[r]) * sm_inv[r];
      // A NaN score (non-finite inputs) ranks as the lowest candidate instead of breaking the order.
      key = isnan(score) ? 1u : __float_as_uint(score) + 1u;
    }
    gkeys[c] = key;
  }
}

// ---- Kernel 3: selection ----

// Exclusive prefix sum over the CTA (blockDim.x a multiple of 32, at most 1024); total gets the sum.
// scratch: 33 entries of shared memory. Every thread must call it.
__device__ __forceinline__ unsigned long long block_exclusive_scan(unsigned long long x, unsigned long long* scratch,
                                                                   unsigned long long& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  unsigned long long inc = x;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const unsigned long long y = __shfl_up_sync(kFullMask, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const unsigned long long w = lane < n_warps ? scratch[lane] : 0ull;
    unsigned long long wi = w;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const unsigned long long y = __shfl_up_sync(kFullMask, wi, o);
      if (lane >= o) wi += y;
    }
    scratch[lane] = wi - w;
    if (lane == 31) scratch[32] = wi;
  }
  __syncthreads();
  const unsigned long long result = scratch[warp] + inc - x;
  total = scratch[32];
  __syncthreads();  // scratch may be reused by the next call
  return result;
}

// Adds one to hist[bin] for every lane with take set, one shared atomic per distinct bin of the warp
// (score keys crowd into few bins, so plain atomics would serialise). Every lane must call it.
__device__ __forceinline__ void warp_histogram_add(unsigned* hist, bool take, unsigned bin, int lane) {
  if (__ballot_sync(kFullMask, take) == 0) return;
  const unsigned peers = __match_any_sync(kFullMask, take ? bin : 0xffffffffu);
  if (take && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
}

// One warp: finds the bin of hist (256 bins of the digit at shift) that holds the need-th largest key
// among the keys sharing prefix, then narrows prefix to it; need becomes the rank inside that bin.
// The 32 lanes own 8 bins each, higher lanes the higher bins.
__device__ __forceinline__ void select_bin(const unsigned* hist, int shift, unsigned* prefix, unsigned* need,
                                           int lane) {
  const unsigned rank = *need;
  unsigned h[8];
  unsigned mine = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    h[b] = hist[lane * 8 + b];
    mine += h[b];
  }
  unsigned suffix = mine;  // keys in the bins of this lane and every higher lane
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const unsigned y = __shfl_down_sync(kFullMask, suffix, o);
    if (lane + o < 32) suffix += y;
  }
  unsigned above = suffix - mine;
#pragma unroll
  for (int b = 7; b >= 0; --b) {
    if (above < rank && rank <= above + h[b]) {  // exactly one (lane, bin) holds the rank
      *prefix |= static_cast<unsigned>(lane * 8 + b) << shift;
      *need = rank - above;
    }
    above += h[b];
  }
}

__device__ __forceinline__ void bitonic_sort_descending(unsigned long long* buf, int n) {
  for (int size = 2; size <= n; size *= 2) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const unsigned long long x = buf[i], y = buf[j];
          const bool descending = (i & size) == 0;
          if (descending ? x < y : x > y) {
            buf[i] = y;
            buf[j] = x;
          }
        }
      }
      __syncthreads();
    }
  }
}

struct SelectArgs {
  const int32_t* num_clusters;  // [groups]
  const int32_t* sizes;         // [groups, capacity]
  const long long* tile_counts;  // [groups, logit_tiles, 2]
  const uint32_t* keys;         // [groups, key_stride]
  long long capacity;
  long long key_stride;
  int logit_tiles;
  WaveSelectBudgets budgets;
  int retrieve_capacity;         // plan: the most retrieved ids of a group
  int retrieve_stride;           // WaveSelection::retrieve_capacity
  int32_t* retrieve_ids;         // [groups, retrieve_stride]
  int32_t* retrieve_count;       // [groups]
  int32_t* estimate_ids;         // [groups, capacity]
  int32_t* estimate_count;       // [groups]
  unsigned long long* sort_workspace;  // [groups, sort_capacity], or null: dynamic shared memory
  int sort_capacity;
  long long* stats;              // [groups, kWaveSelectStatCount] or null
};

// One CTA of kWaveSelectThreads per group. Targets: t0 = retrieved count, t1 = k. Thresholds T0 >= T1
// are the t0-th and t1-th largest keys (kNoThreshold when a target is 0); a cluster is chosen for a
// target when its key is above the threshold, or equal to it and among the first need ties by id,
// which reproduces the CPU order (score descending, lower id first) exactly. Retrieved = chosen for
// t0; estimated = chosen for t1 and not for t0.
__global__ void __launch_bounds__(kWaveSelectThreads) select_kernel(const SelectArgs a) {
  extern __shared__ unsigned long long sm_sort[];
  __shared__ unsigned sm_hist[2][256];
  __shared__ unsigned sm_prefix[2], sm_need[2];
  __shared__ unsigned long long sm_scan[33];
  const int g = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int C = group_clusters(a.num_clusters, g, a.capacity);
  const long long want_retrieve = num_retrieve(a.budgets, C);
  const long long want_estimate = num_estimate(a.budgets, C);

  // Non-empty clusters and clustered tokens, summed from the logit tiles.
  const int n_tiles = (C + kWaveLogitTile - 1) / kWaveLogitTile;
  unsigned long long my_nonempty = 0, my_tokens = 0;
  for (int t = tid; t < n_tiles; t += kWaveSelectThreads) {
    my_nonempty += a.tile_counts[(int64_t(g) * a.logit_tiles + t) * 2];
    my_tokens += a.tile_counts[(int64_t(g) * a.logit_tiles + t) * 2 + 1];
  }
  unsigned long long non_empty = 0, tokens = 0;
  block_exclusive_scan(my_nonempty, sm_scan, non_empty);
  block_exclusive_scan(my_tokens, sm_scan, tokens);
  const long long k = min(want_retrieve + want_estimate, static_cast<long long>(non_empty));
  // The plan sized the retrieval list by the same formula at the capacity; the clamp only guards it.
  const long long n_retrieve = min(min(want_retrieve, k), static_cast<long long>(a.retrieve_capacity));
  const unsigned target0 = static_cast<unsigned>(n_retrieve), target1 = static_cast<unsigned>(k);

  if (tid < 2) {
    sm_prefix[tid] = 0;
    sm_need[tid] = tid == 0 ? target0 : target1;
  }
  const uint32_t* keys = a.keys + int64_t(g) * a.key_stride;

  // Radix select, 8 bits a pass from the top, both targets in the same sweeps.
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    const unsigned hi_mask = pass == 0 ? 0u : (0xffffffffu << (shift + 8));
    for (int i = tid; i < 512; i += kWaveSelectThreads) (&sm_hist[0][0])[i] = 0;
    __syncthreads();
    const unsigned p0 = sm_prefix[0], p1 = sm_prefix[1];
    // While both targets share their prefix (always in the first pass) one histogram serves both.
    const bool one_histogram = target0 > 0 && p0 == p1;
    const bool count1 = target1 > 0 && !one_histogram;
    // Warp-uniform trip count: the warp's lanes read 128 consecutive keys an iteration.
    for (int wbase = warp * 128; wbase < C; wbase += kWaveSelectThreads * 4) {
      const int base = wbase + lane * 4;
      const uint4 kv = base < C ? *reinterpret_cast<const uint4*>(keys + base) : make_uint4(0, 0, 0, 0);
      const unsigned kk[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool valid = base + e < C;
        const unsigned key = kk[e];
        const unsigned bin = (key >> shift) & 255u;
        warp_histogram_add(sm_hist[0], valid && target0 > 0 && (key & hi_mask) == p0, bin, lane);
        warp_histogram_add(sm_hist[1], valid && count1 && (key & hi_mask) == p1, bin, lane);
      }
    }
    __syncthreads();
    if (warp < 2 && (warp == 0 ? target0 : target1) > 0)
      select_bin(sm_hist[warp == 1 && !one_histogram ? 1 : 0], shift, &sm_prefix[warp], &sm_need[warp], lane);
    __syncthreads();
  }
  const unsigned T0 = target0 > 0 ? sm_prefix[0] : kNoThreshold, need0 = target0 > 0 ? sm_need[0] : 0u;
  const unsigned T1 = target1 > 0 ? sm_prefix[1] : kNoThreshold, need1 = target1 > 0 ? sm_need[1] : 0u;

  // Listing pass: each thread owns a contiguous run of ids, so prefix sums over threads give the
  // ties' ranks by id and the output positions in id order (deterministic lists).
  const int chunk = ((C + kWaveSelectThreads - 1) / kWaveSelectThreads + 3) & ~3;
  const int lo = min(C, tid * chunk), hi = min(C, lo + chunk);
  unsigned gt0 = 0, eq0 = 0, gt1 = 0, eq1 = 0;
  for (int base = lo; base < hi; base += 4) {
    const uint4 kv = *reinterpret_cast<const uint4*>(keys + base);
    const unsigned kk[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (base + e < hi) {
        const unsigned key = kk[e];
        gt0 += key > T0;
        eq0 += key == T0;
        gt1 += key > T1;
        eq1 += key == T1;
      }
    }
  }
  unsigned long long total = 0;
  const unsigned long long tie_base =
      block_exclusive_scan((static_cast<unsigned long long>(eq0) << 32) | eq1, sm_scan, total);
  const unsigned tie_base0 = static_cast<unsigned>(tie_base >> 32), tie_base1 = static_cast<unsigned>(tie_base);
  const unsigned take0 = gt0 + (need0 > tie_base0 ? min(need0 - tie_base0, eq0) : 0u);
  const unsigned take1 = gt1 + (need1 > tie_base1 ? min(need1 - tie_base1, eq1) : 0u);
  const unsigned long long out_base =
      block_exclusive_scan((static_cast<unsigned long long>(take0) << 32) | (take1 - take0), sm_scan, total);
  const int n_retrieved = static_cast<int>(total >> 32);
  const int n_estimated = static_cast<int>(total & 0xffffffffull);

  unsigned long long* sort_buf =
      a.sort_workspace != nullptr ? a.sort_workspace + int64_t(g) * a.sort_capacity : sm_sort;
  int32_t* est_ids = a.estimate_ids + int64_t(g) * a.capacity;
  const int32_t* gsizes = a.sizes + int64_t(g) * a.capacity;
  unsigned out0 = static_cast<unsigned>(out_base >> 32), out1 = static_cast<unsigned>(out_base);
  unsigned tie0 = tie_base0, tie1 = tie_base1;
  long long tokens_retrieved = 0, tokens_estimated = 0;
  for (int base = lo; base < hi; base += 4) {
    const uint4 kv = *reinterpret_cast<const uint4*>(keys + base);
    const unsigned kk[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int id = base + e;
      if (id < hi) {
        const unsigned key = kk[e];
        bool in0 = key > T0, in1 = key > T1;
        if (key == T0) in0 = tie0++ < need0;
        if (key == T1) in1 = tie1++ < need1;
        if (in0) {
          // Descending order of (key, -id): the better score first, the lower id first among equals.
          sort_buf[out0++] = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - static_cast<unsigned>(id));
          if (a.stats != nullptr) tokens_retrieved += gsizes[id];
        } else if (in1) {
          est_ids[out1++] = id;
          if (a.stats != nullptr) tokens_estimated += gsizes[id];
        }
      }
    }
  }

  // Sort only the retrieved ids. The entries are distinct (the id is in the low half), so up to one
  // per thread each takes its place from the count of larger ones: one pass of broadcast reads where
  // a bitonic sort needs log2(n) (log2(n) + 1) / 2 barrier-separated stages. Longer lists are padded
  // with 0, which sorts after every real key (>= 1), and sorted bitonically.
  int32_t* rids = a.retrieve_ids + int64_t(g) * a.retrieve_stride;
  auto id_of = [](unsigned long long e) {
    return static_cast<int32_t>(0xffffffffu - static_cast<unsigned>(e & 0xffffffffull));
  };
  __syncthreads();
  if (n_retrieved <= kWaveSelectThreads) {
    if (tid < n_retrieved) {
      const unsigned long long mine = sort_buf[tid];
      int rank = 0;
      for (int j = 0; j < n_retrieved; ++j) rank += sort_buf[j] > mine;
      rids[rank] = id_of(mine);
    }
  } else {
    int n_sort = 1;
    while (n_sort < n_retrieved) n_sort *= 2;
    for (int i = n_retrieved + tid; i < n_sort; i += kWaveSelectThreads) sort_buf[i] = 0ull;
    __syncthreads();
    bitonic_sort_descending(sort_buf, n_sort);
    for (int i = tid; i < n_retrieved; i += kWaveSelectThreads) rids[i] = id_of(sort_buf[i]);
  }
  if (tid == 0) {
    a.retrieve_count[g] = n_retrieved;
    a.estimate_count[g] = n_estimated;
  }
  if (a.stats != nullptr) {
    unsigned long long sum_retrieved = 0, sum_estimated = 0;
    block_exclusive_scan(static_cast<unsigned long long>(tokens_retrieved), sm_scan, sum_retrieved);
    block_exclusive_scan(static_cast<unsigned long long>(tokens_estimated), sm_scan, sum_estimated);
    if (tid == 0) {
      long long* st = a.stats + int64_t(g) * kWaveSelectStatCount;
      st[kWaveStatClusters] = C;
      st[kWaveStatNonEmptyClusters] = static_cast<long long>(non_empty);
      st[kWaveStatRetrievedClusters] = n_retrieved;
      st[kWaveStatEstimatedClusters] = n_estimated;
      st[kWaveStatRetrievedTokens] = static_cast<long long>(sum_retrieved);
      st[kWaveStatEstimatedTokens] = static_cast<long long>(sum_estimated);
      st[kWaveStatClusteredTokens] = static_cast<long long>(tokens);
    }
  }
}

// ---- Kernel 4: estimation zone, per slice of the estimated list ----
//
// For the slice's clusters i and row r, with reference m_r = max_i (l_ri + ln s_i) (so no weight
// exceeds 1): w_ri = exp(l_ri - m_r), mass_r = sum_i s_i w_ri, numerator_r = sum_i w_ri VS_i.
// A value-sum row (kHeadDim fp32) is read by kLanes lanes, 16 bytes each.
// partials [groups, estimate_slices, G, kHeadDim + 2] fp32: (m, mass, numerator[kHeadDim]).
template <int kHeadDim>
__global__ void __launch_bounds__(kEstimateThreads)
    estimate_partials_kernel(const float* __restrict__ logits, const float* __restrict__ value_sums,
                             const int32_t* __restrict__ sizes, const int32_t* __restrict__ estimate_ids,
                             const int32_t* __restrict__ estimate_count, int group_size, long long capacity,
                             int estimate_slices, float* __restrict__ partials) {
  constexpr int kLanes = kHeadDim / 4;
  constexpr int kSlots = 32 / kLanes;
  constexpr int kWarps = kEstimateThreads / 32;
  constexpr int kParts = kWarps * kSlots;  // independent accumulators of the CTA
  constexpr int kUnroll = 4;
  const int slice = blockIdx.x, g = blockIdx.y;
  const int n_est = estimate_count[g];
  const int lo = slice * kWaveEstimateTile;
  if (lo >= n_est) return;  // the merge reads only the slices that hold clusters
  const int n = min(n_est - lo, kWaveEstimateTile);
  const int G = group_size;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  __shared__ int sm_id[kWaveEstimateTile];
  __shared__ float sm_size[kWaveEstimateTile];
  __shared__ float sm_w[kWaveEstimateTile][kMaxGroup];  // logits, then weights
  __shared__ float sm_warp[kWarps][kMaxGroup];
  __shared__ float sm_ref[kMaxGroup], sm_mass[kMaxGroup];
  __shared__ __align__(16) float sm_red[kParts][kMaxGroup][kHeadDim];

  const int64_t gbase = int64_t(g) * capacity;
  float mx[kMaxGroup];
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r) mx[r] = -INFINITY;
  for (int j = tid; j < n; j += kEstimateThreads) {
    const int c = estimate_ids[gbase + lo + j];
    const float sz = static_cast<float>(sizes[gbase + c]);
    const float log_size = logf(sz);
    sm_id[j] = c;
    sm_size[j] = sz;
    const float* l = logits + (gbase + c) * G;
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) {
      if (r < G) {
        const float x = l[r];
        sm_w[j][r] = x;
        mx[r] = fmaxf(mx[r], x + log_size);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], o));
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) sm_warp[warp][r] = mx[r];
  }
  __syncthreads();
  if (tid < G) {
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm_warp[w][tid]);
    sm_ref[tid] = m;
  }
  __syncthreads();

  // Weights (each thread rewrites the entries it gathered) and the slice's mass.
  float mass[kMaxGroup];
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r) mass[r] = 0.0f;
  for (int j = tid; j < n; j += kEstimateThreads) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) {
      if (r < G) {
        const float w = expf(sm_w[j][r] - sm_ref[r]);
        sm_w[j][r] = w;
        mass[r] = fmaf(sm_size[j], w, mass[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) mass[r] += __shfl_xor_sync(kFullMask, mass[r], o);
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kMaxGroup; ++r) sm_warp[warp][r] = mass[r];
  }
  __syncthreads();
  if (tid < G) {
    float m = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m += sm_warp[w][tid];
    sm_mass[tid] = m;
  }

  // Numerators: accumulator p = warp * kSlots + slot takes the clusters j = p (mod kParts).
  const int slot = lane / kLanes, part = lane % kLanes;
  const int p = warp * kSlots + slot;
  const float4* vs = reinterpret_cast<const float4*>(value_sums) + gbase * kLanes;  // row c: vs + c * kLanes
  float acc[kMaxGroup][4];
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[r][i] = 0.0f;
  for (int j0 = p; j0 < n; j0 += kParts * kUnroll) {
    float4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kParts;
      v[u] = j < n ? vs[int64_t(sm_id[j]) * kLanes + part] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = j0 + u * kParts;
      if (j < n) {
#pragma unroll
        for (int r = 0; r < kMaxGroup; ++r) {
          if (r < G) {
            const float w = sm_w[j][r];
            acc[r][0] = fmaf(w, v[u].x, acc[r][0]);
            acc[r][1] = fmaf(w, v[u].y, acc[r][1]);
            acc[r][2] = fmaf(w, v[u].z, acc[r][2]);
            acc[r][3] = fmaf(w, v[u].w, acc[r][3]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxGroup; ++r)
    if (r < G)
      *reinterpret_cast<float4*>(&sm_red[p][r][part * 4]) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
  __syncthreads();
  float* out = partials + (int64_t(g) * estimate_slices + slice) * G * (kHeadDim + 2);
  for (int idx = tid; idx < G * kHeadDim; idx += kEstimateThreads) {
    const int r = idx / kHeadDim, e = idx % kHeadDim;
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < kParts; ++q) sum += sm_red[q][r][e];
    float* rec = out + r * (kHeadDim + 2);
    rec[2 + e] = sum;
    if (e == 0) {
      rec[0] = sm_ref[r];
      rec[1] = sm_mass[r];
    }
  }
}

// ---- Kernel 5: merge of the slices ----
// One CTA per group, G * kHeadDim threads: thread (r, e) merges element e of row r over the slices.
// estimate_o [groups, G, kHeadDim] fp32; estimate_lse [groups, G] fp32 natural log.
template <int kHeadDim>
__global__ void estimate_merge_kernel(const float* __restrict__ partials, const int32_t* __restrict__ estimate_count,
                                      int group_size, int estimate_slices, float* __restrict__ estimate_o,
                                      float* __restrict__ estimate_lse) {
  const int g = blockIdx.x;
  const int r = threadIdx.x / kHeadDim, e = threadIdx.x % kHeadDim;
  float o, lse;
  const WaveEstimatePartials slices{partials, estimate_count, estimate_slices};
  kernels::merge_estimate_slices<kHeadDim>(slices, group_size, g, r, e, o, lse);
  estimate_o[(int64_t(g) * group_size + r) * kHeadDim + e] = o;
  if (e == 0) estimate_lse[int64_t(g) * group_size + r] = lse;
}

}  // namespace retro::attention::cuda::wave_select_kernels
