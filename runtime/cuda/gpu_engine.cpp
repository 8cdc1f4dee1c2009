#include "runtime/cuda/gpu_engine.h"

#include <algorithm>

#include "attention/cuda/wave_cache.h"
#include "runtime/core/error.h"

namespace retro::runtime::cuda {

GpuEngine::GpuEngine(GpuModel& model, size_t host_kv_capacity_bytes) : model_(model) {
  const GpuModelOptions& o = model.options();
  const ModelConfig& c = model.config();
  const bool wave = model.attention_mode() == attention::AttentionMode::kWave;
  info_.max_slots = model.max_batch();
  info_.vocab_size = c.vocab_size;
  info_.prefill_chunk = wave ? 0 : std::min<int64_t>(o.max_chunk, model.max_tokens());
  info_.max_sequence_tokens = model.max_tokens();
  if (wave) {
    const size_t elem = attention::cuda::wave_kv_elem_bytes(o.buffer.kv_dtype);
    const size_t streams = 2 * size_t(c.num_layers) * size_t(model.shard().kv_heads.size());  // K and V
    info_.kv_bytes_per_token = streams * size_t(c.head_dim) * elem;
    // Pages are page_rows bf16 rows long whatever the element size (fp8 pages hold twice the rows).
    info_.kv_bytes_per_sequence = streams * size_t(o.host_store.page_rows) * size_t(c.head_dim) * 2;
    info_.kv_capacity_bytes = host_kv_capacity_bytes > 0 ? host_kv_capacity_bytes : o.host_capacity_bytes;
  }
  info_.validate();
  model_slot_.assign(size_t(info_.max_slots), -1);
  engine_slot_.assign(size_t(info_.max_slots), -1);
  prompt_done_.assign(size_t(info_.max_slots), false);
  decode_logits_.resize(size_t(info_.max_slots) * size_t(info_.vocab_size));
  for (int s = 0; s < info_.max_slots; ++s) model_.reset(s);
}

void GpuEngine::check_slot(int slot) const {
  RETRO_CHECK(slot >= 0 && slot < info_.max_slots, "slot {} is not in [0, {})", slot, info_.max_slots);
}

int GpuEngine::model_slot(int slot) const {
  check_slot(slot);
  return model_slot_[size_t(slot)];
}

int64_t GpuEngine::length(int slot) const {
  const int m = model_slot(slot);
  return m < 0 ? 0 : model_.length(m);
}

void GpuEngine::release(int slot) {
  const int m = model_slot(slot);
  if (m >= 0) {
    model_.reset(m);
    engine_slot_[size_t(m)] = -1;
  }
  model_slot_[size_t(slot)] = -1;
  prompt_done_[size_t(slot)] = false;
}

void GpuEngine::swap_model_slots(int from, int to) {
  if (from == to) return;
  model_.swap_slots(from, to);
  std::swap(engine_slot_[size_t(from)], engine_slot_[size_t(to)]);
  for (int m : {from, to})
    if (engine_slot_[size_t(m)] >= 0) model_slot_[size_t(engine_slot_[size_t(m)])] = m;
}

void GpuEngine::step(std::span<const WorkItem> items, float* logits) {
  std::vector<int64_t> lengths(size_t(info_.max_slots));
  for (int s = 0; s < info_.max_slots; ++s) lengths[size_t(s)] = length(s);
  validate_step(info_, items, lengths, prompt_done_);
  RETRO_CHECK(logits != nullptr || logits_rows(items) == 0, "a step of {} logits rows needs a logits buffer",
              logits_rows(items));
  // The batched decode runs every decode item at once, after the prefills: a slot may take part in
  // one decode item of a step, and a slot that decodes takes no prefill chunk in the same step.
  // Several prefill chunks of one slot run in item order.
  std::vector<int> decodes_of(size_t(info_.max_slots), 0), prefills_of(size_t(info_.max_slots), 0);
  for (size_t i = 0; i < items.size(); ++i) {
    const size_t s = size_t(items[i].slot);
    (items[i].kind == WorkKind::kDecode ? decodes_of : prefills_of)[s]++;
    RETRO_CHECK(decodes_of[s] <= 1 && (decodes_of[s] == 0 || prefills_of[s] == 0),
                "step item {}: slot {} already has an item in this step, and a GPU step runs its decodes together "
                "after the prefills", i, items[i].slot);
  }
  const size_t vocab = size_t(info_.vocab_size);
  // Logits row of each item that wants one, in item order.
  std::vector<int64_t> row(items.size(), -1);
  int64_t rows = 0;
  for (size_t i = 0; i < items.size(); ++i)
    if (items[i].wants_logits()) row[i] = rows++;

  std::vector<size_t> decodes;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    if (item.kind == WorkKind::kDecode) {
      decodes.push_back(i);
      continue;
    }
    const size_t s = size_t(item.slot);
    if (item.position == 0) {
      // A new sequence takes the first free model slot.
      const auto free = std::find(engine_slot_.begin(), engine_slot_.end(), -1);
      RETRO_CHECK_KIND(free != engine_slot_.end(), ErrorKind::kInternal, "no free model slot for slot {}", item.slot);
      const int m = int(free - engine_slot_.begin());
      engine_slot_[size_t(m)] = item.slot;
      model_slot_[s] = m;
    }
    model_.prefill(model_slot_[s], item.tokens, item.ends_prompt ? logits + size_t(row[i]) * vocab : nullptr);
    prompt_done_[s] = item.ends_prompt;
  }
  if (decodes.empty()) return;

  // Pack the decoding sequences into model slots [0, n), which the batched decode runs.
  const int n = int(decodes.size());
  std::vector<bool> decoding(size_t(info_.max_slots), false);
  for (size_t i : decodes) decoding[size_t(items[i].slot)] = true;
  for (const auto& [from, to] : pack_decoding_slots(engine_slot_, decoding)) swap_model_slots(from, to);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (size_t i : decodes) tokens[size_t(model_slot_[size_t(items[i].slot)])] = items[i].tokens[0];
  model_.decode(tokens, decode_logits_.data());
  for (size_t i : decodes) {
    const float* src = decode_logits_.data() + size_t(model_slot_[size_t(items[i].slot)]) * vocab;
    std::copy_n(src, vocab, logits + size_t(row[i]) * vocab);
  }
}

}  // namespace retro::runtime::cuda
