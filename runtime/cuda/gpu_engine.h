#pragma once
// GpuEngine: the Engine of runtime/engine.h over a GpuModel (whole, or one rank's shard). Engine
// slots map onto the model's slots. A step runs its prefill items one by one (GpuModel::prefill) and
// all its decode items as one batched decode step; GpuModel::decode runs model slots [0, n), so
// before it the engine swaps sequences (GpuModel::swap_slots) until the n decoding ones sit there.
//
//   dense  prompts may arrive in chunks of up to max_chunk tokens (cut where a lone prefill cuts
//          them); every slot owns a KV region of max_tokens, so a sequence needs nothing beyond its
//          slot and the KV accounting is empty (admission is bounded by slots and max_tokens).
//   wave   prompts arrive whole (the index is built from the whole prompt); the KV accounting is the
//          pinned host store's: K and V of every layer and KV head of this shard at the host
//          element size, plus one partly filled page per (layer, KV head, K or V) and sequence.

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/cuda/gpu_model.h"
#include "runtime/engine.h"

namespace retro::runtime::cuda {

class GpuEngine final : public Engine {
 public:
  // `model` must outlive the engine, which owns its slots from now on (call nothing else on it).
  // host_kv_capacity_bytes: the wave host store's budget for admission (0: the model's
  // host_capacity_bytes option; 0 there too: unbounded).
  explicit GpuEngine(GpuModel& model, size_t host_kv_capacity_bytes = 0);

  const EngineInfo& info() const override { return info_; }
  int64_t length(int slot) const override;
  void release(int slot) override;
  void step(std::span<const WorkItem> items, float* logits) override;

  // The model slot engine slot `slot` holds its sequence in (-1 when empty).
  int model_slot(int slot) const;

 private:
  void check_slot(int slot) const;
  // Moves the sequence of model slot `from` to model slot `to` and whatever `to` held to `from`.
  void swap_model_slots(int from, int to);

  GpuModel& model_;
  EngineInfo info_;
  std::vector<int> model_slot_;   // engine slot -> model slot, -1 when empty
  std::vector<int> engine_slot_;  // model slot -> engine slot, -1 when free
  std::vector<bool> prompt_done_;  // per engine slot
  std::vector<float> decode_logits_;  // [max_slots, vocab]
};

}  // namespace retro::runtime::cuda
