#pragma once
// The Llama-family decoder on one GPU with dense attention: bf16 weights and activations, cuBLAS
// GEMMs (fp32 accumulate), the layer ops of runtime/cuda/ops.h, tensor-core prefill attention for
// prompt chunks and split-KV decode attention for the tokens of a batch. Sequences live in
// max_batch slots, each with a KV cache of max_tokens allocated up front (a request past it is a clear
// error, never an overflow). A batched decode step over slots [0, batch) is captured once per batch
// size as a CUDA graph and replayed.
//
// The full-attention baseline and the prefill engine of the wave path.

#include <cstdint>
#include <memory>
#include <span>

#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::runtime::cuda {

// Device bytes a GpuModel of this shape needs, by purpose.
struct GpuModelMemoryPlan {
  size_t weights = 0;
  size_t kv_cache = 0;
  size_t activations = 0;  // including the cuBLAS workspace and attention scratch
  size_t total() const { return weights + kv_cache + activations; }
};
GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& config, int64_t max_tokens, int64_t max_chunk,
                                         int max_batch);

class GpuModel {
 public:
  // Copies every weight to device `device` as bf16. The memory plan is checked against the device's
  // free memory first: when weights, KV cache (max_batch x max_tokens) and workspaces do not fit,
  // retro::Error (kOutOfMemory) gives the breakdown before a byte is uploaded.
  // use_cuda_graph: the decode step is captured once and replayed (its inputs travel through pinned
  // host memory inside the graph); false launches every kernel each step.
  GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
           int64_t max_chunk = 1024, bool use_cuda_graph = true, int max_batch = 1);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ModelConfig& config() const;
  int max_batch() const;
  int64_t length(int slot = 0) const;  // tokens in the slot's KV cache
  void reset(int slot = 0);            // empties the slot's KV cache

  // Runs a prompt into `slot` in chunks of at most max_chunk tokens; logits of its last token ->
  // host [vocab].
  void prefill(int slot, std::span<const int32_t> tokens, float* logits);
  void prefill(std::span<const int32_t> tokens, float* logits) { prefill(0, tokens, logits); }
  // One token for each of slots [0, tokens.size()); next-token logits -> host [tokens.size(), vocab].
  void decode(std::span<const int32_t> tokens, float* logits);
  void decode(int32_t token, float* logits) { decode(std::span<const int32_t>(&token, 1), logits); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace retro::runtime::cuda
