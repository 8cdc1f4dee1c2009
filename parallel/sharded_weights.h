#pragma once
// A WeightSource that presents one tensor-parallel rank's slices (sharding.h) of another source's
// tensors, under the same names: what a model shard loads, so each rank converts and keeps only
// its part of every sharded weight.

#include <memory>
#include <string>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/core/allocator.h"
#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::parallel {

class ShardedWeightSource final : public runtime::WeightSource {
 public:
  // Checks `full` against `config` first (validate_weights), so a bad checkpoint is reported with
  // the full shapes. `full` and `scratch` must outlive this source.
  ShardedWeightSource(const runtime::ModelConfig& config, const runtime::WeightSource& full, ShardingPlan plan,
                      Allocator& scratch);

  std::vector<std::string> names() const override { return full_.names(); }
  bool contains(const std::string& name) const override { return full_.contains(name); }
  runtime::WeightInfo info(const std::string& name) const override;  // the slice's shape, the stored dtype
  // Sliced tensors are read whole from `full` into a scratch buffer of dst's dtype (one tensor at a
  // time: WeightSource has no partial read) and their slice copied into dst.
  void read(const std::string& name, const Tensor& dst) const override;

  const ShardingPlan& plan() const { return plan_; }

 private:
  const runtime::WeightSource& full_;
  ShardingPlan plan_;
  Allocator& scratch_;
};

}  // namespace retro::parallel
