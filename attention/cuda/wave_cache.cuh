#pragma once
// Device side of the GPU cluster cache (wave_cache.h): set lookup, victim claim, the step counter
// and invalidation. The lookup phases that walk a step's parts live with retrieval
// (wave_retrieve.cuh), which owns the part list.

#include <cstdint>

#include "attention/cuda/wave_cache.h"

namespace retro::attention::cuda::kernels {

// Slot of `tag` in its set, or -1. Phase 1 of a step stamps what it finds with the current step.
__device__ __forceinline__ int64_t cache_find(const WaveCacheView& cache, uint64_t tag) {
  const int64_t first = wave_cache_set(tag, cache.num_sets) * cache.ways;
  for (int w = 0; w < cache.ways; ++w)
    if (cache.tags[first + w] == tag) return first + w;
  return -1;
}

// Phase 2 of a step: claims the least recently used way of tag's set that was not used in `step`
// and writes the tag into it; -1 when every way of the set belongs to this step. Concurrent
// claimers in one set race on the stamps with atomicCAS: a lost race means another claimer has
// just moved a way to `step`, so the loop ends after at most `ways` losses.
__device__ __forceinline__ int64_t cache_claim(const WaveCacheView& cache, uint64_t tag, unsigned long long step) {
  const int64_t first = wave_cache_set(tag, cache.num_sets) * cache.ways;
  volatile unsigned long long* stamps = cache.stamps + first;  // other claimers write them: bypass L1
  while (true) {
    int best = -1;
    unsigned long long best_stamp = step;  // only ways strictly older than this step qualify
    for (int w = 0; w < cache.ways; ++w) {
      const unsigned long long s = stamps[w];
      if (s < best_stamp) {
        best = w;
        best_stamp = s;
      }
    }
    if (best < 0) return -1;
    if (atomicCAS(cache.stamps + first + best, best_stamp, step) == best_stamp) {
      cache.tags[first + best] = tag;
      return first + best;
    }
  }
}

// Frees every slot whose tag belongs to one of uids[0, count): uids go through shared memory in
// chunks, each thread checks its slots against the chunk.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    cache_invalidate_kernel(WaveCacheView cache, const int64_t* __restrict__ uids, int count) {
  constexpr int kChunk = 1024;
  __shared__ int64_t s_uids[kChunk];
  const int64_t num_slots = cache.num_sets * cache.ways;
  for (int base = 0; base < count; base += kChunk) {
    const int n = min(kChunk, count - base);
    for (int i = threadIdx.x; i < n; i += kThreads) s_uids[i] = uids[base + i];
    __syncthreads();
    for (int64_t s = blockIdx.x * int64_t(kThreads) + threadIdx.x; s < num_slots; s += int64_t(gridDim.x) * kThreads) {
      const uint64_t tag = cache.tags[s];
      if (tag == kWaveTagEmpty) continue;
      const int64_t uid = wave_cache_tag_uid(tag);
      for (int i = 0; i < n; ++i) {
        if (s_uids[i] == uid) {
          cache.tags[s] = kWaveTagEmpty;
          cache.stamps[s] = 0;
          break;
        }
      }
    }
    __syncthreads();  // the next chunk overwrites s_uids
  }
}

}  // namespace retro::attention::cuda::kernels
