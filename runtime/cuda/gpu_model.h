#pragma once
// The Llama-family decoder on one GPU with dense attention: bf16 weights and activations, cuBLAS
// GEMMs (fp32 accumulate), the layer ops of runtime/cuda/ops.h, tensor-core prefill attention for
// prompt chunks and split-KV decode attention for single tokens. One sequence; its KV cache is
// allocated up front for max_tokens (a request past it is a clear error, never an overflow).
//
// The full-attention baseline and the prefill engine of the wave path.

#include <cstdint>
#include <memory>
#include <span>

#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::runtime::cuda {

class GpuModel {
 public:
  // Copies every weight to device `device` as bf16. Throws retro::Error (kOutOfMemory) naming the pool
  // when weights, KV cache (max_tokens) and workspaces (max_chunk tokens) do not fit.
  // use_cuda_graph: the decode step is captured once and replayed (its inputs travel through pinned
  // host memory inside the graph); false launches every kernel each step.
  GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
           int64_t max_chunk = 1024, bool use_cuda_graph = true);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ModelConfig& config() const;
  int64_t length() const;  // tokens in the KV cache
  void reset();            // empties the KV cache

  // Runs the prompt in chunks of at most max_chunk tokens; logits of the last token -> host [vocab].
  void prefill(std::span<const int32_t> tokens, float* logits);
  // One token; its next-token logits -> host [vocab].
  void decode(int32_t token, float* logits);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace retro::runtime::cuda
