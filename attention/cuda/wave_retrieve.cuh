#pragma once
// Kernels of retrieval-zone attention and the zone merge (wave_retrieve.h). Framework-free: raw
// pointers and the plain structs of wave_layout.h, wave_cache.h and wave_retrieve.h.
//
// Parts: the retrieved clusters of a group, in selection order, are cut into parts of slot_tokens
// rows; part j of the group is part (j - first[i]) of retrieved cluster i, where first[i] is the
// prefix sum of the clusters' part counts (built by the lookup kernel).
//
// Attention: part j of group g is walked by warp (j mod (splits x warps)) of the group's CTAs,
// after the CTA has copied its admitted misses into their slots (retrieve_attention_kernel). A row
// of head_dim elements is read by kLanesPerRow lanes, 8 elements (16 bytes of bf16, 8 of fp8) each,
// so a warp covers kRowsPerStep rows per step with coalesced loads and issues the loads of kUnroll
// steps before their first use. Each lane keeps the query slice of all G heads and an online-softmax
// state (max, sum, 8 accumulators per head) for the rows its lane group saw; states merge by
// log-sum-exp across lane groups, warps, then CTAs (in the merge kernel). Scores use base-2
// exponentials.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "attention/cuda/decode_attention.cuh"  // Bf16x8, bf16x8_to_float, merge_online
#include "attention/cuda/wave_cache.cuh"
#include "attention/cuda/wave_estimate.cuh"
#include "attention/cuda/wave_retrieve.h"

namespace retro::attention::cuda::kernels {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

__device__ __forceinline__ int clamped_retrieve_count(const WaveSelection& sel, int g) {
  const int n = sel.retrieve_count[g];
  return n < 0 ? 0 : (n > sel.retrieve_capacity ? sel.retrieve_capacity : n);
}

// Exclusive prefix sum of v over the CTA; total receives the sum. Every thread must call it.
template <int kThreads>
__device__ __forceinline__ int block_exclusive_scan(int v, int* s_warp, int& total) {
  constexpr int kWarpsInCta = kThreads / 32;
  static_assert(kThreads % 32 == 0 && kWarpsInCta <= 32, "one warp scans the warp totals");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int x = v;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kWarpsInCta ? s_warp[lane] : 0;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    if (lane < kWarpsInCta) s_warp[lane] = w;  // inclusive totals
  }
  __syncthreads();
  total = s_warp[kWarpsInCta - 1];
  const int exclusive = (warp > 0 ? s_warp[warp - 1] : 0) + x - v;
  __syncthreads();  // the next call overwrites s_warp
  return exclusive;
}

// Lookup phase 1, one CTA per group: records each retrieved cluster's list position and first part,
// and looks every part among the first part_capacity up in the cache, stamping a hit with the
// current step so that phase 2 cannot evict it. part_slots[j] = slot << 1 on a hit, else -1.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    retrieve_lookup_kernel(const WaveRetrieveParams p, const RetrieveWorkspace ws, int part_capacity,
                           int slot_tokens) {
  __shared__ int s_scan[kThreads / 32];
  const int g = blockIdx.x;
  const int cap = p.selection.retrieve_capacity;
  const int count = clamped_retrieve_count(p.selection, g);
  const bool cached = p.cache.num_sets > 0;
  const int64_t uid = cached ? p.group_uids[g] : -1;
  // This lookup's step: the counter + 1 (merge_zones_kernel, the lookup's last kernel, advances it).
  const unsigned long long step = cached ? *p.cache.step + 1 : 0;
  const int32_t* ids = p.selection.retrieve_ids + int64_t(g) * cap;
  const int64_t entry0 = int64_t(g) * p.index.cluster_capacity;
  int32_t* first_part = ws.part_offsets + int64_t(g) * (cap + 1);
  RetrieveCluster* clusters = ws.clusters + int64_t(g) * cap;
  int32_t* slots = ws.part_slots + int64_t(g) * part_capacity;
  int carry = 0;  // parts of the clusters before this round
  for (int base = 0; base < count; base += kThreads) {
    const int i = base + threadIdx.x;
    RetrieveCluster c{0, 0, -1};
    int parts = 0;
    if (i < count) {
      const int32_t id = ids[i];
      // An id outside the index would read outside the meta arrays: it counts as an empty cluster.
      if (id >= 0 && id < p.index.cluster_capacity) {
        c.id = id;
        const int32_t size = p.index.sizes[entry0 + id];
        if (size > 0) {
          c.begin = p.index.cluster_begin[entry0 + id];
          c.size = size;
          parts = (size + slot_tokens - 1) / slot_tokens;
        }
      }
    }
    int round_parts = 0;
    const int first = carry + block_exclusive_scan<kThreads>(parts, s_scan, round_parts);
    if (i < count) {
      clusters[i] = c;
      first_part[i] = first;
      for (int part = 0; part < parts && first + part < part_capacity; ++part) {
        int32_t state = -1;
        if (cached) {
          const uint64_t tag = wave_cache_tag(uid, c.id, part);
          if (tag != kWaveTagEmpty) {
            const int64_t slot = cache_find(p.cache, tag);
            if (slot >= 0) {
              p.cache.stamps[slot] = step;
              state = int32_t(slot << 1);
            }
          }
        }
        slots[first + part] = state;
      }
    }
    carry += round_parts;
  }
  if (threadIdx.x == 0) first_part[count] = carry;
}

// Lookup phase 2, one CTA per group (launched only with a cache): every miss among the first
// part_capacity parts claims a way older than this step and becomes an admission (slot << 1 | 1);
// then the CTA adds the group's hits, misses, admissions and host rows of this step to the counters.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    retrieve_admit_kernel(const WaveRetrieveParams p, const RetrieveWorkspace ws, int part_capacity,
                          int slot_tokens) {
  __shared__ unsigned long long s_count[4];  // hits, misses, admitted, host rows
  if (threadIdx.x < 4) s_count[threadIdx.x] = 0;
  __syncthreads();
  const int g = blockIdx.x;
  const int cap = p.selection.retrieve_capacity;
  const int count = clamped_retrieve_count(p.selection, g);
  const int64_t uid = p.group_uids[g];
  const unsigned long long step = *p.cache.step + 1;  // as in retrieve_lookup_kernel
  const int32_t* first_part = ws.part_offsets + int64_t(g) * (cap + 1);
  const RetrieveCluster* clusters = ws.clusters + int64_t(g) * cap;
  int32_t* slots = ws.part_slots + int64_t(g) * part_capacity;
  unsigned long long hits = 0, misses = 0, admitted = 0, host_rows = 0;
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const RetrieveCluster c = clusters[i];
    const int first = first_part[i];
    const int parts = first_part[i + 1] - first;
    for (int part = 0; part < parts; ++part) {
      const int j = first + part;
      if (j < part_capacity && slots[j] >= 0) {
        ++hits;
        continue;
      }
      ++misses;
      host_rows += min(slot_tokens, c.size - part * slot_tokens);
      if (j >= part_capacity) continue;
      const uint64_t tag = wave_cache_tag(uid, c.id, part);
      if (tag == kWaveTagEmpty) continue;
      const int64_t slot = cache_claim(p.cache, tag, step);
      if (slot >= 0) {
        slots[j] = int32_t((slot << 1) | 1);
        ++admitted;
      }
    }
  }
  if (hits) atomicAdd(&s_count[0], hits);
  if (misses) atomicAdd(&s_count[1], misses);
  if (admitted) atomicAdd(&s_count[2], admitted);
  if (host_rows) atomicAdd(&s_count[3], host_rows);
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long* ctr = p.cache.counters;
    if (s_count[0]) atomicAdd(ctr + kWaveCacheHitParts, s_count[0]);
    if (s_count[1]) atomicAdd(ctr + kWaveCacheMissParts, s_count[1]);
    if (s_count[2]) atomicAdd(ctr + kWaveCacheAdmittedParts, s_count[2]);
    if (s_count[3]) {
      atomicAdd(ctr + kWaveCacheHostRows, s_count[3]);
      // K and V rows of head_dim bf16 (or fp8 with scales).
      const unsigned long long row_bytes = (unsigned long long)p.index.head_dim * (p.index.k_scales ? 1ull : 2ull);
      atomicAdd(ctr + kWaveCacheHostBytes, s_count[3] * 2ull * row_bytes);
    }
  }
}

// Rows of one part as the attention loop reads them: from its cache slot (a hit, or a miss that the
// copy phase has just admitted) or from the host store.
struct RetrievePartRows {
  const char* k = nullptr;  // row 0 of the part; null: host rows straddling a page (looked up per row)
  const char* v = nullptr;
  int64_t row0 = 0;         // first host row of the part
  int rows = 0;
  float k_scale = 1.0f;     // fp8: the cluster's scales
  float v_scale = 1.0f;
};

// An admitted miss of the copy phase: rows [0, rows) go from the host store into `slot`.
struct RetrieveCopyPart {
  const char* k;  // row 0 of the part in the host store; null: it straddles a page (looked up per row)
  const char* v;
  int64_t row0;   // first host row of the part
  int32_t slot;
  int32_t rows;
};

// The last i in [0, n) with first[i] <= x, given first[0] <= x < first[n] and first non-decreasing.
__device__ __forceinline__ int last_at_most(const int32_t* first, int n, int x) {
  int lo = 0, hi = n;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (first[mid] <= x)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// 8 consecutive elements of a row as one lane loads them: 16 bytes of bf16 or 8 bytes of fp8-e4m3.
// K and V addresses of row t of a retrieved part: contiguous rows at k, v (a cache slot, or host rows
// within one page), or, when k is null, row row0 + t of the host store, its page looked up per row
// (a part that straddles pages).
__device__ __forceinline__ void part_row(const char* k, const char* v, int64_t row0, int t, int64_t page_rows,
                                         const char* const* k_pages, const char* const* v_pages, int row_bytes,
                                         const char*& ks, const char*& vs) {
  if (k != nullptr) {
    ks = k + int64_t(t) * row_bytes;
    vs = v + int64_t(t) * row_bytes;
    return;
  }
  const int64_t row = row0 + t;
  const int64_t page = row / page_rows;
  const int64_t at = (row - page * page_rows) * row_bytes;
  ks = k_pages[page] + at;
  vs = v_pages[page] + at;
}

template <bool kFp8>
struct RowSlice {
  using Raw = Bf16x8;
};
template <>
struct RowSlice<true> {
  using Raw = uint2;
};

__device__ __forceinline__ void slice_to_float(const Bf16x8& v, float* f) { bf16x8_to_float(v, f); }

// e4m3 -> fp16 -> fp32 is exact; byte i of the slice is element i.
__device__ __forceinline__ void slice_to_float(const uint2& v, float* f) {
  const unsigned w[2] = {v.x, v.y};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __half2_raw r =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>((w[i] >> (16 * h)) & 0xFFFFu), __NV_E4M3);
      const float2 x = __half22float2(__half2(r));
      f[4 * i + 2 * h] = x.x;
      f[4 * i + 2 * h + 1] = x.y;
    }
  }
}

// Attention of the group's G heads over the parts its warps walk; writes the CTA's partial state:
// o_part [groups, splits, G, head_dim] (normalised), lse_part [groups, splits, G] (base 2, -inf
// when the CTA saw no row). Dynamic shared memory: (retrieve_capacity + 1) int32.
//
// Two phases. Copy: with a cache, every admitted miss among the CTA's parts is copied from the host
// store into its slot first, by all warps of the CTA in batches of kCopyRows rows (16-byte loads,
// kCopySteps of them in flight per lane before the first store): the misses are the long pole, so
// every CTA starts its PCIe reads at once and spreads them evenly over its warps, and a CTA that is
// done goes on with attention while others still copy. Attention: each warp walks its parts in a
// fixed order (part j by warp j mod (splits x warps)) reading hits and admitted misses from their
// slots and only parts without a slot from the host; the order does not depend on which parts hit,
// so a step repeated from the cache gives a bit-identical result. The next part's rows and page are
// looked up while the current part's first loads are in flight, and a part inside one host page
// costs one page lookup.
//
// kFp8: rows are fp8-e4m3 with one scale per cluster for K and one for V (index.k_scales /
// v_scales); the K scale multiplies the row's dot product and the V scale its probability weight,
// which equals dequantising every element (x * scale) before use, up to fp32 rounding.
//
// Small groups are held to 3 resident CTAs per SM (at most 168 registers at 128 threads): more warps
// keep more host reads in flight; larger groups need their registers for the per-head state.
template <int kHeadDim, int kGroup, bool kFp8>
__global__ void __launch_bounds__(kRetrieveWarps * 32, kGroup <= 4 ? 3 : 1)
    retrieve_attention_kernel(const WaveRetrieveParams p, const RetrieveWorkspace ws, int part_capacity,
                              int slot_tokens, float scale_log2) {
  using Raw = typename RowSlice<kFp8>::Raw;
  constexpr int kRowBytes = kHeadDim * (kFp8 ? 1 : 2);
  constexpr int kLanesPerRow = kHeadDim / 8;
  constexpr int kRowsPerStep = 32 / kLanesPerRow;
  // Loads of kUnroll steps in flight; large groups keep fewer to stay clear of spills.
  constexpr int kUnroll = kGroup <= 4 ? 4 : 2;
  constexpr int kRowsPerBatch = kRowsPerStep * kUnroll;
  // Copy phase: 16 bytes a lane, kCopySteps loads of K and of V in flight per lane.
  constexpr int kCopyLanes = kRowBytes / 16;
  constexpr int kCopyRowsPerStep = 32 / kCopyLanes;
  constexpr int kCopySteps = 8;
  constexpr int kCopyRows = kCopyRowsPerStep * kCopySteps;
  constexpr int kWarps = kRetrieveWarps;
  constexpr int kThreads = kWarps * 32;
  static_assert(kRowBytes % 16 == 0 && 32 % kCopyLanes == 0, "a row is whole 16-byte lanes of one warp");
  extern __shared__ int32_t s_first[];  // [count + 1] first part of each retrieved cluster
  __shared__ int s_scan[kWarps];
  // The copy lists and the final merge never overlap in time.
  __shared__ union {
    struct {
      RetrieveCopyPart parts[kThreads];
      int32_t first_batch[kThreads + 1];  // copy batches of the listed parts, exclusive prefix sum
    } copy;
    struct {
      float m[kWarps][kGroup], l[kWarps][kGroup];
      float acc[kWarps][kGroup][kHeadDim];
    } merge;
  } s;

  const int split = blockIdx.x, g = blockIdx.y, num_splits = gridDim.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int cap = p.selection.retrieve_capacity;
  const int count = clamped_retrieve_count(p.selection, g);
  const int32_t* first_part = ws.part_offsets + int64_t(g) * (cap + 1);
  for (int i = threadIdx.x; i <= count; i += kThreads) s_first[i] = first_part[i];
  __syncthreads();
  const int total = s_first[count];
  const int stride = num_splits * kWarps;  // parts between two parts of one warp

  const RetrieveCluster* clusters = ws.clusters + int64_t(g) * cap;
  const int32_t* slots = ws.part_slots + int64_t(g) * part_capacity;
  const char* const* k_pages = reinterpret_cast<const char* const*>(p.store.k_pages) + int64_t(g) * p.store.max_pages;
  const char* const* v_pages = reinterpret_cast<const char* const*>(p.store.v_pages) + int64_t(g) * p.store.max_pages;
  const int64_t page_rows = p.store.page_rows;
  char* k_slots = static_cast<char*>(p.cache.k_slots);
  char* v_slots = static_cast<char*>(p.cache.v_slots);
  const int64_t slot_bytes = int64_t(slot_tokens) * kRowBytes;

  // ---- Copy phase: the CTA's admitted misses, host store -> slots ----
  if (p.cache.num_sets > 0) {
    const int limit = min(total, part_capacity);  // only these parts have slots
    // The CTA's parts in walking order: candidate t is part split * kWarps + t % kWarps + (t / kWarps) * stride,
    // increasing with t; a round lists kThreads candidates. Loop bounds are uniform over the CTA.
    auto cta_part = [&](int t) { return split * kWarps + t % kWarps + (t / kWarps) * stride; };
    const int copy_row = lane / kCopyLanes, copy_col = (lane % kCopyLanes) * 16;
#pragma unroll 1
    for (int base = 0; cta_part(base) < limit; base += kThreads) {
      const int j = cta_part(base + threadIdx.x);
      int batches = 0;
      if (j < limit) {
        const int32_t state = slots[j];
        if (state >= 0 && (state & 1) != 0) {
          const int i = last_at_most(s_first, count, j);
          const RetrieveCluster c = clusters[i];
          const int part = j - s_first[i];
          RetrieveCopyPart cp;
          cp.row0 = c.begin + int64_t(part) * slot_tokens;
          cp.rows = min(slot_tokens, c.size - part * slot_tokens);
          cp.slot = state >> 1;
          const int64_t page = cp.row0 / page_rows;
          const bool one_page = (cp.row0 + cp.rows - 1) / page_rows == page;
          const int64_t at = (cp.row0 - page * page_rows) * kRowBytes;
          cp.k = one_page ? k_pages[page] + at : nullptr;
          cp.v = one_page ? v_pages[page] + at : nullptr;
          s.copy.parts[threadIdx.x] = cp;
          batches = (cp.rows + kCopyRows - 1) / kCopyRows;
        }
      }
      int total_batches = 0;
      s.copy.first_batch[threadIdx.x] = block_exclusive_scan<kThreads>(batches, s_scan, total_batches);
      if (threadIdx.x == 0) s.copy.first_batch[kThreads] = total_batches;
      __syncthreads();
      // Batch b of the round goes to warp b mod kWarps.
#pragma unroll 1
      for (int b = warp; b < total_batches; b += kWarps) {
        const int i = last_at_most(s.copy.first_batch, kThreads, b);
        const RetrieveCopyPart cp = s.copy.parts[i];
        const int r0 = (b - s.copy.first_batch[i]) * kCopyRows;
        const int r1 = min(cp.rows, r0 + kCopyRows);
        uint4 kr[kCopySteps], vr[kCopySteps];
#pragma unroll
        for (int u = 0; u < kCopySteps; ++u) {
          const int t = r0 + u * kCopyRowsPerStep + copy_row;
          if (t < r1) {
            const char *ks, *vs;
            part_row(cp.k, cp.v, cp.row0, t, page_rows, k_pages, v_pages, kRowBytes, ks, vs);
            kr[u] = *reinterpret_cast<const uint4*>(ks + copy_col);
            vr[u] = *reinterpret_cast<const uint4*>(vs + copy_col);
          }
        }
        char* kd = k_slots + int64_t(cp.slot) * slot_bytes + copy_col;
        char* vd = v_slots + int64_t(cp.slot) * slot_bytes + copy_col;
#pragma unroll
        for (int u = 0; u < kCopySteps; ++u) {
          const int t = r0 + u * kCopyRowsPerStep + copy_row;
          if (t < r1) {
            *reinterpret_cast<uint4*>(kd + int64_t(t) * kRowBytes) = kr[u];
            *reinterpret_cast<uint4*>(vd + int64_t(t) * kRowBytes) = vr[u];
          }
        }
      }
      // The slots written above are read by other warps of the CTA below, and the lists are
      // rewritten by the next round.
      __syncthreads();
    }
  }

  // ---- Attention phase ----
  const int row_lane = lane / kLanesPerRow;  // which row of a step this lane group reads
  const int col = lane % kLanesPerRow;       // which 8 elements of the row this lane reads
  constexpr int kSliceBytes = 8 * (kFp8 ? 1 : 2);
  // Query slice of every head of the group, pre-scaled.
  const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(p.q) + int64_t(g) * kGroup * kHeadDim + col * 8;
  float qf[kGroup][8];
#pragma unroll
  for (int r = 0; r < kGroup; ++r) {
    const Bf16x8 raw = *reinterpret_cast<const Bf16x8*>(q + r * kHeadDim);
    bf16x8_to_float(raw, qf[r]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[r][i] *= scale_log2;
  }
  float m[kGroup], l[kGroup], acc[kGroup][8];
#pragma unroll
  for (int r = 0; r < kGroup; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[r][i] = 0.0f;
  }

  // Where the rows of part j are.
  auto locate = [&](int j) {
    // The retrieved cluster holding part j: the last i with s_first[i] <= j (clusters without parts
    // share their first with the next one and are skipped by "last").
    const int i = last_at_most(s_first, count, j);
    const RetrieveCluster c = clusters[i];
    const int part = j - s_first[i];
    RetrievePartRows pr;
    pr.row0 = c.begin + int64_t(part) * slot_tokens;
    pr.rows = min(slot_tokens, c.size - part * slot_tokens);
    const int32_t state = j < part_capacity ? slots[j] : -1;
    if (state >= 0) {
      pr.k = k_slots + int64_t(state >> 1) * slot_bytes;
      pr.v = v_slots + int64_t(state >> 1) * slot_bytes;
    } else {
      const int64_t page = pr.row0 / page_rows;
      if ((pr.row0 + pr.rows - 1) / page_rows == page) {
        const int64_t at = (pr.row0 - page * page_rows) * kRowBytes;
        pr.k = k_pages[page] + at;
        pr.v = v_pages[page] + at;
      }
    }
    if constexpr (kFp8) {
      const int64_t entry = int64_t(g) * p.index.cluster_capacity + c.id;
      pr.k_scale = p.index.k_scales[entry];
      pr.v_scale = p.index.v_scales[entry];
    }
    return pr;
  };

  // Every loop bound below is uniform over the warp: the shuffles see all 32 lanes.
  int j = split * kWarps + warp;
  RetrievePartRows cur;
  if (j < total) cur = locate(j);
#pragma unroll 1
  for (; j < total; j += stride) {
    RetrievePartRows next;
    const bool has_next = j + stride < total;
    if (cur.rows <= 0 && has_next) next = locate(j + stride);
#pragma unroll 1
    for (int b0 = 0; b0 < cur.rows; b0 += kRowsPerBatch) {
      Raw kr[kUnroll], vr[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = b0 + u * kRowsPerStep + row_lane;
        if (t < cur.rows) {
          const char *ks, *vs;
          part_row(cur.k, cur.v, cur.row0, t, page_rows, k_pages, v_pages, kRowBytes, ks, vs);
          kr[u] = *reinterpret_cast<const Raw*>(ks + col * kSliceBytes);
          vr[u] = *reinterpret_cast<const Raw*>(vs + col * kSliceBytes);
        } else {
          kr[u] = Raw{};
          vr[u] = Raw{};
        }
      }
      // The next part's lookups (cluster, slot, page table, scales) wait on memory while the loads
      // above are in flight.
      if (b0 == 0 && has_next) next = locate(j + stride);
#pragma unroll
      for (int r = 0; r < kGroup; ++r) {
        float s[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          float kf[8];
          slice_to_float(kr[u], kf);
          s[u] = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) s[u] = fmaf(qf[r][i], kf[i], s[u]);
        }
        // Sum the row's partial dot products over its lane group.
#pragma unroll
        for (int off = kLanesPerRow / 2; off > 0; off /= 2) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
        }
        float blk = -INFINITY;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if constexpr (kFp8) s[u] *= cur.k_scale;
          if (b0 + u * kRowsPerStep + row_lane >= cur.rows) s[u] = -INFINITY;
          blk = fmaxf(blk, s[u]);
        }
        // One rescale for the batch; a finite reference keeps corr and p at 0 (not NaN) while the
        // lane group has seen no row.
        const float m_new = fmaxf(m[r], blk);
        const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
        const float corr = exp2f(m[r] - m_ref);
        l[r] *= corr;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] *= corr;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const float pr = exp2f(s[u] - m_ref);
          const float pv = kFp8 ? pr * cur.v_scale : pr;
          float vf[8];
          slice_to_float(vr[u], vf);
          l[r] += pr;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(pv, vf[i], acc[r][i]);
        }
        m[r] = m_new;
      }
    }
    cur = next;
  }

  // Merge the lane groups of the warp (lanes with the same col).
#pragma unroll
  for (int off = kLanesPerRow; off < 32; off *= 2) {
#pragma unroll
    for (int r = 0; r < kGroup; ++r) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[r], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[r], off);
      float a2[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) a2[i] = __shfl_xor_sync(0xffffffffu, acc[r][i], off);
      merge_online<8>(m[r], l[r], acc[r], m2, l2, a2);
    }
  }

  // Merge the warps through shared memory: the lanes of row 0 hold each warp's state. (The copy
  // lists sharing this memory were last read before the copy phase's final barrier.)
  if (row_lane == 0) {
#pragma unroll
    for (int r = 0; r < kGroup; ++r) {
      if (col == 0) {
        s.merge.m[warp][r] = m[r];
        s.merge.l[warp][r] = l[r];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) s.merge.acc[warp][r][col * 8 + i] = acc[r][i];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kGroup * kHeadDim; idx += kThreads) {
    const int r = idx / kHeadDim, d = idx % kHeadDim;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, s.merge.m[w][r]);
    float ll = 0.0f, a = 0.0f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float cw = exp2f(s.merge.m[w][r] - mm);
        ll += s.merge.l[w][r] * cw;
        a += s.merge.acc[w][r][d] * cw;
      }
    }
    const int64_t state_row = (int64_t(g) * num_splits + split) * kGroup + r;
    ws.o_part[state_row * kHeadDim + d] = ll > 0.0f ? a / ll : 0.0f;
    if (d == 0) ws.lse_part[state_row] = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
  }
}

// Merge of the zones, one CTA of head_dim threads per (group, query head) row = b * num_q_heads + head:
// the retrieval partials of the group's CTAs, the estimation zone (one state or its slices' partial
// states) and the steady zone (one state or its decode attention's split states). A state with
// lse -inf adds nothing: its o is read but never enters the sum (it may hold anything).
template <int kHeadDim>
__global__ void __launch_bounds__(kHeadDim)
    merge_zones_kernel(const WaveRetrieveParams p, const RetrieveWorkspace ws, int num_splits) {
  const int64_t row = blockIdx.x;
  const int group_size = p.index.group_size;
  const int64_t g = row / group_size;
  const int r = static_cast<int>(row % group_size);
  const int d = threadIdx.x;
  const float* lse_part = ws.lse_part + g * num_splits * group_size + r;  // split s at s * group_size
  const float* o_part = ws.o_part + (g * num_splits * group_size + r) * kHeadDim + d;
  // The estimation zone: merged by wave select, or its slices merged here.
  float est_o, est_lse;
  if (p.selection.estimate_partials.partials != nullptr) {
    merge_estimate_slices<kHeadDim>(p.selection.estimate_partials, group_size, g, r, d, est_o, est_lse);
  } else {
    est_o = p.selection.estimate_o[row * kHeadDim + d];
    est_lse = p.selection.estimate_lse[row];
  }
  // Every state in turn, as its base-2 LSE and a reader of its element d: the retrieval splits, the
  // estimation zone, and the steady zone as one state or as the split states of its decode attention
  // (base-2 LSEs). The retrieval splits are unrolled and the second pass reads every o whatever its
  // LSE (selected away, never multiplied, when the LSE is -inf): the loads of several states are in
  // flight at once instead of one global-memory latency per state.
  const int steady_splits = p.steady_splits;
  auto each_state = [&](auto&& take) {
#pragma unroll 8
    for (int s = 0; s < num_splits; ++s)
      take(lse_part[int64_t(s) * group_size], [&] { return o_part[int64_t(s) * group_size * kHeadDim]; });
    take(est_lse * kLog2e, [&] { return est_o; });
    if (steady_splits > 1) {
      for (int s = 0; s < steady_splits; ++s)
        take(p.steady_lse_part[row * steady_splits + s],
             [&] { return p.steady_o_part[(row * steady_splits + s) * kHeadDim + d]; });
    } else {
      take(p.steady_lse[row] * kLog2e,
           [&] { return __bfloat162float(static_cast<const __nv_bfloat16*>(p.steady_o)[row * kHeadDim + d]); });
    }
  };
  float mm = -INFINITY;
  each_state([&](float x, auto) { mm = fmaxf(mm, x); });
  float sum = 0.0f, a = 0.0f;
  if (mm != -INFINITY) {
    each_state([&](float x, auto o) {
      const float v = o();
      const bool live = x != -INFINITY;
      const float w = live ? exp2f(x - mm) : 0.0f;
      sum += w;
      a += live ? w * v : 0.0f;
    });
  }
  static_cast<__nv_bfloat16*>(p.out)[row * kHeadDim + d] = __float2bfloat16(sum > 0.0f ? a / sum : 0.0f);
  if (p.lse != nullptr && d == 0) p.lse[row] = sum > 0.0f ? (mm + log2f(sum)) * kLn2 : -INFINITY;
  // The lookup is done (the kernels before this one read the step counter + 1): the counter
  // advances for the next one. No block of this kernel reads it.
  if (p.cache.num_sets > 0 && row == 0 && d == 0) *p.cache.step += 1;
}

}  // namespace retro::attention::cuda::kernels
