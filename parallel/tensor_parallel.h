#pragma once
// Tensor parallelism for the CPU model: the runtime's ShardCollectives over a host Communicator,
// and the load of one rank's shard of a model.

#include <memory>

#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "runtime/core/allocator.h"
#include "runtime/model.h"
#include "runtime/weight_source.h"

namespace retro::parallel {

// The model's all-reduce and all-gather, over a host-memory communicator (MPI, or self for tp 1).
class CommunicatorCollectives final : public runtime::ShardCollectives {
 public:
  // `comm` must outlive this object and hold its buffers on the host.
  explicit CommunicatorCollectives(Communicator& comm);
  void all_reduce_sum(float* data, int64_t count) override;
  void all_gather(const float* send, int64_t count, float* recv) override;

 private:
  Communicator& comm_;
};

// This rank's shard of the model: reads only its slices of `full` (ShardedWeightSource) and joins
// the group through `collectives` (which must outlive the model; null when plan.shard is whole).
std::unique_ptr<runtime::Model> load_model_shard(const runtime::ModelConfig& config, const runtime::WeightSource& full,
                                                 Allocator& host, const ShardingPlan& plan,
                                                 runtime::ShardCollectives* collectives);

}  // namespace retro::parallel
