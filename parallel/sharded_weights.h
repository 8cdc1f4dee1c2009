#pragma once
// A WeightSource that presents one tensor-parallel rank's slices (sharding.h) of another source's
// tensors, under the same names: what a model shard loads, so each rank converts and keeps only
// its part of every sharded weight.

#include <memory>
#include <string>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::parallel {

class ShardedWeightSource final : public runtime::WeightSource {
 public:
  // Checks `full` against `config` first (validate_weights), so a bad checkpoint is reported with
  // the full shapes. `full` must outlive this source.
  ShardedWeightSource(const runtime::ModelConfig& config, const runtime::WeightSource& full, ShardingPlan plan);

  std::vector<std::string> names() const override { return full_.names(); }
  bool contains(const std::string& name) const override { return full_.contains(name); }
  runtime::WeightInfo info(const std::string& name) const override;  // the slice's shape, the stored dtype
  // Sliced tensors are read as one block of `full` (WeightSource::read_block), so a source that
  // addresses blocks converts only this rank's elements.
  void read(const std::string& name, const Tensor& dst) const override;

  const ShardingPlan& plan() const { return plan_; }

 private:
  const runtime::WeightSource& full_;
  ShardingPlan plan_;
};

}  // namespace retro::parallel
