#include "runtime/cpu_engine.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace retro::runtime {

namespace {
// Clusters per page of a wave index's meta index (attention/cpu/wave_index.cpp).
constexpr size_t kIndexPageClusters = 1024;
}  // namespace

void EngineParams::validate() const {
  RETRO_CHECK(max_slots > 0, "engine: max_slots must be positive, got {}", max_slots);
  RETRO_CHECK(prefill_chunk > 0, "engine: prefill_chunk must be positive, got {}", prefill_chunk);
  wave.validate();
}

SequenceKvCost sequence_kv_cost(const Model& model, attention::AttentionMode mode,
                                const attention::WaveIndexParams& params) {
  // Per (layer, KV head). PagedRows hold whole pages: rows in use + one partial page (+ one more
  // when rows leave from the front, as the steady zone's tail does once the index takes tokens).
  const size_t row = 2 * sizeof(float) * static_cast<size_t>(model.config().head_dim);  // one K and one V row
  const size_t page = static_cast<size_t>(params.host_page_tokens);
  const size_t sink_page = static_cast<size_t>(std::max(params.sink_tokens, 1));
  SequenceKvCost c;
  if (mode == attention::AttentionMode::kDense) {
    c.per_token = row;
    c.per_sequence = row * (sink_page + page);
  } else {
    // Steady zone (all of the prompt until the index is built) + clustered K/V lists + int32
    // positions + meta index (centroid, value sum, int32 size, int64 begin) of at most
    // 2 T / tokens_per_cluster + 1 clusters.
    const size_t meta_row = row + sizeof(int32_t) + sizeof(int64_t);
    const size_t tpc = static_cast<size_t>(params.tokens_per_cluster);
    c.per_token = row + row + sizeof(int32_t) + (2 * meta_row + tpc - 1) / tpc;
    c.per_sequence = row * (sink_page + 2 * page) + row * page + sizeof(int32_t) * page +
                     meta_row * (1 + kIndexPageClusters);
  }
  const size_t streams =
      static_cast<size_t>(model.config().num_layers) * static_cast<size_t>(model.shard().kv_heads.size());
  c.per_token *= streams;
  c.per_sequence *= streams;
  return c;
}

CpuEngine::CpuEngine(const Model& model, const EngineParams& params) : model_(model), params_(params) {
  params_.validate();
  const SequenceKvCost cost = sequence_kv_cost(model, params_.attention, params_.wave);
  info_.max_slots = params_.max_slots;
  info_.vocab_size = model.config().vocab_size;
  info_.prefill_chunk = params_.prefill_chunk;
  info_.max_sequence_tokens = model.config().max_position_embeddings;
  info_.kv_capacity_bytes = params_.kv_capacity_bytes;
  info_.kv_bytes_per_token = cost.per_token;
  info_.kv_bytes_per_sequence = cost.per_sequence;
  info_.validate();
  kv_pool_ = make_host_allocator(params_.kv_capacity_bytes);
  slots_.resize(static_cast<size_t>(params_.max_slots));
}

CpuEngine::Slot& CpuEngine::slot_at(int slot) {
  RETRO_CHECK(slot >= 0 && slot < info_.max_slots, "slot {} is not in [0, {})", slot, info_.max_slots);
  return slots_[static_cast<size_t>(slot)];
}

int64_t CpuEngine::length(int slot) const {
  const SequenceState* seq = sequence(slot);
  return seq != nullptr ? seq->length() : 0;
}

const SequenceState* CpuEngine::sequence(int slot) const {
  return const_cast<CpuEngine*>(this)->slot_at(slot).seq.get();
}

void CpuEngine::release(int slot) {
  Slot& s = slot_at(slot);
  s.seq.reset();
  s.prompt_done = false;
}

void CpuEngine::step(std::span<const WorkItem> items, float* logits) {
  std::vector<int64_t> lengths(slots_.size());
  std::vector<bool> done(slots_.size());
  for (size_t s = 0; s < slots_.size(); ++s) {
    lengths[s] = slots_[s].seq ? slots_[s].seq->length() : 0;
    done[s] = slots_[s].prompt_done;
  }
  validate_step(info_, items, lengths, done);
  RETRO_CHECK(logits != nullptr || logits_rows(items) == 0, "a step of {} logits rows needs a logits buffer",
              logits_rows(items));
  float* row = logits;
  for (const WorkItem& item : items) {
    Slot& s = slots_[static_cast<size_t>(item.slot)];
    if (item.kind == WorkKind::kPrefill) {
      if (item.position == 0) s.seq = model_.new_sequence(params_.attention, params_.wave, kv_pool_.get());
      model_.prefill_chunk(*s.seq, item.tokens, item.ends_prompt, row);
      s.prompt_done = item.ends_prompt;
    } else {
      model_.decode(*s.seq, item.tokens[0], row);
    }
    if (item.wants_logits()) row += info_.vocab_size;
  }
}

}  // namespace retro::runtime
