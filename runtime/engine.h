#pragma once
// Engine: what continuous batching drives (parallel/scheduler.h, parallel/coordinator.h). An engine
// holds sequences in numbered slots and runs steps; a step is a list of work items, each a chunk of
// one slot's prompt or one decode token of one slot, run in list order, and it returns the logits
// the caller samples from: one row per item that ends a prompt and one per decode item.
//
// The scheduler plans around what the engine declares in EngineInfo, so one scheduler serves models
// of different shapes:
//   prefill_chunk > 0   prompts arrive in chunks of at most that many tokens, cut at multiples of
//                       it (the CPU model: the chunks Model::prefill cuts, so interleaving prompts
//                       leaves every result bit-identical to a sequence run alone);
//   prefill_chunk == 0  a prompt arrives whole, in one item (a model whose prefill must see the
//                       whole prompt, like the GPU model's wave prefill, runtime/cuda/gpu_model.h);
//   chunked prompts     with prefill_chunk > 0, a model may chunk only prompts of at most
//                       chunked_prompt_limit tokens (longer ones arrive whole) and hold at most
//                       chunked_prompts_in_progress partly prefilled prompts at once (the GPU wave
//                       model keeps an in-flight prompt's K/V of every layer in one device region);
//   KV accounting       a linear bound on the KV bytes of a sequence of T tokens and the capacity
//                       of the pool they come from, so admission never runs a pool dry.
// Decode items may name any set of distinct occupied slots, in any order: an engine over a model whose
// batched decode takes slots [0, n) (GpuModel) maps these slots onto the model's and keeps its
// decoding sequences packed at the front.
//
// With tensor parallelism every rank of the group holds one engine over its shard and runs the same
// steps; the model's collectives leave the same logits on every rank.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace retro::runtime {

enum class WorkKind : uint8_t { kPrefill, kDecode };

const char* work_kind_name(WorkKind kind);  // "prefill", "decode"

struct WorkItem {
  int32_t slot = 0;
  WorkKind kind = WorkKind::kPrefill;
  // Tokens the slot holds before this item. A prefill at position 0 starts a new sequence in an
  // empty slot.
  int64_t position = 0;
  std::vector<int32_t> tokens;  // prefill: a chunk of the prompt; decode: exactly one token
  bool ends_prompt = false;     // prefill: the chunk's last token is the prompt's last

  // Whether the step returns a logits row for this item: the next-token logits of its last token.
  bool wants_logits() const { return kind == WorkKind::kDecode || ends_prompt; }
  bool operator==(const WorkItem&) const = default;
};

// Logits rows a step of `items` returns.
int64_t logits_rows(std::span<const WorkItem> items);

struct EngineInfo {
  int max_slots = 0;            // slots [0, max_slots)
  int64_t vocab_size = 0;       // width of a logits row
  int64_t prefill_chunk = 0;    // > 0: largest prompt chunk, chunks cut at its multiples; 0: whole prompts
  // With prefill_chunk > 0: prompts longer than chunked_prompt_limit arrive whole, in one item (0: every
  // prompt is chunked); at most chunked_prompts_in_progress prompts are partly prefilled at once (0: no limit).
  int64_t chunked_prompt_limit = 0;
  int chunked_prompts_in_progress = 0;
  int64_t max_sequence_tokens = 0;  // tokens one sequence may hold (prompt + generated); 0: no limit
  // KV accounting of this rank: a sequence of T tokens holds at most
  // kv_bytes_per_token * T + kv_bytes_per_sequence bytes of a pool of kv_capacity_bytes (0: unbounded).
  size_t kv_capacity_bytes = 0;
  size_t kv_bytes_per_token = 0;
  size_t kv_bytes_per_sequence = 0;

  bool chunks_prefill() const { return prefill_chunk > 0; }
  // Whether a prompt of `prompt_tokens` arrives in chunks (else whole).
  bool chunks_prompt(int64_t prompt_tokens) const {
    return chunks_prefill() && (chunked_prompt_limit == 0 || prompt_tokens <= chunked_prompt_limit);
  }
  // The bound above for a sequence of `tokens` tokens.
  size_t kv_bytes(int64_t tokens) const;
  // Throws retro::Error (kInvalidArgument) naming the field when a count is out of range.
  void validate() const;
  // "8 slots, prefill chunks of 512, KV pool 1.00 GiB (4.00 KiB per token + 2.00 MiB per sequence)"
  std::string describe() const;
  bool operator==(const EngineInfo&) const = default;
};

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const EngineInfo& info() const = 0;
  // Tokens slot `slot` holds (0 when empty).
  virtual int64_t length(int slot) const = 0;
  // Empties the slot (a finished or cancelled sequence); its KV returns to the pool. No-op when empty.
  virtual void release(int slot) = 0;
  // Runs the items in order. logits: [logits_rows(items), vocab_size] fp32, row r for the r-th item
  // that wants logits (may be null when none does). Throws retro::Error (kInvalidArgument) before
  // running anything when an item does not fit the slots' state (wrong position, a decode before its
  // prompt ended, a chunk past prefill_chunk, a token outside the vocabulary, ...).
  virtual void step(std::span<const WorkItem> items, float* logits) = 0;
};

// The checks every engine makes before a step, against the tokens each slot holds (lengths) and
// whether its prompt has ended (prompt_done), both [max_slots]; throws retro::Error
// (kInvalidArgument) naming the first item that does not fit.
void validate_step(const EngineInfo& info, std::span<const WorkItem> items, const std::vector<int64_t>& lengths,
                   const std::vector<bool>& prompt_done);

// Packing for a model whose batched decode runs slots [0, n): given which engine slot each model
// slot holds (-1: none) and which engine slots decode this step (n of them), the swaps of model
// slots, in order, after which model slots [0, n) hold exactly the decoding ones. Each swap moves a
// decoding sequence from n or above into a slot below n that holds another sequence or none; none
// when the decoding ones are already there. Throws retro::Error (kInvalidArgument) when a decoding
// engine slot is held by no model slot.
std::vector<std::pair<int, int>> pack_decoding_slots(std::span<const int> engine_slot_of_model_slot,
                                                     const std::vector<bool>& decoding);

}  // namespace retro::runtime
