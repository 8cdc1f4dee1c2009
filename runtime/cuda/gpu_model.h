#pragma once
// The Llama-family decoder on one GPU: bf16 weights and activations, cuBLAS GEMMs (fp32
// accumulate), the layer ops of runtime/cuda/ops.h, tensor-core prefill attention for prompt chunks.
// Sequences live in max_batch slots. A batched decode step over slots [0, batch) is captured once per
// batch size as a CUDA graph and replayed.
//
// Two attention modes:
//   dense  every slot holds a KV cache of max_tokens on the device (a request past it is a clear
//          error, never an overflow); decode runs the split-KV decode kernel. The full-attention
//          baseline.
//   wave   no slot holds a full KV cache. Prefill runs layer-major: the residual stream of every
//          prompt token stays on the device and only one layer's K/V of the prompt at a time, which
//          WaveLayerKv (attention/cuda/wave_kv.h) clusters into its index and moves to pinned host
//          pages before the next layer. Decode appends to the steady zone and runs wave attention
//          (steady zone + retrieved clusters through the GPU cluster cache + estimated clusters).
//          Update segments are clustered between steps, outside the captured graph; the layers of a
//          slot come due at staggered steps (wave_growth_stagger), so no step clusters them all.
//
// Tensor parallelism: a GpuModel may be one rank's shard (runtime/model_shard.h) of a group that
// parallel/gpu_tensor_parallel.h assembles: its own KV heads (each with its own wave index, host
// store and cluster cache), MLP channels and LM-head rows; one bf16 all-reduce after the O and down
// projections and one fp32 all-gather of the logits per step, all on the model's stream, inside the
// captured decode graph.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "attention/cuda/host_store.h"
#include "attention/cuda/wave_cache.h"
#include "attention/cuda/wave_kv.h"
#include "attention/kv_store.h"
#include "attention/wave_index.h"
#include "runtime/model_config.h"
#include "runtime/model_shard.h"
#include "runtime/sampler.h"
#include "runtime/weight_source.h"

namespace retro::runtime::cuda {

struct GpuModelOptions {
  int64_t max_chunk = 1024;  // prompt tokens per prefill step
  bool use_cuda_graph = true;  // false: the decode step's kernels are launched one by one
  int max_batch = 1;           // sequence slots
  attention::AttentionMode attention = attention::AttentionMode::kDense;
  // Wave mode only.
  attention::WaveIndexParams wave;             // clustering, update segments, decode budgets
  attention::cuda::WaveBufferParams buffer;    // the GPU cluster cache shared by every layer and slot
  attention::cuda::HostStoreParams host_store; // pages of the pinned host store
  size_t host_capacity_bytes = 0;              // pinned host memory for clustered K/V (0: the system's)
};

// Benchmarking only: attention inputs that take the place of the model's own. With synthetic
// (random) weights every query is random, so no cluster cache hits and decode speed says nothing about
// real use; a benchmark fills these from a workload that looks real (attention/synthetic.h) while every
// other op (projections, RoPE, norms, O projection, MLP, LM head) still runs, so the step time stays
// real. Pointers are bf16 device memory on the model's device, owned by the caller, read in place
// (never copied at set time) and valid while set. A null pair or triple leaves the model's own inputs.
struct AttentionInputOverride {
  // Prefill: K (after RoPE) and V of prompt positions [0, prompt_tokens), [prompt_tokens, kv_heads,
  // head_dim], used by every layer. Dense: rows [p, p + n) of a chunk at positions p.. are what enters
  // the slot's KV cache (and what the chunk attends); wave: what each layer's index is built from. A
  // prompt longer than prompt_tokens is an error. The prompt's queries stay the model's own.
  const void* prompt_k = nullptr;
  const void* prompt_v = nullptr;
  int64_t prompt_tokens = 0;
  // Head counts are the shard's.
  // Decode: row b is slot b's input in every layer of every step: q [max_batch, q_heads, head_dim]
  // after RoPE, k [max_batch, kv_heads, head_dim] after RoPE and v (same shape), the new token's K/V.
  // The step (captured or not) reads them at these fixed addresses, so the caller refills them
  // between decode() calls; writes must be complete before decode() is called (the model's stream
  // waits for no other stream).
  const void* decode_q = nullptr;
  const void* decode_k = nullptr;
  const void* decode_v = nullptr;
};

// Device bytes a GpuModel of this shape needs, by purpose.
struct GpuModelMemoryPlan {
  size_t weights = 0;
  size_t kv_cache = 0;     // dense: K/V of max_batch x max_tokens tokens; wave: 0
  size_t activations = 0;  // including the cuBLAS workspace and attention scratch
  // Wave mode: steady zones, meta index (sized for max_tokens per slot), host-store page tables,
  // decode and build workspaces of every layer.
  size_t wave_kv = 0;
  size_t cluster_cache = 0;  // wave mode: the GPU cluster cache
  size_t prefill = 0;        // wave mode: residual stream, ids and positions of a max_tokens prompt + one layer's K/V
  size_t total() const { return weights + kv_cache + activations + wave_kv + cluster_cache + prefill; }
};
// Dense attention; needs no device.
GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& config, int64_t max_tokens, int64_t max_chunk,
                                         int max_batch);
// Either mode. Wave mode plans its workspaces for the current CUDA device (their sizes depend on it).
GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& config, int64_t max_tokens,
                                         const GpuModelOptions& options);
// One rank's shard of the model.
GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& config, int64_t max_tokens, const GpuModelOptions& options,
                                         const ModelShard& shard);

class GpuModel {
 public:
  // Copies every weight to device `device` as bf16. The memory plan is checked against the device's
  // free memory first: when it does not fit, retro::Error (kOutOfMemory) gives the breakdown before a
  // byte is uploaded. With a CUDA graph, the decode step is captured once per batch size and replayed
  // (its inputs travel through pinned host memory inside the graph).
  GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
           const GpuModelOptions& options);
  // One rank's shard: `weights` presents this shard's slices (parallel/sharded_weights.h) and
  // `collectives` (which must outlive the model) join it to the group; the model runs on their
  // stream. max_batch, options and the calls below must be the same on every rank of the group, which
  // each call enters collectively. Logits are the whole vocabulary's on every rank.
  GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
           const GpuModelOptions& options, const ModelShard& shard, DeviceShardCollectives* collectives);
  // Dense attention.
  GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
           int64_t max_chunk = 1024, bool use_cuda_graph = true, int max_batch = 1);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ModelConfig& config() const;  // the whole model's
  const ModelShard& shard() const;
  int max_batch() const;
  int64_t max_tokens() const;  // tokens one slot may hold
  const GpuModelOptions& options() const;
  attention::AttentionMode attention_mode() const;
  const GpuModelMemoryPlan& memory_plan() const;
  int64_t length(int slot = 0) const;  // tokens the slot holds
  void reset(int slot = 0);            // empties the slot (wave: its host pages go back to the pool)
  // Exchanges the sequences of slots a and b (either may be empty), in stream order: what a scheduler
  // does to keep the sequences it decodes in slots [0, n), which is what decode() runs. Dense: the
  // two slots' cached K/V rows; wave: each layer's steady zone, index and host pages (cluster cache
  // entries stay valid). No captured step needs capturing again.
  void swap_slots(int a, int b);

  // Runs a prompt into `slot` in chunks of at most max_chunk tokens; logits of its last token ->
  // host [vocab]. Dense: appends to what the slot holds. Wave: the slot must be empty (its index is
  // built from the whole prompt); prefill returns with the logits while the last layer's index build
  // may still run on the GPU, and the model's next work waits for it.
  void prefill(int slot, std::span<const int32_t> tokens, float* logits);
  // Waits for every queued GPU operation of the model, index builds included.
  void synchronize();
  void prefill(std::span<const int32_t> tokens, float* logits) { prefill(0, tokens, logits); }
  // One token for each of slots [0, tokens.size()); next-token logits -> host [tokens.size(), vocab].
  // Wave: every slot needs its prompt first; due update segments are clustered before the step.
  void decode(std::span<const int32_t> tokens, float* logits);
  void decode(int32_t token, float* logits) { decode(std::span<const int32_t>(&token, 1), logits); }
  // The same step with each slot's next token sampled on the device (runtime/cuda/sampling.h, the
  // twin of runtime::sample_token): sampling[b] and uniforms[b] (Sampler::next_uniform(); greedy
  // rows ignore it) -> next[b]. Only the tokens leave the GPU, not [batch, vocab] logits; a shard
  // group samples the same tokens on every rank.
  void decode_sample(std::span<const int32_t> tokens, std::span<const SamplingParams> sampling,
                     std::span<const double> uniforms, std::span<int32_t> next);

  // Benchmarking facility (off by default, no cost when off): replaces the attention inputs of later
  // prefills and decode steps, in both modes; AttentionInputOverride{} turns it off. Captured decode
  // steps are captured again when the decode pointers change. The buffers are not in memory_plan().
  void set_attention_override(const AttentionInputOverride& inputs);
  const AttentionInputOverride& attention_override() const;
  // Benchmarking: the override's prompt K/V rows [0, tokens) become empty `slot`'s context as if a
  // prompt of that length had been prefilled, without running the model over it (no projections, no
  // prompt attention, no logits): dense copies the rows into every layer's KV cache, wave builds
  // every layer's index (and host pages) from them. For decode runs at contexts whose prefill would
  // take minutes a sequence; prefill() measures the prompt's own cost.
  void fill_from_override(int slot, int64_t tokens);

  // Wave mode (retro::Error in dense mode); each synchronises the model's stream, so call them
  // between steps.
  // Zone counts of the last decode step of slots [0, batch), summed over layers (groups counts
  // (layer, slot, KV head) triples).
  attention::cuda::WaveKvStats wave_stats(int batch) const;
  // Counters of the cluster cache since construction (all zero without a cache).
  attention::cuda::WaveCacheCounters wave_cache_counters() const;
  size_t host_kv_bytes() const;     // pinned host pages holding clustered K/V now
  size_t host_pinned_bytes() const; // pinned host memory of the page pool (pages in use and free)
  // (layer, slot) update segments decode steps have clustered so far (host count, no synchronisation;
  // 0 in dense mode): a step that raised it ran index growth before its kernels.
  int64_t wave_segments_grown() const;
  // Pins, ahead of use, the free host pages that `sequences` more sequences of `tokens` tokens
  // need for their clustered K/V (pinning is a one-time cost of a few GB/s that a server pays at
  // start, not on its first long prompts). Throws kOutOfMemory past the host capacity.
  void reserve_host_kv(int sequences, int64_t tokens);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace retro::runtime::cuda
