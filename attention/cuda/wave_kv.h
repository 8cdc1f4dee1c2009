#pragma once
// WaveLayerKv: the KV of one layer for a batch of sequence slots in wave mode on the GPU — the CUDA
// counterpart of SequenceKv (kv_store.h) — composing the pieces of attention/cuda:
//
//   steady zone   the first sink_tokens and the most recent tokens of each slot, on the GPU
//                 ([max_batch, steady_capacity, num_kv_heads, head_dim] bf16), attended exactly by
//                 the dense decode kernel;
//   wave index    meta index per (slot, KV head) group on the GPU (WaveIndexView), built by
//                 run_wave_build at prefill and grown by one update segment at a time;
//   host store    the clustered K/V rows, cluster-contiguous, in pinned host pages (HostKvStore):
//                 bf16, or fp8-e4m3 with one scale per cluster for K and for V (buffer.kv_dtype;
//                 the scales sit beside the meta index on the GPU);
//   decode        steady attention -> cluster selection + estimation (run_wave_select) ->
//                 retrieval through the GPU cluster cache and merge (run_wave_retrieve).
//
// attend() launches only (no host synchronisation, no allocation): a decode step made of append()
// and attend() can be captured in a CUDA graph. build(), grow() and release() run between steps.
// The host keeps the counts that decide when an update segment is due, so no step reads them back.
// A due segment may wait up to kWaveGrowthSlackTokens appends (wave_growth.h: the steady zone has
// the room), so a caller can spread the growth of many slots over several steps.

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "attention/cuda/decode_attention.h"
#include "attention/cuda/host_store.h"
#include "attention/cuda/wave_build.h"
#include "attention/cuda/wave_cache.h"
#include "attention/cuda/wave_retrieve.h"
#include "attention/cuda/wave_select.h"
#include "attention/wave_index.h"
#include "runtime/core/allocator.h"

namespace retro::attention::cuda {

struct WaveKvShape {
  int max_batch = 0;     // sequence slots
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;      // 64 or 128
  int64_t max_tokens = 0;  // tokens one slot may hold (prompt + generated)
};

// Per-step counts of one attend(), read back on request (stats()).
struct WaveKvStats {
  int64_t groups = 0;
  int64_t clusters = 0;
  int64_t non_empty_clusters = 0;
  int64_t retrieved_clusters = 0;
  int64_t estimated_clusters = 0;
  int64_t retrieved_tokens = 0;
  int64_t estimated_tokens = 0;
  int64_t clustered_tokens = 0;
};

// The device allocations of one WaveLayerKv, by buffer (bytes), derived from its shape and
// parameters alone: what the constructor allocates, and what a model plans before building one.
struct WaveLayerKvSizes {
  int64_t steady_capacity = 0;   // rows of a slot's steady zone
  int64_t cluster_capacity = 0;  // index entries of a (slot, KV head) group
  int retrieve_capacity = 0;     // clusters one group may retrieve at its largest budget
  size_t steady = 0;             // K (and again V) steady zones
  size_t steady_len = 0;
  size_t centroids = 0, value_sums = 0, sizes = 0, begins = 0, num_clusters = 0, uids = 0;
  size_t scales = 0;             // fp8: K (and again V) per-cluster scales; 0 for bf16
  size_t select_ws = 0, retrieve_ws = 0, steady_ws = 0;  // workspaces of the largest batch
  size_t retrieve_ids = 0, retrieve_count = 0, stats = 0, steady_o = 0, steady_lse = 0;
  size_t page_tables = 0;        // the host store's K and V page tables
  size_t build = 0;              // build workspace, order and mean keys of the largest segment (allocated on first use)

  // Everything above; every buffer counts at least one byte, as the allocator rounds empty ones up.
  size_t total() const;
};

// The sizes for `shape`, `params` and `buffer`, with host pages of page_bytes (HostPagePool). Throws
// retro::Error (kInvalidArgument) as the constructor does for an impossible shape or parameters.
WaveLayerKvSizes plan_wave_layer_kv(const WaveKvShape& shape, const WaveIndexParams& params,
                                    const WaveBufferParams& buffer, size_t page_bytes, int num_layers = 1);

// Growth of the layers of one model is staggered: layer l's update segment comes due growth_stagger
// tokens after the segment is full, so the layers of a slot grow at different decode steps instead
// of all in one (min(layer, update_segment_tokens - window_tokens): the window plus the stagger
// stays within one update segment). Every layer's steady zone holds the largest stagger of the model
// on top of sink + window + update segment.
int64_t wave_growth_stagger(const WaveIndexParams& params, int layer);

// Device scratch of index builds, allocated on first use: the workspace, cluster order and mean keys
// of a build (a prompt's or an update segment's), and for a growth of several slots at once
// (WaveLayerKv::grow of a list) the slots' update segments gathered into one batch of build groups
// with that build's outputs, for up to growth_slots slots a call. The layers of a model build and
// grow one after another on one stream, so they share one (GpuModel does: one prompt-sized build
// workspace instead of one per layer); a WaveLayerKv given none keeps its own.
struct WaveKvScratch {
  Buffer build_workspace, build_order, build_mean;  // grown to the largest build so far
  Buffer host_staging;                              // clustered rows on their way to the host store
  int growth_slots = 0;                             // 0: growth buffers not allocated yet
  Buffer k, v;                                      // [growth_slots * kv_heads, update, head_dim] bf16
  Buffer centroids, value_sums, sizes, begins;      // [growth_slots * kv_heads, update clusters] entries
  Buffer order, mean;                               // [groups, update] i32, [groups, head_dim] fp32
  Buffer workspace;                                 // run_wave_build's, for growth_slots * kv_heads groups
  size_t bytes() const;
};
// Device bytes of the growth buffers for `shape` (growth_slots = min(max_batch, kMaxGrowthSlots)).
size_t wave_growth_scratch_bytes(const WaveKvShape& shape, const WaveIndexParams& params);

class WaveLayerKv {
 public:
  // layer of num_layers sharing one cluster cache: the cache uid of a group is
  // ((sequence * max_batch + slot) * num_layers + layer) * num_kv_heads + kv_head, where sequence
  // counts the prompts the slot has held, so no uid is ever reused (wave_cache.h). buffer.kv_dtype
  // (bf16 or fp8-e4m3) is the element type of the host store; the cache given to attend() must be
  // planned with the same one.
  // scratch (may be null: then one of its own; must outlive this object) may be shared with the
  // other layers of the model.
  WaveLayerKv(const WaveKvShape& shape, const WaveIndexParams& params, const WaveBufferParams& buffer,
              HostPagePool& pool, Allocator& device_allocator, int layer = 0, int num_layers = 1,
              WaveKvScratch* scratch = nullptr);
  ~WaveLayerKv();
  WaveLayerKv(const WaveLayerKv&) = delete;
  WaveLayerKv& operator=(const WaveLayerKv&) = delete;

  const WaveKvShape& shape() const { return shape_; }
  const WaveIndexParams& params() const { return params_; }
  DType kv_dtype() const { return buffer_.kv_dtype; }
  int64_t steady_capacity() const { return steady_capacity_; }
  int64_t cluster_capacity() const { return cluster_capacity_; }

  // Prefill of `slot` with the n prompt tokens' K and V (token t, KV head h at k + t * stride_token +
  // h * head_dim, bf16, device): the first sink_tokens and the last window_tokens go to the steady
  // zone, every token between them is clustered into the index and written to the host store. The
  // slot must be empty (release() first). Short prompts stay whole in the steady zone.
  void build(int slot, const void* k, const void* v, int64_t n, int64_t stride_token, cudaStream_t stream);

  // Appends one decode token per slot [0, batch): k_new, v_new [batch, num_kv_heads, head_dim] bf16.
  // Throws (before launching anything) when a slot's due update segment has waited its slack
  // (growth_steps_left() is 0): call grow() first.
  void append(const void* k_new, const void* v_new, int batch, cudaStream_t stream);
  // The host side of append() alone (its checks and the slots' token counts, which decide when
  // grow() is due), for a step whose append kernel ran inside a replayed CUDA graph.
  void advance(int batch);
  // True when grow() may run: the slot's steady zone holds a full update segment past the window
  // and this layer's growth stagger.
  bool growth_due(int slot) const;
  // For a due slot: appends it may still take before grow() must run (kWaveGrowthSlackTokens when
  // it has just fallen due, 0 when the next append needs grow() first).
  int64_t growth_steps_left(int slot) const;
  // Clusters the oldest update_segment_tokens of the slot's recent tokens as one new index segment
  // and moves them to the host store, keeping the last window_tokens in the steady zone.
  void grow(int slot, cudaStream_t stream);
  // The same for every listed slot (each due, none twice), their update segments clustered by one
  // build per kMaxGrowthSlots slots: a decode step where many slots cross a segment together costs
  // one build, not one per slot. The result equals growing them one by one.
  void grow(std::span<const int> slots, cudaStream_t stream);

  // Wave attention of one decode query per slot [0, batch) (after append): q [batch, num_q_heads,
  // head_dim] bf16 -> out (same shape) bf16; lse [batch, num_q_heads] fp32 natural log, may be null.
  // The cache is shared by every layer (wave_cache.h); num_sets == 0 reads every part from the host.
  void attend(const void* q, void* out, float* lse, int batch, float sm_scale, const WaveCacheView& cache,
              cudaStream_t stream);

  // Empties the slot (synchronises the stream: its host pages may be read by queued kernels).
  void release(int slot, cudaStream_t stream);
  // Exchanges the sequences of slots a and b (either may be empty): steady zones, meta index
  // entries, cache uids (so the cluster cache keeps serving both) and host pages, in stream order,
  // between steps. Each slot keeps its own count of sequences held, so uids made later stay fresh.
  void swap_slots(int a, int b, cudaStream_t stream);

  int64_t length(int slot) const;          // tokens of the slot: clustered + steady
  int64_t clustered_tokens(int slot) const;
  int64_t num_clusters(int slot) const;    // per KV head
  int64_t steady_tokens(int slot) const;
  // Counters of the last attend() (synchronises the stream).
  WaveKvStats stats(int batch, cudaStream_t stream) const;
  // fp8 host KV: the scales of the slot's clusters, K (or V when `value`), [num_kv_heads,
  // num_clusters(slot)] (synchronises the stream); empty for bf16.
  std::vector<float> cluster_scales(int slot, bool value, cudaStream_t stream) const;
  // When not null, attend() records `event` on its stream between cluster selection and retrieval,
  // so a benchmark can split a step's time; null (the default) records nothing.
  void set_select_event(cudaEvent_t event) { select_event_ = event; }
  size_t device_bytes() const;  // its own buffers (a shared scratch is its owner's)
  const WaveLayerKvSizes& layout() const { return layout_; }
  size_t host_bytes() const { return store_->bytes_in_use(); }

 private:
  struct Slot {
    int64_t clustered = 0;  // rows in the host store (per KV head)
    int64_t clusters = 0;   // index entries (per KV head)
    int64_t steady = 0;     // rows in the steady zone
    int64_t sequence = -1;  // sequences this slot has held, for fresh cache uids
  };
  void check_append(int batch) const;
  void add_segment(int slot, const void* k, const void* v, int64_t n, int64_t stride_token, cudaStream_t stream);
  void set_slot_counts(int slot, cudaStream_t stream);
  // After a slot's update segment went to the index: the kept recent rows move down in the steady zone.
  void shift_steady(int slot, cudaStream_t stream);
  void grow_batch(std::span<const int> slots, cudaStream_t stream);
  void allocate_growth_scratch();
  const WaveSelectPlan& select_plan(int batch);
  const WaveRetrievePlan& retrieve_plan(int batch);
  const DecodeAttentionPlan& steady_plan(int batch);

  WaveKvShape shape_;
  WaveLayerKvSizes layout_;
  WaveIndexParams params_;
  WaveBufferParams buffer_;
  Allocator* device_;
  int layer_, num_layers_;
  int group_size_ = 0;
  int64_t steady_capacity_ = 0;
  int64_t growth_at_ = 0;  // steady rows at which growth is due: sink + window + update + stagger
  int64_t cluster_capacity_ = 0;
  std::vector<Slot> slots_;
  std::unique_ptr<HostKvStore> store_;
  // Device state.
  Buffer k_steady_, v_steady_, steady_len_;
  Buffer centroids_, value_sums_, sizes_, begins_, num_clusters_, uids_;
  Buffer k_scales_, v_scales_;  // fp8: [groups, cluster_capacity] fp32; empty for bf16
  Buffer retrieve_ids_, retrieve_count_, stats_;
  Buffer steady_o_, steady_lse_;
  Buffer select_ws_, retrieve_ws_, steady_ws_;
  // Plans per batch size (index batch - 1), made on first use.
  std::vector<std::unique_ptr<WaveSelectPlan>> select_plans_;
  std::vector<std::unique_ptr<WaveRetrievePlan>> retrieve_plans_;
  std::vector<std::unique_ptr<DecodeAttentionPlan>> steady_plans_;
  cudaEvent_t select_event_ = nullptr;
  std::unique_ptr<WaveKvScratch> own_scratch_;  // when none is shared
  WaveKvScratch* scratch_ = nullptr;            // the shared one, or own_scratch_
};

}  // namespace retro::attention::cuda
