#include "parallel/tensor_parallel.h"

#include "parallel/sharded_weights.h"
#include "runtime/core/error.h"

namespace retro::parallel {

CommunicatorCollectives::CommunicatorCollectives(Communicator& comm) : comm_(comm) {
  RETRO_CHECK(comm.device().is_cpu(), "the CPU model's collectives need a host communicator, got {} on {}",
              comm.backend(), comm.device().str());
}

void CommunicatorCollectives::all_reduce_sum(float* data, int64_t count) {
  comm_.all_reduce_sum(Tensor(data, DType::kFP32, {count}));
}

void CommunicatorCollectives::all_gather(const float* send, int64_t count, float* recv) {
  // The communicator only reads send; Tensor views are non-const by design.
  comm_.all_gather(Tensor(const_cast<float*>(send), DType::kFP32, {count}),
                   Tensor(recv, DType::kFP32, {count * comm_.size()}));
}

std::unique_ptr<runtime::Model> load_model_shard(const runtime::ModelConfig& config, const runtime::WeightSource& full,
                                                 Allocator& host, const ShardingPlan& plan,
                                                 runtime::ShardCollectives* collectives) {
  if (plan.shard.is_whole()) return std::make_unique<runtime::Model>(config, full, host);
  ShardedWeightSource sliced(config, full, plan);
  return std::make_unique<runtime::Model>(config, sliced, host, plan.shard, collectives);
}

}  // namespace retro::parallel
