#pragma once
// Retrieval-zone attention of wave attention on the GPU and the merge of the three zones
// (DESIGN.md section 2 step 3, ALGORITHM.md sections 1 and 5).
//
// For each group (sequence, KV head) the G query heads attend exactly to every row of the group's
// retrieved clusters (WaveSelection::retrieve_ids). The rows are walked in parts of slot_tokens
// rows (wave_cache.h): a part is read from its GPU cache slot on a hit; a miss admitted into the
// cache is first copied from the mapped pinned host store into its slot (its rows cross PCIe once)
// and then read from there; a miss without a slot is read straight from the host store. The parts
// of a group are spread over many CTAs, and every CTA copies its misses before anything else
// (bandwidth from host memory needs many loads in flight, and the misses are the long pole); each
// CTA leaves a partial (o, lse), and a last kernel merges per query head the partials,
// the estimation zone (WaveSelection::estimate_o / estimate_lse) and the steady zone (the output of
// run_decode_attention over the steady store) by the log-sum-exp merge of attention/merge.h
// (states with lse -inf are ignored, whatever their o).
//
// Rows are bf16, or fp8-e4m3 when the index carries per-cluster scales (WaveIndexView::k_scales):
// then the host store holds 1-byte elements and the cache fp8 slots (WaveBufferParams::kv_dtype),
// and every element counts as its value times its cluster's scale.
//
// One run launches: the cache step advance, lookup phase 1 (hits), lookup phase 2 (victims for the
// misses), retrieval, merge. Plan / run: plan_wave_retrieve() sizes the grid and the workspace on
// the host once per shape; run_wave_retrieve() only launches (no host synchronisation), so a decode
// step can be captured in a CUDA graph.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "attention/cuda/wave_cache.h"
#include "attention/cuda/wave_layout.h"

namespace retro::attention::cuda {

// Warps of a retrieval CTA; each warp walks whole parts.
inline constexpr int kRetrieveWarps = 4;

struct WaveRetrieveParams {
  WaveIndexView index;      // cluster sizes, list offsets and, for fp8 rows, scales (centroids and value sums unused)
  HostStoreView store;      // K/V rows of the clusters, mapped pinned host pages; elem_bytes 1 with scales, else 2
  WaveSelection selection;  // retrieve_ids / retrieve_count, estimate_o / estimate_lse (or estimate_partials)
  WaveCacheView cache;      // num_sets == 0: no cache, every part read from the host store; kv_dtype as the store
  // [num_groups] device: the cache key of each group, unique across the pool's layers and fresh
  // whenever the group's host rows are replaced (wave_cache.h); may be null without a cache.
  const int64_t* group_uids = nullptr;
  const void* q = nullptr;            // [batch, num_q_heads, head_dim] bf16: group g's heads at q + g * G * head_dim
  const void* steady_o = nullptr;     // [batch, num_q_heads, head_dim] bf16, steady-zone output
  const float* steady_lse = nullptr;  // [batch, num_q_heads] fp32 natural log; -inf: empty steady zone
  // Or, when steady_splits > 1, the steady zone as the split states of decode attention run with
  // keep_partials (decode_attention_partials): merged here, which saves that kernel its own merge.
  const float* steady_o_part = nullptr;
  const float* steady_lse_part = nullptr;
  int steady_splits = 1;
  void* out = nullptr;                // [batch, num_q_heads, head_dim] bf16
  float* lse = nullptr;               // [batch, num_q_heads] fp32 natural log, may be null
  float sm_scale = 0.0f;              // usually 1 / sqrt(head_dim)
};

struct WaveRetrievePlan {
  int num_groups = 0;
  int group_size = 0;
  int head_dim = 0;
  int retrieve_capacity = 0;
  int slot_tokens = 0;
  int num_splits = 0;     // retrieval CTAs per group
  int part_capacity = 0;  // parts per group that go through the cache; later parts are read from host
  size_t workspace_bytes = 0;
};

// Planning. slot_tokens: rows per part, the cache's slot_tokens (also without a cache).
// part_capacity: parts per group looked up in the cache (0: 4 per retrievable cluster; a cluster of
// the usual 16 rows is one part of 32); parts past it are still attended, read from the host store. The grid fills
// one wave of the device's resident CTAs (num_sms x ctas_per_sm; 0 reads them from the current
// device), at most one warp per retrievable cluster.
WaveRetrievePlan plan_wave_retrieve(int num_groups, int group_size, int head_dim, int retrieve_capacity,
                                    int slot_tokens, int part_capacity = 0, int num_sms = 0, int ctas_per_sm = 0);

// Checks the arguments, then launches. workspace: device memory of plan.workspace_bytes, 256-byte
// aligned, not shared with a run in flight.
void run_wave_retrieve(const WaveRetrieveParams& params, const WaveRetrievePlan& plan, void* workspace,
                       cudaStream_t stream);

// The bare launch without checks (wave_retrieve.cu); returns the launch status.
cudaError_t launch_wave_retrieve(const WaveRetrieveParams& params, const WaveRetrievePlan& plan, void* workspace,
                                 cudaStream_t stream);
bool wave_retrieve_group_supported(int group_size);
// Resident retrieval CTAs of this shape on one SM of the current device.
int wave_retrieve_ctas_per_sm(int head_dim, int group_size, int retrieve_capacity);

// The workspace, carved by wave_retrieve_workspace() in the same way on the host and in the launcher.
struct alignas(16) RetrieveCluster {
  int64_t begin;  // first row of the cluster's list in the group's host store
  int32_t size;   // rows; 0 for an empty or invalid entry
  int32_t id;     // cluster id
};

struct RetrieveWorkspace {
  int32_t* part_offsets = nullptr;     // [groups, retrieve_capacity + 1] first part of each retrieved cluster
  RetrieveCluster* clusters = nullptr;  // [groups, retrieve_capacity]
  int32_t* part_slots = nullptr;       // [groups, part_capacity] slot << 1 | admit, -1: read from host only
  float* o_part = nullptr;             // [groups, num_splits, G, head_dim] fp32, normalised
  float* lse_part = nullptr;           // [groups, num_splits, G] fp32 base 2
  size_t bytes = 0;
};

inline RetrieveWorkspace wave_retrieve_workspace(const WaveRetrievePlan& plan, void* base) {
  constexpr size_t kAlign = 256;
  const size_t groups = static_cast<size_t>(plan.num_groups);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = (off + bytes + kAlign - 1) / kAlign * kAlign;
    return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(base) + at);  // base may be null when sizing
  };
  RetrieveWorkspace w;
  w.part_offsets = reinterpret_cast<int32_t*>(take(groups * (plan.retrieve_capacity + 1) * sizeof(int32_t)));
  w.clusters = reinterpret_cast<RetrieveCluster*>(take(groups * plan.retrieve_capacity * sizeof(RetrieveCluster)));
  w.part_slots = reinterpret_cast<int32_t*>(take(groups * plan.part_capacity * sizeof(int32_t)));
  const size_t states = groups * plan.num_splits * plan.group_size;
  w.o_part = reinterpret_cast<float*>(take(states * plan.head_dim * sizeof(float)));
  w.lse_part = reinterpret_cast<float*>(take(states * sizeof(float)));
  w.bytes = off;
  return w;
}

}  // namespace retro::attention::cuda
