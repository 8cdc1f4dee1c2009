#pragma once
// StepPlan: what every rank of the tensor-parallel group runs in one step of continuous batching.
// The coordinator (world rank 0, parallel/coordinator.h) decides it and broadcasts it over the host
// communicator; every rank, the coordinator included, then releases the slots it names and runs its
// items on its engine (runtime/engine.h).
//
// Wire form: a header (magic "RSPL", format version, payload bytes, FNV-1a 64 checksum of the
// payload) and a cereal binary archive of the plan, in the byte order of the hosts (every rank of a
// group runs on the same architecture). A truncated, corrupted or foreign buffer is refused with an
// error naming what is wrong, before a field of the payload is trusted.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/engine.h"

namespace retro::parallel {

struct StepPlan {
  uint64_t step = 0;                     // 0, 1, 2, ...: a worker checks that it saw every plan
  std::vector<int32_t> release;          // slots emptied before the items run (finished sequences)
  std::vector<runtime::WorkItem> items;  // run in order
  bool shutdown = false;                 // the last plan: ranks release the slots and leave their loop

  int64_t logits_rows() const { return runtime::logits_rows(items); }
  // "step 12: release [3], 2 decode, 1 prefill (512 tokens)"
  std::string describe() const;
  bool operator==(const StepPlan&) const = default;
};

std::string encode_step_plan(const StepPlan& plan);
// Throws retro::Error (kInvalidInput) naming the problem: short header, wrong magic or version, a
// payload size or checksum that does not match, a payload cereal cannot read or leaves bytes of, an
// unknown work kind, or a shutdown plan with items.
StepPlan decode_step_plan(std::string_view bytes);

// Group rank `root` of `comm` sends `plan` (its size, then its bytes); every other rank receives it
// into `plan`. Collective over `comm` (a host communicator).
void broadcast_step_plan(Communicator& comm, StepPlan& plan, int root = 0);

}  // namespace retro::parallel
