// Scheduler: admission and refusal from the KV accounting, waiting in arrival order, the step token
// budget, prompt chunks cut where a lone run cuts them and interleaved with decodes, finishing on
// stop tokens and length, slot reuse and shutdown. No model: every plan is checked against the
// engine rules of runtime::validate_step, with the slots' lengths a real engine would reach.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "parallel/scheduler.h"
#include "runtime/engine.h"

namespace retro::parallel {
namespace {

using runtime::EngineInfo;
using runtime::WorkItem;
using runtime::WorkKind;
using test_support::error_of;

constexpr int32_t kStop = 2;

// 10 bytes of KV per token and 100 per sequence.
EngineInfo engine_info(int slots, int64_t chunk, size_t kv_capacity_bytes = 0) {
  EngineInfo e;
  e.max_slots = slots;
  e.vocab_size = 100;
  e.prefill_chunk = chunk;
  e.max_sequence_tokens = 1000;
  e.kv_capacity_bytes = kv_capacity_bytes;
  e.kv_bytes_per_token = 10;
  e.kv_bytes_per_sequence = 100;
  return e;
}

Request request(int prompt_tokens, int max_new_tokens) {
  Request r;
  for (int i = 0; i < prompt_tokens; ++i) r.prompt.push_back(10 + i % 80);
  r.max_new_tokens = max_new_tokens;
  r.stop_ids = {kStop};
  return r;
}

int64_t step_tokens(const StepPlan& plan) {
  int64_t n = 0;
  for (const WorkItem& item : plan.items) n += static_cast<int64_t>(item.tokens.size());
  return n;
}

// Runs a scheduler against the engine rules: every plan must pass validate_step with the lengths
// the earlier plans left, and each logits row is answered by `next_token(request, tokens so far)`.
struct Simulation {
  explicit Simulation(Scheduler& s)
      : scheduler(s),
        lengths(static_cast<size_t>(s.engine().max_slots), 0),
        done(static_cast<size_t>(s.engine().max_slots), false) {}

  ScheduledStep step() {
    ScheduledStep s = scheduler.plan_step();
    for (int32_t slot : s.plan.release) {
      lengths[static_cast<size_t>(slot)] = 0;
      done[static_cast<size_t>(slot)] = false;
    }
    runtime::validate_step(scheduler.engine(), s.plan.items, lengths, done);
    for (const WorkItem& item : s.plan.items) {
      lengths[static_cast<size_t>(item.slot)] += static_cast<int64_t>(item.tokens.size());
      if (item.ends_prompt) done[static_cast<size_t>(item.slot)] = true;
    }
    std::vector<int32_t> tokens;
    for (RequestId id : s.rows) tokens.push_back(next_token(id, generated[id]++));
    scheduler.complete_step(tokens);
    for (RequestResult& r : scheduler.take_finished()) results[r.id] = std::move(r);
    plans.push_back(s.plan);
    return s;
  }
  void run() {
    for (RequestResult& r : scheduler.take_finished()) results[r.id] = std::move(r);
    for (int guard = 0; !scheduler.idle(); ++guard) {
      ASSERT_LT(guard, 10000) << "the scheduler does not finish";
      step();
    }
  }

  Scheduler& scheduler;
  std::vector<int64_t> lengths;
  std::vector<bool> done;
  std::function<int32_t(RequestId, int)> next_token = [](RequestId, int) { return 50; };
  std::map<RequestId, int> generated;
  std::map<RequestId, RequestResult> results;
  std::vector<StepPlan> plans;
};

TEST(Scheduler, RefusesWhatCanNeverRunAndSaysWhy) {
  // The pool holds one sequence of at most 64 tokens: 10 * 64 + 100 bytes.
  Scheduler s(engine_info(4, 8, 740), {});
  EXPECT_EQ(s.refusal(request(54, 10)), "");
  const std::string kv = s.refusal(request(60, 10));
  EXPECT_NE(kv.find("needs 70 tokens of KV (prompt 60 + max_new_tokens 10)"), std::string::npos) << kv;
  EXPECT_NE(kv.find("800 B per rank, more than the KV pool's 740 B, which holds at most 64 tokens"),
            std::string::npos)
      << kv;
  EXPECT_EQ(s.refusal(request(0, 10)), "empty prompt");
  EXPECT_NE(s.refusal(request(5, -1)).find("max_new_tokens must be >= 0, got -1"), std::string::npos);
  Request bad_p = request(5, 5);
  bad_p.sampling.top_p = 0.0f;
  EXPECT_NE(s.refusal(bad_p).find("top_p must lie in (0, 1]"), std::string::npos);
  Request bad_token = request(5, 5);
  bad_token.prompt[3] = 100;
  EXPECT_EQ(s.refusal(bad_token), "prompt token 100 at position 3 is not in the vocabulary [0, 100)");

  Scheduler unbounded(engine_info(4, 8), {});
  EXPECT_EQ(unbounded.refusal(request(990, 20)),
            "needs 1010 tokens (prompt 990 + max_new_tokens 20), more than the 1000 a sequence may hold");

  // A refused request finishes at once, with its reason; the scheduler stays idle.
  const RequestId id = s.submit(request(60, 10));
  EXPECT_TRUE(s.idle());
  const std::vector<RequestResult> done = s.take_finished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].id, id);
  EXPECT_EQ(done[0].finish_reason, "refused");
  EXPECT_EQ(done[0].error, kv);
  EXPECT_TRUE(done[0].tokens.empty());
}

TEST(Scheduler, ZeroNewTokensFinishesWithoutAStep) {
  Scheduler s(engine_info(2, 8), {});
  s.submit(request(5, 0));
  EXPECT_TRUE(s.idle());
  const std::vector<RequestResult> done = s.take_finished();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].finish_reason, "length");
  EXPECT_TRUE(done[0].tokens.empty());
}

TEST(Scheduler, ParamsThatCannotHoldAStepAreRefused) {
  std::string msg = error_of([] { Scheduler(engine_info(4, 8), {.max_running = 5}); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("max_running must lie in [1, 4]"), std::string::npos) << msg;
  msg = error_of([] { Scheduler(engine_info(4, 8), {.max_running = 4, .max_batched_tokens = 3}); },
                 ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("a step of 3 tokens cannot hold a decode token for each of 4 running"), std::string::npos) << msg;
  msg = error_of([] { Scheduler(engine_info(4, 64), {.max_running = 4, .max_batched_tokens = 32}); },
                 ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("a step of 32 tokens cannot hold a prefill chunk of 64"), std::string::npos) << msg;
}

TEST(Scheduler, WaitsForKvRoomAndAdmitsInArrivalOrder) {
  // Room for two sequences of 20 tokens (2 x 300 bytes; 16 tokens take 260), four slots.
  Scheduler s(engine_info(4, 8, 600), {.max_running = 4, .max_batched_tokens = 64});
  Simulation sim(s);
  const RequestId a = s.submit(request(10, 10));
  const RequestId b = s.submit(request(10, 6));
  const RequestId c = s.submit(request(10, 10));
  sim.step();
  EXPECT_EQ(s.num_running(), 2u);
  EXPECT_EQ(s.num_waiting(), 1u);
  EXPECT_EQ(s.reserved_kv_bytes(), 300u + 260u);
  // c is admitted into b's slot once b finishes, in the plan that releases it.
  const std::vector<WorkItem>& first = sim.plans[0].items;
  const int32_t slot_b = std::find_if(first.begin(), first.end(), [&](const WorkItem& i) {
                           return i.slot != first[0].slot;
                         })->slot;
  while (!sim.results.count(b)) sim.step();
  const ScheduledStep next = sim.step();
  EXPECT_EQ(next.plan.release, std::vector<int32_t>{slot_b});
  auto first_of_c = std::find_if(next.plan.items.begin(), next.plan.items.end(),
                                 [](const WorkItem& i) { return i.kind == WorkKind::kPrefill && i.position == 0; });
  ASSERT_NE(first_of_c, next.plan.items.end());
  EXPECT_EQ(first_of_c->slot, slot_b);
  // A large request at the head waits for room, and a small one behind it does not overtake it.
  const RequestId big = s.submit(request(30, 10));    // 500 bytes: waits until a and c are done
  const RequestId small = s.submit(request(5, 5));    // 200 bytes: would fit beside a or c
  sim.step();
  EXPECT_EQ(s.num_waiting(), 2u);
  sim.run();
  for (RequestId id : {a, b, c, big, small}) EXPECT_EQ(sim.results.at(id).finish_reason, "length") << id;
  EXPECT_EQ(s.reserved_kv_bytes(), 0u);
  EXPECT_EQ(s.stats().waited, 3);  // c, big and small
  EXPECT_EQ(s.stats().peak_running, 2);  // no two of the others fit the pool together
}

TEST(Scheduler, StepsStayWithinTheTokenBudgetAndCutPromptsWhereALoneRunCutsThem) {
  const int64_t chunk = 8, budget = 20;
  Scheduler s(engine_info(4, chunk), {.max_running = 4, .max_batched_tokens = budget});
  Simulation sim(s);
  std::map<RequestId, Request> requests;
  for (int i = 0; i < 12; ++i) {
    Request r = request(1 + (i * 13) % 37, 1 + (i * 5) % 9);
    requests[s.submit(r)] = r;
  }
  sim.run();
  for (const StepPlan& plan : sim.plans) {
    EXPECT_LE(step_tokens(plan), budget) << plan.describe();
    EXPECT_FALSE(plan.items.empty()) << plan.describe();
    for (const WorkItem& item : plan.items) {
      if (item.kind != WorkKind::kPrefill) continue;
      EXPECT_EQ(item.position % chunk, 0) << plan.describe();
      EXPECT_TRUE(static_cast<int64_t>(item.tokens.size()) == chunk || item.ends_prompt) << plan.describe();
    }
  }
  ASSERT_EQ(sim.results.size(), requests.size());
  for (const auto& [id, r] : sim.results) {
    EXPECT_EQ(r.finish_reason, "length");
    EXPECT_EQ(static_cast<int>(r.tokens.size()), requests.at(id).max_new_tokens);
  }
  EXPECT_GT(s.stats().max_step_tokens, chunk);  // chunks and decodes shared steps
  EXPECT_GT(s.stats().mixed_steps, 0);
}

TEST(Scheduler, InterleavesPromptChunksWithDecodes) {
  // a decodes while b's 32-token prompt arrives in 8-token chunks, one a step beside a's decode.
  Scheduler s(engine_info(2, 8), {.max_running = 2, .max_batched_tokens = 10});
  Simulation sim(s);
  s.submit(request(4, 10));
  sim.step();  // a's prompt
  const RequestId b = s.submit(request(32, 3));
  for (int i = 0; i < 4; ++i) {
    const ScheduledStep step = sim.step();
    ASSERT_EQ(step.plan.items.size(), 2u) << step.plan.describe();
    EXPECT_EQ(step.plan.items[0].kind, WorkKind::kDecode);
    EXPECT_EQ(step.plan.items[1].kind, WorkKind::kPrefill);
    EXPECT_EQ(step.plan.items[1].position, 8 * i);
    EXPECT_EQ(step.plan.items[1].ends_prompt, i == 3);
    EXPECT_EQ(step.rows.size(), i == 3 ? 2u : 1u);
  }
  EXPECT_EQ(s.stats().mixed_steps, 4);
  sim.run();
  EXPECT_EQ(sim.results.at(b).tokens.size(), 3u);
}

TEST(Scheduler, FinishesAfterAStopTokenOrMaxNewTokens) {
  Scheduler s(engine_info(2, 8), {});
  Simulation sim(s);
  sim.next_token = [](RequestId id, int n) { return id == 0 && n == 2 ? kStop : 40 + n; };
  const RequestId a = s.submit(request(6, 10));
  const RequestId b = s.submit(request(6, 4));
  sim.run();
  EXPECT_EQ(sim.results.at(a).finish_reason, "stop");
  EXPECT_EQ(sim.results.at(a).tokens, (std::vector<int32_t>{40, 41, kStop}));
  EXPECT_EQ(sim.results.at(b).finish_reason, "length");
  EXPECT_EQ(sim.results.at(b).tokens, (std::vector<int32_t>{40, 41, 42, 43}));
  // The decode of b's third token feeds its second: positions count the prompt and what came before.
  const WorkItem& decode = sim.plans[2].items.back();
  EXPECT_EQ(decode.kind, WorkKind::kDecode);
  EXPECT_EQ(decode.position, 7);
  EXPECT_EQ(decode.tokens, std::vector<int32_t>{41});
}

TEST(Scheduler, WholePromptEnginesGetAPromptInOneItem) {
  Scheduler s(engine_info(2, 0), {.max_running = 2, .max_batched_tokens = 32});
  EXPECT_EQ(s.refusal(request(40, 4)),
            "prompt of 40 tokens exceeds the step budget of 32 tokens, and the engine takes a prompt whole");
  Simulation sim(s);
  s.submit(request(30, 2));
  const ScheduledStep first = sim.step();
  ASSERT_EQ(first.plan.items.size(), 1u);
  EXPECT_EQ(first.plan.items[0].tokens.size(), 30u);
  EXPECT_TRUE(first.plan.items[0].ends_prompt);
  sim.run();
}

// An engine that chunks prompts of at most 12 tokens, one at a time, and takes longer ones whole.
EngineInfo region_engine_info(int slots) {
  EngineInfo e = engine_info(slots, 4);
  e.chunked_prompt_limit = 12;
  e.chunked_prompts_in_progress = 1;
  return e;
}

TEST(Scheduler, ChunksOnePromptAtATimeAndTakesPromptsPastTheLimitWhole) {
  Scheduler s(region_engine_info(4), {.max_running = 4, .max_batched_tokens = 16});
  EXPECT_EQ(s.refusal(request(20, 4)), "prompt of 20 tokens exceeds the step budget of 16 tokens, and the engine "
                                       "takes a prompt longer than 12 tokens whole");
  Simulation sim(s);  // validate_step refuses any plan with two prompts partly prefilled
  const RequestId a = s.submit(request(10, 3));
  const RequestId b = s.submit(request(8, 3));
  const RequestId c = s.submit(request(14, 3));
  sim.run();
  for (RequestId id : {a, b, c}) EXPECT_EQ(sim.results.at(id).tokens.size(), 3u);
  // a's chunks come first; b starts only in the step where a's prompt ends or later; c arrives whole.
  int a_end = -1, b_start = -1, c_whole = -1;
  for (size_t p = 0; p < sim.plans.size(); ++p)
    for (const WorkItem& item : sim.plans[p].items) {
      if (item.kind != WorkKind::kPrefill) continue;
      if (item.slot == 0 && item.ends_prompt) a_end = int(p);
      if (item.slot == 1 && item.position == 0) b_start = int(p);
      if (item.slot == 2) {
        EXPECT_EQ(item.tokens.size(), 14u) << sim.plans[p].describe();
        EXPECT_TRUE(item.ends_prompt);
        c_whole = int(p);
      }
    }
  ASSERT_GE(a_end, 0);
  EXPECT_GE(b_start, a_end);
  EXPECT_GE(c_whole, 0);
}

TEST(EngineRules, ChunkedPromptLimitsAreEnforced) {
  const EngineInfo e = region_engine_info(2);
  const std::vector<int64_t> empty(2, 0);
  const std::vector<bool> not_done(2, false);
  auto prefill = [](int slot, int64_t position, int n, bool ends) {
    WorkItem item;
    item.slot = slot;
    item.kind = WorkKind::kPrefill;
    item.position = position;
    item.tokens.assign(size_t(n), 7);
    item.ends_prompt = ends;
    return item;
  };
  auto refusal = [&](const std::vector<WorkItem>& items, const std::vector<int64_t>& lengths) {
    return error_of([&] { runtime::validate_step(e, items, lengths, not_done); }, ErrorKind::kInvalidArgument);
  };
  // A prompt within the limit must be chunked; one past it may come whole.
  EXPECT_NE(refusal({prefill(0, 0, 10, true)}, empty).find("more than a prefill chunk of 4"), std::string::npos);
  runtime::validate_step(e, std::vector{prefill(0, 0, 14, true)}, empty, not_done);
  // A chunked prompt cannot grow past the limit.
  EXPECT_NE(refusal({prefill(0, 12, 4, false)}, {12, 0}).find("a chunked prompt past 12 tokens"), std::string::npos);
  // Two prompts partly prefilled at once are one too many; the second may start as the first ends.
  EXPECT_NE(refusal({prefill(0, 0, 4, false), prefill(1, 0, 4, false)}, empty)
                .find("2 prompts would be partly prefilled, the engine holds at most 1"),
            std::string::npos);
  runtime::validate_step(e, std::vector{prefill(0, 0, 4, false), prefill(0, 4, 2, true), prefill(1, 0, 4, false)},
                         empty, not_done);
}

TEST(Scheduler, ShutdownCancelsEverythingAndReleasesEverySlot) {
  Scheduler s(engine_info(1, 8), {});
  Simulation sim(s);
  const RequestId a = s.submit(request(4, 10));
  const RequestId b = s.submit(request(4, 10));
  sim.step();
  sim.step();
  const StepPlan plan = s.plan_shutdown();
  EXPECT_TRUE(plan.shutdown);
  EXPECT_TRUE(plan.items.empty());
  EXPECT_EQ(plan.release, std::vector<int32_t>{0});
  EXPECT_EQ(plan.step, 2u);
  std::map<RequestId, RequestResult> done;
  for (RequestResult& r : s.take_finished()) done[r.id] = std::move(r);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done.at(a).finish_reason, "cancelled");
  EXPECT_EQ(done.at(a).tokens.size(), 2u);  // what it had generated
  EXPECT_EQ(done.at(b).finish_reason, "cancelled");
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.refusal(request(4, 4)), "the scheduler has shut down");
  error_of([&] { s.plan_step(); }, ErrorKind::kInvalidArgument);
}

TEST(Scheduler, EveryPlanNeedsItsTokensBeforeTheNext) {
  Scheduler s(engine_info(2, 8), {});
  s.submit(request(4, 4));
  const ScheduledStep step = s.plan_step();
  ASSERT_EQ(step.rows.size(), 1u);
  error_of([&] { s.plan_step(); }, ErrorKind::kInternal);
  const std::string msg = error_of([&] { s.complete_step(std::vector<int32_t>{1, 2}); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("step 0 has 1 logits rows, got 2 tokens"), std::string::npos) << msg;
}

}  // namespace
}  // namespace retro::parallel
