#include "parallel/coordinator.h"

#include <array>
#include <span>
#include <vector>

#include "parallel/watchdog.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace retro::parallel {

namespace {

constexpr int kRoot = 0;

// Every rank's EngineInfo, compared with rank 0's on every rank, so all throw or none.
void check_engines_agree(const runtime::EngineInfo& info, Communicator& control) {
  std::array<int64_t, 9> mine = {info.max_slots,
                                 info.vocab_size,
                                 info.prefill_chunk,
                                 info.max_sequence_tokens,
                                 static_cast<int64_t>(info.kv_capacity_bytes),
                                 static_cast<int64_t>(info.kv_bytes_per_token),
                                 static_cast<int64_t>(info.kv_bytes_per_sequence),
                                 info.chunked_prompt_limit,
                                 info.chunked_prompts_in_progress};
  const int64_t bytes = static_cast<int64_t>(sizeof(mine));
  std::vector<int64_t> all(mine.size() * static_cast<size_t>(control.size()));
  control.all_gather(Tensor(mine.data(), DType::kInt8, {bytes}),
                     Tensor(all.data(), DType::kInt8, {bytes * control.size()}));
  auto info_of = [&](int r) {
    const int64_t* v = all.data() + static_cast<size_t>(r) * mine.size();
    runtime::EngineInfo e;
    e.max_slots = static_cast<int>(v[0]);
    e.vocab_size = v[1];
    e.prefill_chunk = v[2];
    e.max_sequence_tokens = v[3];
    e.kv_capacity_bytes = static_cast<size_t>(v[4]);
    e.kv_bytes_per_token = static_cast<size_t>(v[5]);
    e.kv_bytes_per_sequence = static_cast<size_t>(v[6]);
    e.chunked_prompt_limit = v[7];
    e.chunked_prompts_in_progress = static_cast<int>(v[8]);
    return e;
  };
  for (int r = 1; r < control.size(); ++r)
    RETRO_CHECK(info_of(r) == info_of(kRoot), "rank {}'s engine ({}, vocabulary {}, at most {} tokens a sequence) "
                "differs from rank {}'s ({}, vocabulary {}, at most {} tokens a sequence)", r, info_of(r).describe(),
                info_of(r).vocab_size, info_of(r).max_sequence_tokens, kRoot, info_of(kRoot).describe(),
                info_of(kRoot).vocab_size, info_of(kRoot).max_sequence_tokens);
}

// Releases the plan's slots and runs its items; logits is resized to [rows, vocab].
void execute(runtime::Engine& engine, const StepPlan& plan, std::vector<float>& logits) {
  for (int32_t slot : plan.release) engine.release(slot);
  if (plan.items.empty()) return;
  logits.resize(static_cast<size_t>(plan.logits_rows() * engine.info().vocab_size));
  engine.step(plan.items, logits.data());
}

}  // namespace

Coordinator::Coordinator(runtime::Engine& engine, Communicator& control, const SchedulerParams& params)
    : engine_(engine), control_(control), scheduler_(engine.info(), params) {
  RETRO_CHECK(control.rank() == kRoot, "the coordinator runs on rank {} of its group, this is rank {}", kRoot,
              control.rank());
  check_engines_agree(engine.info(), control);
  RETRO_LOG_INFO("coordinator over {} rank(s): {}; at most {} running, {} tokens a step", control.size(),
                 engine.info().describe(), scheduler_.params().max_running, scheduler_.params().max_batched_tokens);
}

Coordinator::~Coordinator() {
  if (shut_down_ || in_step_) return;
  try {
    shutdown();
  } catch (const std::exception& e) {
    RETRO_LOG_ERROR("coordinator could not send the shutdown plan: {}", e.what());
  }
}

RequestId Coordinator::submit(Request request) {
  // A refused request, or one of no new tokens, finishes at once and samples nothing.
  const bool queued = request.max_new_tokens > 0 && scheduler_.refusal(request).empty();
  const runtime::SamplingParams sampling = request.sampling;
  const RequestId id = scheduler_.submit(std::move(request));
  if (queued) samplers_.emplace(id, runtime::Sampler(sampling));
  return id;
}

void Coordinator::step() {
  ScheduledStep s = scheduler_.plan_step();
  RETRO_ASSERT(!s.plan.items.empty());  // a busy scheduler always has a decode or a chunk that fits
  RETRO_LOG_DEBUG("{}", s.plan.describe());
  in_step_ = true;
  broadcast_step_plan(control_, s.plan, kRoot);
  execute(engine_, s.plan, logits_);
  in_step_ = false;
  const size_t vocab = static_cast<size_t>(engine_.info().vocab_size);
  std::vector<int32_t> tokens(s.rows.size());
  for (size_t r = 0; r < s.rows.size(); ++r)
    tokens[r] = samplers_.at(s.rows[r]).sample(std::span<const float>(logits_.data() + r * vocab, vocab));
  scheduler_.complete_step(tokens);
  watchdog_progress();
}

void Coordinator::deliver(const std::function<void(const RequestResult&)>& on_finish) {
  for (const RequestResult& r : scheduler_.take_finished()) {
    samplers_.erase(r.id);
    if (on_finish) on_finish(r);
  }
}

void Coordinator::run(const std::function<void(const RequestResult&)>& on_finish) {
  RETRO_CHECK(!shut_down_, "run after shutdown");
  deliver(on_finish);
  while (!scheduler_.idle()) {
    step();
    deliver(on_finish);
  }
  const SchedulerStats& st = scheduler_.stats();
  RETRO_LOG_INFO("{} steps ({} mixing prefill and decode), {} prompt + {} decode tokens, at most {} tokens a step, "
                 "peak {} running, {} admitted after waiting for room",
                 st.steps, st.mixed_steps, st.prefill_tokens, st.decode_tokens, st.max_step_tokens, st.peak_running,
                 st.waited);
}

void Coordinator::shutdown(const std::function<void(const RequestResult&)>& on_finish) {
  if (shut_down_) return;
  shut_down_ = true;
  StepPlan plan = scheduler_.plan_shutdown();
  deliver(on_finish);
  broadcast_step_plan(control_, plan, kRoot);
  std::vector<float> none;
  execute(engine_, plan, none);
}

void run_worker(runtime::Engine& engine, Communicator& control) {
  RETRO_CHECK(control.rank() != kRoot, "rank {} of the group runs the coordinator, not a worker", kRoot);
  check_engines_agree(engine.info(), control);
  std::vector<float> logits;
  for (uint64_t expected = 0;; ++expected) {
    StepPlan plan;
    broadcast_step_plan(control, plan, kRoot);
    RETRO_CHECK_KIND(plan.step == expected, ErrorKind::kComm, "received step plan {}, expected step {}", plan.step,
                     expected);
    execute(engine, plan, logits);
    watchdog_progress();
    if (plan.shutdown) return;
  }
}

}  // namespace retro::parallel
