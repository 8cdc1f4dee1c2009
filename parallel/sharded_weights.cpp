#include "parallel/sharded_weights.h"

#include "runtime/core/error.h"
#include "runtime/model_weights.h"

namespace retro::parallel {

using runtime::WeightInfo;

ShardedWeightSource::ShardedWeightSource(const runtime::ModelConfig& config, const runtime::WeightSource& full,
                                         ShardingPlan plan)
    : full_(full), plan_(std::move(plan)) {
  runtime::validate_weights(config, full_);
}

WeightInfo ShardedWeightSource::info(const std::string& name) const {
  WeightInfo info = full_.info(name);
  info.shape = plan_.slice(name).local_shape(info.shape);
  return info;
}

void ShardedWeightSource::read(const std::string& name, const Tensor& dst) const {
  const WeightSlice slice = plan_.slice(name);
  if (slice.axis == WeightSlice::Axis::kWhole) {
    full_.read(name, dst);
    return;
  }
  const Shape local = slice.local_shape(full_.info(name).shape);
  RETRO_CHECK(dst.shape() == local, "tensor '{}': rank {}'s slice has shape {}, the destination {}", name,
              plan_.shard.rank, local.str(), dst.shape().str());
  using Axis = runtime::WeightBlock::Axis;
  full_.read_block(name, {slice.axis == WeightSlice::Axis::kRows ? Axis::kRows : Axis::kColumns, slice.begin, slice.end},
                   dst);
}

}  // namespace retro::parallel
