#include "runtime/engine.h"

#include <fmt/format.h>

#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

namespace retro::runtime {

const char* work_kind_name(WorkKind kind) {
  switch (kind) {
    case WorkKind::kPrefill: return "prefill";
    case WorkKind::kDecode: return "decode";
  }
  return "unknown";
}

int64_t logits_rows(std::span<const WorkItem> items) {
  int64_t rows = 0;
  for (const WorkItem& item : items) rows += item.wants_logits() ? 1 : 0;
  return rows;
}

size_t EngineInfo::kv_bytes(int64_t tokens) const {
  return kv_bytes_per_token * static_cast<size_t>(tokens) + kv_bytes_per_sequence;
}

void EngineInfo::validate() const {
  RETRO_CHECK(max_slots > 0, "engine: max_slots must be positive, got {}", max_slots);
  RETRO_CHECK(vocab_size > 0, "engine: vocab_size must be positive, got {}", vocab_size);
  RETRO_CHECK(prefill_chunk >= 0, "engine: prefill_chunk must be >= 0 (0: whole prompts), got {}", prefill_chunk);
  RETRO_CHECK(max_sequence_tokens >= 0, "engine: max_sequence_tokens must be >= 0 (0: no limit), got {}",
              max_sequence_tokens);
  RETRO_CHECK(chunked_prompt_limit >= 0 && chunked_prompts_in_progress >= 0,
              "engine: chunked_prompt_limit ({}) and chunked_prompts_in_progress ({}) must be >= 0 (0: no limit)",
              chunked_prompt_limit, chunked_prompts_in_progress);
  RETRO_CHECK(prefill_chunk > 0 || (chunked_prompt_limit == 0 && chunked_prompts_in_progress == 0),
              "engine: chunked-prompt limits without prefill chunks");
}

std::string EngineInfo::describe() const {
  std::string chunks = chunks_prefill() ? fmt::format("prefill chunks of {}", prefill_chunk) : "whole-prompt prefill";
  if (chunks_prefill() && chunked_prompt_limit > 0)
    chunks += fmt::format(" (prompts of up to {} tokens; longer ones whole)", chunked_prompt_limit);
  if (chunks_prefill() && chunked_prompts_in_progress > 0)
    chunks += fmt::format(", {} prompt{} in progress at most", chunked_prompts_in_progress,
                          chunked_prompts_in_progress == 1 ? "" : "s");
  std::string pool = kv_capacity_bytes == 0 ? "unbounded" : format_bytes(kv_capacity_bytes);
  return fmt::format("{} slots, {}, KV pool {} ({} per token + {} per sequence)", max_slots, chunks, pool,
                     format_bytes(kv_bytes_per_token), format_bytes(kv_bytes_per_sequence));
}

void validate_step(const EngineInfo& info, std::span<const WorkItem> items, const std::vector<int64_t>& lengths,
                   const std::vector<bool>& prompt_done) {
  RETRO_ASSERT(lengths.size() == static_cast<size_t>(info.max_slots) &&
               prompt_done.size() == static_cast<size_t>(info.max_slots));
  // The slots' state as the items before each one leave it.
  std::vector<int64_t> length = lengths;
  std::vector<bool> done = prompt_done;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    RETRO_CHECK(item.slot >= 0 && item.slot < info.max_slots, "step item {}: slot {} is not in [0, {})", i, item.slot,
                info.max_slots);
    const size_t s = static_cast<size_t>(item.slot);
    const std::string what = fmt::format("step item {} ({} of slot {})", i, work_kind_name(item.kind), item.slot);
    RETRO_CHECK(item.position == length[s], "{}: at position {}, but the slot holds {} tokens", what, item.position,
                length[s]);
    for (int32_t t : item.tokens)
      RETRO_CHECK(t >= 0 && t < info.vocab_size, "{}: token {} is not in the vocabulary [0, {})", what, t,
                  info.vocab_size);
    const int64_t n = static_cast<int64_t>(item.tokens.size());
    if (item.kind == WorkKind::kPrefill) {
      RETRO_CHECK(n > 0, "{}: no tokens", what);
      RETRO_CHECK(!done[s], "{}: the slot's prompt has already ended", what);
      // A prompt past the chunked-prompt limit arrives whole; the others in chunks, within the limit.
      const bool whole = info.chunks_prefill() && item.position == 0 && item.ends_prompt &&
                         info.chunked_prompt_limit > 0 && n > info.chunked_prompt_limit;
      if (info.chunks_prefill() && !whole) {
        RETRO_CHECK(n <= info.prefill_chunk, "{}: {} tokens, more than a prefill chunk of {}", what, n,
                    info.prefill_chunk);
        RETRO_CHECK(info.chunked_prompt_limit == 0 || item.position + n <= info.chunked_prompt_limit,
                    "{}: a chunked prompt past {} tokens (longer prompts arrive whole, in one item)", what,
                    info.chunked_prompt_limit);
      } else if (!whole) {
        RETRO_CHECK(item.position == 0 && item.ends_prompt, "{}: this engine takes a prompt whole, in one item", what);
      }
      done[s] = item.ends_prompt;
    } else {
      RETRO_CHECK(n == 1, "{}: a decode item carries one token, got {}", what, n);
      RETRO_CHECK(!item.ends_prompt, "{}: a decode item cannot end a prompt", what);
      RETRO_CHECK(done[s], "{}: the slot's prompt has not ended", what);
    }
    length[s] += n;
    RETRO_CHECK(info.max_sequence_tokens == 0 || length[s] <= info.max_sequence_tokens,
                "{}: the slot would hold {} tokens, more than the {} a sequence may hold", what, length[s],
                info.max_sequence_tokens);
    if (info.chunked_prompts_in_progress > 0 && item.kind == WorkKind::kPrefill && !item.ends_prompt) {
      int64_t in_progress = 0;
      for (size_t t = 0; t < length.size(); ++t) in_progress += length[t] > 0 && !done[t] ? 1 : 0;
      RETRO_CHECK(in_progress <= info.chunked_prompts_in_progress,
                  "{}: {} prompts would be partly prefilled, the engine holds at most {}", what, in_progress,
                  info.chunked_prompts_in_progress);
    }
  }
}

std::vector<std::pair<int, int>> pack_decoding_slots(std::span<const int> engine_slot_of_model_slot,
                                                     const std::vector<bool>& decoding) {
  const int slots = static_cast<int>(engine_slot_of_model_slot.size());
  auto decodes_at = [&](int m) {
    const int e = engine_slot_of_model_slot[static_cast<size_t>(m)];
    return e >= 0 && static_cast<size_t>(e) < decoding.size() && decoding[static_cast<size_t>(e)];
  };
  int n = 0, held = 0;
  for (bool d : decoding) n += d ? 1 : 0;
  for (int m = 0; m < slots; ++m) held += decodes_at(m) ? 1 : 0;
  RETRO_CHECK(held == n, "{} slots decode, but only {} of them hold a sequence", n, held);
  std::vector<std::pair<int, int>> swaps;
  int from = n;
  for (int m = 0; m < n; ++m) {
    if (decodes_at(m)) continue;
    while (!decodes_at(from)) ++from;  // as many decoding slots lie at n and above as holes below n
    swaps.emplace_back(from, m);
    ++from;
  }
  return swaps;
}

}  // namespace retro::runtime
