#pragma once
// The step loop of continuous batching over the ranks of one tensor-parallel group (one model
// replica), each holding an engine over its shard (runtime/engine.h).
//
//   group rank 0  Coordinator: schedules (scheduler.h), broadcasts the StepPlan (step_plan.h) over
//                 the control communicator, runs it on its own engine, samples every logits row
//                 with the request's own Sampler and feeds the tokens into the next plan.
//   other ranks   run_worker: receive a plan, run it on the engine, until the shutdown plan.
//
// Every rank of a group ends a step with the same logits (the model's collectives gather them), so
// sampling happens once, on rank 0, and no token travels back. Results equal a lone run of each
// request (runtime/generate.h with the engine's prefill chunk): the engine runs each item as a lone
// run does, the scheduler cuts prompts where a lone run does, and each request samples from its
// own Sampler (the stream of its own seed), whatever else shares its steps.
//
// Both sides start by comparing every rank's EngineInfo (collective), so a group whose ranks disagree
// on slots, chunks or KV accounting stops on every rank at once. A Coordinator sends the shutdown
// plan when shut down or destroyed, even after a failure of its own, so workers never wait for a
// plan that will not come; a failure inside a step fails on every rank alike (the same plan meets
// the same checks), and then no rank waits for another.

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/scheduler.h"
#include "parallel/step_plan.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace retro::parallel {

class Coordinator {
 public:
  // `engine` and `control` (a host communicator over the group; this rank is its rank 0) must
  // outlive the coordinator. Collective over `control`: the workers call run_worker.
  Coordinator(runtime::Engine& engine, Communicator& control, const SchedulerParams& params);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Why `request` can never run (empty when it can): Scheduler::refusal.
  std::string refusal(const Request& request) const { return scheduler_.refusal(request); }
  // Queues a request; refused ones finish at once (Scheduler::submit).
  RequestId submit(Request request);
  // Runs steps until every submitted request has finished; on_finish sees each result as it
  // finishes, refused ones included.
  void run(const std::function<void(const RequestResult&)>& on_finish);
  // Cancels whatever has not finished (on_finish, when given, sees it) and sends the shutdown plan:
  // the workers return. Later calls do nothing.
  void shutdown(const std::function<void(const RequestResult&)>& on_finish = {});

  const Scheduler& scheduler() const { return scheduler_; }

 private:
  void step();
  void deliver(const std::function<void(const RequestResult&)>& on_finish);

  runtime::Engine& engine_;
  Communicator& control_;
  Scheduler scheduler_;
  std::unordered_map<RequestId, runtime::Sampler> samplers_;  // running and waiting requests
  std::vector<float> logits_;                                  // [rows, vocab] of the last step
  bool in_step_ = false;  // a step failed here: every rank failed it, no one waits for a plan
  bool shut_down_ = false;
};

// The loop of every rank of the group but rank 0 of `control`: runs each plan the coordinator
// broadcasts on `engine` until the shutdown plan. Throws retro::Error (kComm) when a plan arrives out
// of order, or whatever a step throws (on every rank alike).
void run_worker(runtime::Engine& engine, Communicator& control);

}  // namespace retro::parallel
