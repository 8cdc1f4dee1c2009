#include "parallel/scheduler.h"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

namespace retro::parallel {

Scheduler::Scheduler(const runtime::EngineInfo& engine, const SchedulerParams& params)
    : engine_(engine), params_(params) {
  engine_.validate();
  if (params_.max_running == 0) params_.max_running = engine_.max_slots;
  RETRO_CHECK(params_.max_running >= 1 && params_.max_running <= engine_.max_slots,
              "scheduler: max_running must lie in [1, {}] (the engine's slots), got {}", engine_.max_slots,
              params_.max_running);
  RETRO_CHECK(params_.max_batched_tokens >= params_.max_running,
              "scheduler: a step of {} tokens cannot hold a decode token for each of {} running sequences",
              params_.max_batched_tokens, params_.max_running);
  RETRO_CHECK(params_.max_batched_tokens >= engine_.prefill_chunk,
              "scheduler: a step of {} tokens cannot hold a prefill chunk of {}", params_.max_batched_tokens,
              engine_.prefill_chunk);
  slot_busy_.assign(static_cast<size_t>(engine_.max_slots), false);
}

std::string Scheduler::refusal(const Request& request) const {
  if (shut_down_) return "the scheduler has shut down";
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  if (prompt == 0) return "empty prompt";
  if (request.max_new_tokens < 0) return fmt::format("max_new_tokens must be >= 0, got {}", request.max_new_tokens);
  try {
    request.sampling.validate();
  } catch (const Error& e) {
    return e.message();
  }
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    const int32_t t = request.prompt[i];
    if (t < 0 || t >= engine_.vocab_size)
      return fmt::format("prompt token {} at position {} is not in the vocabulary [0, {})", t, i, engine_.vocab_size);
  }
  const int64_t total = prompt + request.max_new_tokens;
  if (engine_.max_sequence_tokens > 0 && total > engine_.max_sequence_tokens)
    return fmt::format("needs {} tokens (prompt {} + max_new_tokens {}), more than the {} a sequence may hold", total,
                       prompt, request.max_new_tokens, engine_.max_sequence_tokens);
  if (!engine_.chunks_prompt(prompt) && prompt > params_.max_batched_tokens)
    return fmt::format(
        "prompt of {} tokens exceeds the step budget of {} tokens, and the engine takes a prompt{} whole", prompt,
        params_.max_batched_tokens,
        engine_.chunks_prefill() ? fmt::format(" longer than {} tokens", engine_.chunked_prompt_limit) : std::string());
  const size_t need = engine_.kv_bytes(total);
  if (engine_.kv_capacity_bytes != 0 && need > engine_.kv_capacity_bytes) {
    const size_t cap = engine_.kv_capacity_bytes;
    const size_t fit = cap > engine_.kv_bytes_per_sequence && engine_.kv_bytes_per_token > 0
                           ? (cap - engine_.kv_bytes_per_sequence) / engine_.kv_bytes_per_token
                           : 0;
    return fmt::format(
        "needs {} tokens of KV (prompt {} + max_new_tokens {}), {} per rank, more than the KV pool's {}, which holds "
        "at most {} tokens for one sequence",
        total, prompt, request.max_new_tokens, format_bytes(need), format_bytes(cap), fit);
  }
  return {};
}

RequestId Scheduler::submit(Request request) {
  const RequestId id = next_id_++;
  std::string why = refusal(request);
  if (!why.empty()) {
    finished_.push_back(RequestResult{id, {}, "refused", std::move(why)});
  } else if (request.max_new_tokens == 0) {
    finished_.push_back(RequestResult{id, {}, "length", {}});
  } else {
    Sequence seq;
    seq.id = id;
    seq.request = std::move(request);
    waiting_.push_back(std::move(seq));
  }
  return id;
}

bool Scheduler::admit_next() {
  if (waiting_.empty() || running_.size() >= static_cast<size_t>(params_.max_running)) return false;
  Sequence& head = waiting_.front();
  const size_t need =
      engine_.kv_bytes(static_cast<int64_t>(head.request.prompt.size()) + head.request.max_new_tokens);
  if (engine_.kv_capacity_bytes != 0 && reserved_kv_bytes_ + need > engine_.kv_capacity_bytes) return false;
  const auto free = std::find(slot_busy_.begin(), slot_busy_.end(), false);
  RETRO_ASSERT(free != slot_busy_.end());  // running < max_running <= max_slots
  *free = true;
  head.slot = static_cast<int32_t>(free - slot_busy_.begin());
  head.kv_bytes = need;
  reserved_kv_bytes_ += need;
  stats_.waited += head.waited ? 1 : 0;
  running_.push_back(std::move(head));
  waiting_.pop_front();
  return true;
}

ScheduledStep Scheduler::plan_step() {
  RETRO_CHECK_KIND(!awaiting_tokens_, ErrorKind::kInternal, "plan_step before the tokens of step {} came back",
                   next_step_ - 1);
  RETRO_CHECK(!shut_down_, "plan_step after the shutdown plan");
  ScheduledStep s;
  s.plan.step = next_step_++;
  s.plan.release = std::move(to_release_);
  to_release_.clear();
  while (admit_next()) {
  }
  for (Sequence& w : waiting_) w.waited = true;

  int64_t budget = params_.max_batched_tokens;
  std::vector<const Sequence*> decoding;
  for (const Sequence& seq : running_)
    if (!seq.generated.empty()) decoding.push_back(&seq);
  std::sort(decoding.begin(), decoding.end(), [](const Sequence* a, const Sequence* b) { return a->slot < b->slot; });
  for (const Sequence* seq : decoding) {
    runtime::WorkItem item;
    item.slot = seq->slot;
    item.kind = runtime::WorkKind::kDecode;
    item.position = static_cast<int64_t>(seq->request.prompt.size() + seq->generated.size()) - 1;
    item.tokens = {seq->generated.back()};
    s.plan.items.push_back(std::move(item));
    s.rows.push_back(seq->id);
    --budget;
  }
  const int64_t decodes = static_cast<int64_t>(s.plan.items.size());

  // Prompts partly prefilled (only chunked ones can be); a new one starts only below the engine's
  // limit (oldest first).
  auto partly = [](const Sequence& seq, int64_t prefilled) {
    return prefilled > 0 && prefilled < static_cast<int64_t>(seq.request.prompt.size());
  };
  int in_progress = 0;
  for (const Sequence& seq : running_) in_progress += partly(seq, seq.prefilled) ? 1 : 0;
  const int max_in_progress = engine_.chunked_prompts_in_progress;
  for (Sequence& seq : running_) {
    const int64_t prompt = static_cast<int64_t>(seq.request.prompt.size());
    const bool chunked = engine_.chunks_prompt(prompt);
    if (chunked && seq.prefilled == 0 && max_in_progress > 0 && in_progress >= max_in_progress) continue;
    while (seq.prefilled < prompt) {
      const int64_t n = chunked ? std::min(engine_.prefill_chunk, prompt - seq.prefilled) : prompt;
      if (n > budget) break;
      in_progress += int(partly(seq, seq.prefilled + n)) - int(partly(seq, seq.prefilled));
      runtime::WorkItem item;
      item.slot = seq.slot;
      item.kind = runtime::WorkKind::kPrefill;
      item.position = seq.prefilled;
      item.tokens.assign(seq.request.prompt.begin() + seq.prefilled, seq.request.prompt.begin() + seq.prefilled + n);
      item.ends_prompt = seq.prefilled + n == prompt;
      if (item.ends_prompt) s.rows.push_back(seq.id);
      s.plan.items.push_back(std::move(item));
      seq.prefilled += n;
      budget -= n;
      stats_.prefill_tokens += n;
    }
  }

  if (!s.plan.items.empty()) {
    ++stats_.steps;
    const bool prefills = static_cast<int64_t>(s.plan.items.size()) > decodes;
    stats_.mixed_steps += decodes > 0 && prefills ? 1 : 0;
    stats_.decode_tokens += decodes;
    stats_.max_step_tokens = std::max(stats_.max_step_tokens, params_.max_batched_tokens - budget);
  }
  stats_.peak_running = std::max(stats_.peak_running, static_cast<int>(running_.size()));
  RETRO_ASSERT(static_cast<int64_t>(s.rows.size()) == s.plan.logits_rows());
  pending_rows_ = s.rows;
  awaiting_tokens_ = true;
  return s;
}

void Scheduler::complete_step(std::span<const int32_t> tokens) {
  RETRO_CHECK_KIND(awaiting_tokens_, ErrorKind::kInternal, "complete_step without a plan");
  RETRO_CHECK(tokens.size() == pending_rows_.size(), "step {} has {} logits rows, got {} tokens", next_step_ - 1,
              pending_rows_.size(), tokens.size());
  awaiting_tokens_ = false;
  for (size_t r = 0; r < tokens.size(); ++r) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const Sequence& seq) { return seq.id == pending_rows_[r]; });
    RETRO_ASSERT(it != running_.end());
    const int32_t token = tokens[r];
    it->generated.push_back(token);
    const std::vector<int32_t>& stop = it->request.stop_ids;
    if (std::find(stop.begin(), stop.end(), token) != stop.end()) {
      finish(*it, "stop");
    } else if (static_cast<int>(it->generated.size()) == it->request.max_new_tokens) {
      finish(*it, "length");
    }
  }
  std::erase_if(running_, [](const Sequence& seq) { return seq.slot < 0; });
  pending_rows_.clear();
}

void Scheduler::finish(Sequence& seq, const char* reason) {
  finished_.push_back(RequestResult{seq.id, std::move(seq.generated), reason, {}});
  if (seq.slot >= 0) {
    to_release_.push_back(seq.slot);
    slot_busy_[static_cast<size_t>(seq.slot)] = false;
    reserved_kv_bytes_ -= seq.kv_bytes;
    seq.slot = -1;  // erased from running_ by the caller
  }
}

StepPlan Scheduler::plan_shutdown() {
  RETRO_CHECK(!shut_down_, "the scheduler has already shut down");
  for (Sequence& seq : waiting_) finish(seq, "cancelled");
  waiting_.clear();
  for (Sequence& seq : running_) finish(seq, "cancelled");
  running_.clear();
  shut_down_ = true;
  awaiting_tokens_ = false;
  pending_rows_.clear();
  StepPlan plan;
  plan.step = next_step_++;
  plan.release = std::move(to_release_);
  to_release_.clear();
  plan.shutdown = true;
  return plan;
}

std::vector<RequestResult> Scheduler::take_finished() {
  std::vector<RequestResult> out = std::move(finished_);
  finished_.clear();
  return out;
}

}  // namespace retro::parallel
