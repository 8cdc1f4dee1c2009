#pragma once
// Kernels of retrieval-zone attention and the zone merge (wave_retrieve.h). Framework-free: raw
// pointers and the plain structs of wave_layout.h, wave_cache.h and wave_retrieve.h.
//
// Parts: the retrieved clusters of a group, in selection order, are cut into parts of slot_tokens
// rows; part j of the group is part (j - first[i]) of retrieved cluster i, where first[i] is the
// prefix sum of the clusters' part counts (built by the lookup kernel).
//
// Attention: part j of group g is walked by warp (j mod (splits x warps)) of the group's CTAs. A row
// of head_dim bf16 is read by kLanesPerRow lanes, 8 elements (16 bytes) each, so a warp covers
// kRowsPerStep rows per step with coalesced 16-byte loads and issues the loads of kUnroll steps
// before their first use. Each lane keeps the query slice of all G heads and an online-softmax state
// (max, sum, 8 accumulators per head) for the rows its lane group saw; states merge by log-sum-exp
// across lane groups, warps, then CTAs (in the merge kernel). Scores use base-2 exponentials.

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/decode_attention.cuh"  // Bf16x8, bf16x8_to_float, merge_online
#include "attention/cuda/wave_cache.cuh"
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
  const unsigned long long step = cached ? *p.cache.step : 0;
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
  const unsigned long long step = *p.cache.step;
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
      // K and V rows of head_dim bf16.
      atomicAdd(ctr + kWaveCacheHostBytes, s_count[3] * 4ull * (unsigned long long)p.index.head_dim);
    }
  }
}

// Attention of the group's G heads over the parts its warps walk; writes the CTA's partial state:
// o_part [groups, splits, G, head_dim] (normalised), lse_part [groups, splits, G] (base 2, -inf
// when the CTA saw no row). Dynamic shared memory: (retrieve_capacity + 1) int32.
template <int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kRetrieveWarps * 32)
    retrieve_attention_kernel(const WaveRetrieveParams p, const RetrieveWorkspace ws, int part_capacity,
                              int slot_tokens, float scale_log2) {
  constexpr int kLanesPerRow = kHeadDim / 8;
  constexpr int kRowsPerStep = 32 / kLanesPerRow;
  // Loads of kUnroll steps in flight; large groups keep fewer to stay clear of spills.
  constexpr int kUnroll = kGroup <= 4 ? 4 : 2;
  constexpr int kRowsPerBatch = kRowsPerStep * kUnroll;
  constexpr int kThreads = kRetrieveWarps * 32;
  extern __shared__ int32_t s_first[];  // [count + 1] first part of each retrieved cluster
  __shared__ float sm_m[kRetrieveWarps][kGroup], sm_l[kRetrieveWarps][kGroup];
  __shared__ float sm_acc[kRetrieveWarps][kGroup][kHeadDim];

  const int split = blockIdx.x, g = blockIdx.y, num_splits = gridDim.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_lane = lane / kLanesPerRow;  // which row of a step this lane group reads
  const int col = lane % kLanesPerRow;       // which 8 elements of the row this lane reads
  const int cap = p.selection.retrieve_capacity;
  const int count = clamped_retrieve_count(p.selection, g);
  const int32_t* first_part = ws.part_offsets + int64_t(g) * (cap + 1);
  for (int i = threadIdx.x; i <= count; i += kThreads) s_first[i] = first_part[i];
  __syncthreads();
  const int total = s_first[count];

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

  const RetrieveCluster* clusters = ws.clusters + int64_t(g) * cap;
  const int32_t* slots = ws.part_slots + int64_t(g) * part_capacity;
  const void* const* k_pages = p.store.k_pages + int64_t(g) * p.store.max_pages;
  const void* const* v_pages = p.store.v_pages + int64_t(g) * p.store.max_pages;
  const int64_t page_rows = p.store.page_rows;
  __nv_bfloat16* k_slots = static_cast<__nv_bfloat16*>(p.cache.k_slots);
  __nv_bfloat16* v_slots = static_cast<__nv_bfloat16*>(p.cache.v_slots);
  const int64_t slot_elems = int64_t(slot_tokens) * kHeadDim;

  // Every loop bound below is uniform over the warp: the shuffles see all 32 lanes.
#pragma unroll 1
  for (int j = split * kRetrieveWarps + warp; j < total; j += num_splits * kRetrieveWarps) {
    // The retrieved cluster holding part j: the last i with s_first[i] <= j (clusters without parts
    // share their first with the next one and are skipped by "last").
    int lo = 0, hi = count;  // s_first[lo] <= j < s_first[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (s_first[mid] <= j)
        lo = mid;
      else
        hi = mid;
    }
    const RetrieveCluster c = clusters[lo];
    const int part = j - s_first[lo];
    const int row0 = part * slot_tokens;
    const int rows = min(slot_tokens, c.size - row0);
    const int32_t state = j < part_capacity ? slots[j] : -1;
    const bool hit = state >= 0 && (state & 1) == 0;
    const bool admit = state >= 0 && (state & 1) != 0;
    const int64_t slot_base = state >= 0 ? int64_t(state >> 1) * slot_elems + col * 8 : 0;
#pragma unroll 1
    for (int b0 = 0; b0 < rows; b0 += kRowsPerBatch) {
      Bf16x8 kr[kUnroll], vr[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = b0 + u * kRowsPerStep + row_lane;
        if (t < rows) {
          const __nv_bfloat16 *ks, *vs;
          if (hit) {
            ks = k_slots + slot_base + int64_t(t) * kHeadDim;
            vs = v_slots + slot_base + int64_t(t) * kHeadDim;
          } else {
            // Rows of one part may straddle host pages: the page is looked up per row.
            const int64_t row = c.begin + row0 + t;
            const int64_t page = row / page_rows;
            const int64_t at = (row - page * page_rows) * kHeadDim + col * 8;
            ks = static_cast<const __nv_bfloat16*>(k_pages[page]) + at;
            vs = static_cast<const __nv_bfloat16*>(v_pages[page]) + at;
          }
          kr[u] = *reinterpret_cast<const Bf16x8*>(ks);
          vr[u] = *reinterpret_cast<const Bf16x8*>(vs);
        } else {
          kr[u] = Bf16x8{};
          vr[u] = Bf16x8{};
        }
      }
      if (admit) {
        // The rows just read from the host go into the part's slot: they cross PCIe once.
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int t = b0 + u * kRowsPerStep + row_lane;
          if (t < rows) {
            *reinterpret_cast<Bf16x8*>(k_slots + slot_base + int64_t(t) * kHeadDim) = kr[u];
            *reinterpret_cast<Bf16x8*>(v_slots + slot_base + int64_t(t) * kHeadDim) = vr[u];
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kGroup; ++r) {
        float s[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          float kf[8];
          bf16x8_to_float(kr[u], kf);
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
          if (b0 + u * kRowsPerStep + row_lane >= rows) s[u] = -INFINITY;
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
          float vf[8];
          bf16x8_to_float(vr[u], vf);
          l[r] += pr;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(pr, vf[i], acc[r][i]);
        }
        m[r] = m_new;
      }
    }
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

  // Merge the warps through shared memory: the lanes of row 0 hold each warp's state.
  if (row_lane == 0) {
#pragma unroll
    for (int r = 0; r < kGroup; ++r) {
      if (col == 0) {
        sm_m[warp][r] = m[r];
        sm_l[warp][r] = l[r];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_acc[warp][r][col * 8 + i] = acc[r][i];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kGroup * kHeadDim; idx += kThreads) {
    const int r = idx / kHeadDim, d = idx % kHeadDim;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kRetrieveWarps; ++w) mm = fmaxf(mm, sm_m[w][r]);
    float ll = 0.0f, a = 0.0f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kRetrieveWarps; ++w) {
        const float cw = exp2f(sm_m[w][r] - mm);
        ll += sm_l[w][r] * cw;
        a += sm_acc[w][r][d] * cw;
      }
    }
    const int64_t state_row = (int64_t(g) * num_splits + split) * kGroup + r;
    ws.o_part[state_row * kHeadDim + d] = ll > 0.0f ? a / ll : 0.0f;
    if (d == 0) ws.lse_part[state_row] = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
  }
}

// Merge of the zones, one CTA of head_dim threads per (group, query head) row = b * num_q_heads + head:
// the retrieval partials of the group's CTAs, the estimation zone and the steady zone. A state with
// lse -inf is skipped, so its o is never read into the sum (it may hold anything).
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
  const float est_lse = p.selection.estimate_lse[row] * kLog2e;
  const float steady_lse = p.steady_lse[row] * kLog2e;
  float mm = fmaxf(est_lse, steady_lse);
  for (int s = 0; s < num_splits; ++s) mm = fmaxf(mm, lse_part[int64_t(s) * group_size]);
  float sum = 0.0f, a = 0.0f;
  if (mm != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float x = lse_part[int64_t(s) * group_size];
      if (x == -INFINITY) continue;
      const float w = exp2f(x - mm);
      sum += w;
      a += w * o_part[int64_t(s) * group_size * kHeadDim];
    }
    if (est_lse != -INFINITY) {
      const float w = exp2f(est_lse - mm);
      sum += w;
      a += w * p.selection.estimate_o[row * kHeadDim + d];
    }
    if (steady_lse != -INFINITY) {
      const float w = exp2f(steady_lse - mm);
      sum += w;
      a += w * __bfloat162float(static_cast<const __nv_bfloat16*>(p.steady_o)[row * kHeadDim + d]);
    }
  }
  static_cast<__nv_bfloat16*>(p.out)[row * kHeadDim + d] = __float2bfloat16(sum > 0.0f ? a / sum : 0.0f);
  if (p.lse != nullptr && d == 0) p.lse[row] = sum > 0.0f ? (mm + log2f(sum)) * kLn2 : -INFINITY;
}

}  // namespace retro::attention::cuda::kernels
