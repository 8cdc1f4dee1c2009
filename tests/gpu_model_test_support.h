#pragma once
// Shared by the GPU model tests (single GPU and tensor-parallel): wave attention that computes exact
// attention, so its logits can be held to dense ones.

#ifdef RETRO_WITH_CUDA

#include "attention/kv_store.h"
#include "runtime/cuda/gpu_model.h"

namespace retro::test_support {

// Wave attention with small segments so a 1-3K prompt is clustered and decode crosses update
// segments; every cluster retrieved, so wave attention computes exact attention. A cache that holds
// every part of every layer of needle-llama-tiny (about 3K parts of 16 rows a step): steps after a
// part's first read hit it, and a refilled slot's old parts are still there when its new sequence
// starts, so a stale part would be found if uids were reused.
inline runtime::cuda::GpuModelOptions full_retrieval_wave(int max_batch, bool use_cuda_graph) {
  runtime::cuda::GpuModelOptions o;
  o.max_chunk = 512;
  o.max_batch = max_batch;
  o.use_cuda_graph = use_cuda_graph;
  o.attention = attention::AttentionMode::kWave;
  o.wave.segment_tokens = 1024;
  o.wave.update_segment_tokens = 128;
  o.wave.retrieval_budget = 1.0;
  o.wave.estimation_budget = 0.0;
  o.buffer.num_slots = 8192;
  o.buffer.ways = 8;
  o.buffer.slot_tokens = 16;
  return o;
}

}  // namespace retro::test_support

#endif  // RETRO_WITH_CUDA
