#pragma once
// Scheduler: the continuous-batching policy of the coordinator (coordinator.h), pure logic: no
// model, no ranks, no sampling. It turns requests into StepPlans and the tokens sampled from each
// step's logits into finished results.
//
// Admission. Requests queue in arrival order and are admitted between steps into free engine slots
// (at most max_running at once) while the engine's KV accounting holds them: an admitted request
// reserves EngineInfo::kv_bytes(prompt + max_new_tokens) of the KV pool until it finishes, so a
// running sequence never runs the pool dry. A request that cannot run even alone (its KV past the
// pool, more tokens than a sequence may hold, a whole prompt past the step budget of an engine that
// cannot chunk prompts, bad parameters) is refused at submission with a reason naming the sizes.
// One that does not fit now waits, and so does every request behind it (first come, first served).
//
// Steps. A step holds at most max_batched_tokens tokens:
//   1. one decode token for every running sequence whose prompt has ended, in slot order (max_running
//      <= max_batched_tokens, so these always fit);
//   2. prompt chunks of the sequences still in prefill, oldest first, as many whole chunks as the
//      budget left holds (a prompt past the engine's chunked-prompt limit as one whole item; a new
//      chunked prompt starts only while fewer than the engine's limit are partly prefilled). Chunks are cut at multiples of the engine's prefill_chunk, the cuts of a
//      lone run of the prompt, so interleaving never changes a sequence's numbers; a chunk that does
//      not fit waits for a later step (one always fits once the decodes ahead of it finish).
// complete_step takes the token sampled from each logits row. A sequence finishes after a stop token
// or max_new_tokens tokens; its slot is released at the start of the next plan, where an admission
// may reuse it.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "parallel/step_plan.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace retro::parallel {

struct Request {
  std::vector<int32_t> prompt;
  int max_new_tokens = 64;
  runtime::SamplingParams sampling;  // the coordinator's to use; the scheduler only validates it
  std::vector<int32_t> stop_ids;     // generation ends after emitting one of these
};

using RequestId = uint64_t;  // submission order, from 0

struct RequestResult {
  RequestId id = 0;
  std::vector<int32_t> tokens;  // generated tokens (a stop token included)
  std::string finish_reason;    // "stop", "length", "refused" or "cancelled"
  std::string error;            // "refused": why
};

struct SchedulerParams {
  int max_running = 0;                // sequences in slots at once; 0: every slot of the engine
  int64_t max_batched_tokens = 2048;  // tokens per step: decode tokens + prompt chunk tokens
};

struct SchedulerStats {
  int64_t steps = 0;           // plans with items
  int64_t mixed_steps = 0;     // steps with both decode and prefill items
  int64_t decode_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t max_step_tokens = 0;  // the most tokens one step held
  int peak_running = 0;
  int64_t waited = 0;          // admitted requests that waited in the queue for at least one step
};

// A step to run and, for each of its logits rows, the request that samples from it.
struct ScheduledStep {
  StepPlan plan;
  std::vector<RequestId> rows;
};

class Scheduler {
 public:
  // Throws retro::Error (kInvalidArgument) naming the values when params do not fit the engine:
  // max_running outside [1, max_slots], a step budget below max_running (every decode must fit a
  // step) or below the engine's prefill chunk.
  Scheduler(const runtime::EngineInfo& engine, const SchedulerParams& params);

  const runtime::EngineInfo& engine() const { return engine_; }
  const SchedulerParams& params() const { return params_; }  // max_running resolved

  // Why `request` can never run on this engine; empty when it can, now or once others finish.
  std::string refusal(const Request& request) const;
  // Queues a request. A refused one finishes at once (finish_reason "refused", error its reason), as
  // does one of max_new_tokens 0 ("length", no tokens: there is nothing to compute).
  RequestId submit(Request request);

  // The next step: slots to release, admissions, decode tokens and prompt chunks. complete_step must
  // follow before the next plan.
  ScheduledStep plan_step();
  // tokens[r]: the token sampled from logits row r of the last plan.
  void complete_step(std::span<const int32_t> tokens);
  // Cancels every waiting and running request (finish_reason "cancelled", with the tokens generated
  // so far) and returns the shutdown plan, which releases every slot still held. Later submissions
  // are refused.
  StepPlan plan_shutdown();

  // Results finished since the last call, in finishing order.
  std::vector<RequestResult> take_finished();
  bool idle() const { return waiting_.empty() && running_.empty(); }
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  size_t reserved_kv_bytes() const { return reserved_kv_bytes_; }
  const SchedulerStats& stats() const { return stats_; }

 private:
  struct Sequence {
    RequestId id = 0;
    Request request;
    int32_t slot = -1;
    int64_t prefilled = 0;  // prompt tokens planned
    std::vector<int32_t> generated;
    size_t kv_bytes = 0;  // reserved while running
    bool waited = false;
  };
  bool admit_next();
  void finish(Sequence& seq, const char* reason);

  runtime::EngineInfo engine_;
  SchedulerParams params_;
  std::deque<Sequence> waiting_;
  std::vector<Sequence> running_;  // admission order
  std::vector<bool> slot_busy_;    // [max_slots]
  std::vector<int32_t> to_release_;
  std::vector<RequestId> pending_rows_;  // rows of the plan awaiting complete_step
  bool awaiting_tokens_ = false;
  bool shut_down_ = false;
  RequestId next_id_ = 0;
  uint64_t next_step_ = 0;
  size_t reserved_kv_bytes_ = 0;
  std::vector<RequestResult> finished_;
  SchedulerStats stats_;
};

}  // namespace retro::parallel
