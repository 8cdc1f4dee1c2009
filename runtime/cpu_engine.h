#pragma once
// CpuEngine: the Engine of runtime/engine.h over the CPU Model (whole, or one tensor-parallel shard).
// Each slot holds one SequenceState; a step runs its items one by one through Model::prefill_chunk
// and Model::decode, so a sequence computes exactly what it computes alone, whatever shares its
// steps. Every sequence's K/V and wave index come from one KV pool of kv_capacity_bytes, and
// EngineInfo's KV accounting is an upper bound on what the layout of attention/kv_store.h takes
// (sequence_kv_cost below): admission that keeps within it never runs the pool dry.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "attention/kv_store.h"
#include "attention/wave_index.h"
#include "runtime/core/allocator.h"
#include "runtime/engine.h"
#include "runtime/model.h"

namespace retro::runtime {

struct EngineParams {
  int max_slots = 8;             // sequences held at once
  int64_t prefill_chunk = 512;   // prompt tokens per prefill item (ForwardOptions::prefill_chunk of a lone run)
  size_t kv_capacity_bytes = 0;  // this rank's KV pool; 0: bounded by the system only
  attention::AttentionMode attention = attention::AttentionMode::kDense;
  attention::WaveIndexParams wave;  // wave mode's index; host_page_tokens pages the K/V in both modes

  // Throws retro::Error (kInvalidArgument) naming the field.
  void validate() const;
};

// Upper bound on the KV pool bytes of one sequence of T tokens: per_token * T + per_sequence.
struct SequenceKvCost {
  size_t per_token = 0;
  size_t per_sequence = 0;
};
// For `model`'s layers and KV heads (its shard's) in `mode`, paged by params.host_page_tokens. Wave
// mode counts the prompt twice (the index is built while the steady zone still holds the prompt)
// and a meta-index row per tokens_per_cluster / 2 tokens (segments round their cluster counts up).
SequenceKvCost sequence_kv_cost(const Model& model, attention::AttentionMode mode,
                                const attention::WaveIndexParams& params);

class CpuEngine final : public Engine {
 public:
  // `model` must outlive the engine. Throws retro::Error (kInvalidArgument) when params are invalid.
  CpuEngine(const Model& model, const EngineParams& params);

  const EngineInfo& info() const override { return info_; }
  int64_t length(int slot) const override;
  void release(int slot) override;
  void step(std::span<const WorkItem> items, float* logits) override;

  const Model& model() const { return model_; }
  const SequenceState* sequence(int slot) const;  // null when the slot is empty
  const Allocator& kv_pool() const { return *kv_pool_; }

 private:
  struct Slot {
    std::unique_ptr<SequenceState> seq;  // null when empty
    bool prompt_done = false;
  };
  Slot& slot_at(int slot);

  const Model& model_;
  EngineParams params_;
  EngineInfo info_;
  std::unique_ptr<Allocator> kv_pool_;  // declared before slots_: sequences return their pages to it
  std::vector<Slot> slots_;
};

}  // namespace retro::runtime
