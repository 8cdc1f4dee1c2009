#pragma once
// The GPU cluster cache of the wave buffer (ALGORITHM.md section 5): one pool in HBM shared by every
// sequence, layer and KV head of a worker, holding recently retrieved parts of cluster lists so a
// decode step reads them from HBM instead of over PCIe.
//
// Unit: a *part*, up to slot_tokens consecutive rows of one cluster's list. Cluster c of a group
// with size s has ceil(s / slot_tokens) parts; part p covers rows [begin + p * slot_tokens,
// min(begin + (p + 1) * slot_tokens, begin + s)). A slot holds the K and V rows of one part.
//
// Organisation: set-associative. The key of a part is a 64-bit tag (group uid, cluster id, part);
// set = hash(tag) % num_sets, and the part may sit in any of the set's `ways` slots. Replacement is
// LRU inside a set by a stamp: the step in which the slot was last used. The mapping (tags) and the
// replacement state (stamps) live on the GPU only, so a decode step needs no host round trip and
// can be captured in a CUDA graph.
//
// One lookup, run by run_wave_retrieve (wave_retrieve.h) for every layer of every decode step:
//   step      the lookup's step is the device step counter + 1; the lookup's last kernel (the zone
//             merge) advances the counter, so graph replays advance it too;
//   phase 1   every requested part that is present is a hit and is stamped with the current step,
//             so nothing requested this step can be evicted this step;
//   phase 2   every miss claims the least recently used way of its set whose stamp is older than
//             the current step (atomicCAS on the stamp, then the tag is written); when every way of
//             the set was used this step the miss gets no slot and is read from the host only;
//   retrieval reads hits from their slots and misses from the host store, writing an admitted
//             miss into its slot in the same pass (its rows cross PCIe once).
// Every kernel of a cache must run on one stream (or streams ordered with each other).
//
// Group uids: the caller gives every group (sequence, KV head) of every layer a uid unique in the
// pool, and a fresh one whenever the group's host rows are replaced (a new sequence in the slot),
// so a part of a previous owner can never be returned. invalidate_wave_cache() drops every entry
// of given uids, which also makes a uid safe to reuse.
//
// Memory: plan_wave_cache() gives the bytes; the caller allocates them on the device (accounted as
// MemoryPurpose::kKvCache) and init_wave_cache() lays the cache out in them.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "runtime/core/dtype.h"

namespace retro::attention::cuda {

struct WaveBufferParams {
  // Rows per slot. Clusters hold about 16 rows on average (ALGORITHM.md section 3), so most clusters
  // are one part and a slot wastes little; the reference pages hold 8 rows.
  int slot_tokens = 32;
  // Slots per set: more ways approach a fully associative LRU, at the cost of a longer scan.
  int ways = 16;
  // Pool size, the first of these that is set: num_slots, else cache_bytes (K and V rows of the
  // slots), else kv_fraction of the offloaded KV bytes given to plan_wave_cache (ref: 5%).
  int64_t num_slots = 0;
  size_t cache_bytes = 0;
  double kv_fraction = 0.05;
  // Element type of the host store and of the cache slots: kBF16, or kFP8E4M3 with one fp32 scale
  // per cluster for its K rows and one for its V rows (max |x| / 448 over the cluster's rows). fp8
  // halves the bytes read over PCIe, the host memory and the bytes of a slot (the same cache bytes
  // hold twice the slots).
  DType kv_dtype = DType::kBF16;
};

// Bytes of one element of the host store and the slots: 2 (bf16) or 1 (fp8-e4m3); 0 for a dtype
// the wave buffer does not store.
constexpr int wave_kv_elem_bytes(DType kv_dtype) {
  return kv_dtype == DType::kBF16 ? 2 : kv_dtype == DType::kFP8E4M3 ? 1 : 0;
}

// The tag of a part packs the group uid, the cluster id and the part index. A part whose fields do
// not fit (uid >= kWaveCacheMaxUid, a cluster id or a part index too large) is never cached: it is
// read from the host store every time, which stays correct.
inline constexpr int kWaveTagPartBits = 10;     // 1024 parts: 32K rows of one cluster at 32 rows a slot
inline constexpr int kWaveTagClusterBits = 20;  // 1M clusters per group: 16M tokens at 16 per cluster
inline constexpr int kWaveTagUidBits = 64 - kWaveTagPartBits - kWaveTagClusterBits;
inline constexpr int64_t kWaveCacheMaxUid = (int64_t(1) << kWaveTagUidBits) - 1;  // the all-ones uid is reserved
inline constexpr uint64_t kWaveTagEmpty = ~uint64_t(0);  // tag of a free slot

// Tag of part `part` of cluster `cluster` of the group with `uid`; kWaveTagEmpty when not cacheable.
constexpr uint64_t wave_cache_tag(int64_t uid, int64_t cluster, int64_t part) {
  if (uid < 0 || uid >= kWaveCacheMaxUid || cluster < 0 || cluster >= (int64_t(1) << kWaveTagClusterBits) ||
      part < 0 || part >= (int64_t(1) << kWaveTagPartBits))
    return kWaveTagEmpty;
  return (uint64_t(uid) << (kWaveTagClusterBits + kWaveTagPartBits)) |
         (uint64_t(cluster) << kWaveTagPartBits) | uint64_t(part);
}

constexpr int64_t wave_cache_tag_uid(uint64_t tag) {
  return int64_t(tag >> (kWaveTagClusterBits + kWaveTagPartBits));
}

// Set of a tag. The parts of one cluster and the clusters of one group are consecutive tags: a
// full-avalanche mix (splitmix64's finaliser) spreads them over the sets.
constexpr int64_t wave_cache_set(uint64_t tag, int64_t num_sets) {
  uint64_t x = tag;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x = x ^ (x >> 31);
  return int64_t(x % uint64_t(num_sets));
}

// Device counters, indices into WaveCacheView::counters. Parts are counted when a retrieval reads
// them: a part is a hit (read from its slot) or a miss (read from the host store); admitted misses
// were also written into a slot.
enum WaveCacheCounter : int {
  kWaveCacheHitParts = 0,
  kWaveCacheMissParts = 1,
  kWaveCacheAdmittedParts = 2,
  kWaveCacheHostRows = 3,   // K/V rows read from the host store
  kWaveCacheHostBytes = 4,  // bytes read from the host store, K and V
  kWaveCacheNumCounters = 5,
};

// Device view of a cache (all pointers device memory). num_sets == 0: no cache, every part is read
// from the host store.
struct WaveCacheView {
  int head_dim = 0;
  int slot_tokens = 0;
  int ways = 0;
  int64_t num_sets = 0;                    // slot s = set * ways + way
  DType kv_dtype = DType::kBF16;           // of the slot rows: bf16, or fp8-e4m3 as the host store holds them
  void* k_slots = nullptr;                 // [num_sets * ways, slot_tokens, head_dim] kv_dtype
  void* v_slots = nullptr;                 // [num_sets * ways, slot_tokens, head_dim] kv_dtype
  uint64_t* tags = nullptr;                // [num_sets * ways] kWaveTagEmpty when free
  unsigned long long* stamps = nullptr;    // [num_sets * ways] step of the last use; 0: never used
  unsigned long long* step = nullptr;      // [1] the current step (the first lookup runs at step 1)
  unsigned long long* counters = nullptr;  // [kWaveCacheNumCounters]
};

// Byte layout of a cache in one device allocation (offsets 256-byte aligned).
struct WaveCacheLayout {
  int head_dim = 0;
  int slot_tokens = 0;
  int ways = 0;
  int64_t num_sets = 0;
  DType kv_dtype = DType::kBF16;
  size_t k_offset = 0, v_offset = 0, tags_offset = 0, stamps_offset = 0, step_offset = 0, counters_offset = 0;
  size_t bytes = 0;  // the allocation to make

  int64_t num_slots() const { return num_sets * ways; }
};

// Counters read back on the host.
struct WaveCacheCounters {
  uint64_t hit_parts = 0;
  uint64_t miss_parts = 0;
  uint64_t admitted_parts = 0;
  uint64_t host_rows = 0;
  uint64_t host_bytes = 0;
  uint64_t step = 0;  // lookups run so far (the device step counter)
};

// K and V rows of one slot: 2 * slot_tokens * head_dim elements of params.kv_dtype.
size_t wave_cache_slot_bytes(const WaveBufferParams& params, int head_dim);

// Slots = params.num_slots, or the bytes of params (see WaveBufferParams) over the bytes of a slot
// (wave_cache_slot_bytes), rounded down to whole sets. offloaded_kv_bytes: K and V bytes the host
// store of the worker holds (only read when neither num_slots nor cache_bytes is set). Throws when
// not even one set fits, or for a kv_dtype other than bf16 and fp8-e4m3.
WaveCacheLayout plan_wave_cache(const WaveBufferParams& params, int head_dim, size_t offloaded_kv_bytes = 0);

// Lays the cache out in `memory` (device, layout.bytes, 256-byte aligned) and empties it: every slot
// free, step 0, counters 0. Stream-ordered, no synchronisation.
WaveCacheView init_wave_cache(const WaveCacheLayout& layout, void* memory, cudaStream_t stream);

// Drops every entry (step and counters kept). Stream-ordered, graph-capturable.
void clear_wave_cache(const WaveCacheView& cache, cudaStream_t stream);

// Drops every entry whose group uid is one of uids[0, count) (device memory). Stream-ordered,
// graph-capturable.
void invalidate_wave_cache(const WaveCacheView& cache, const int64_t* uids, int count, cudaStream_t stream);

void reset_wave_cache_counters(const WaveCacheView& cache, cudaStream_t stream);

// Copies the counters to the host and waits for the stream: for metrics between steps, never
// inside one.
WaveCacheCounters read_wave_cache_counters(const WaveCacheView& cache, cudaStream_t stream);

// The bare launches (wave_cache.cu); they return the launch status.
cudaError_t launch_wave_cache_invalidate(const WaveCacheView& cache, const int64_t* uids, int count,
                                         cudaStream_t stream);

}  // namespace retro::attention::cuda
