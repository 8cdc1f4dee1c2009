#include "parallel/sharded_weights.h"

#include <cstring>

#include "runtime/core/error.h"
#include "runtime/model_weights.h"

namespace retro::parallel {

using runtime::WeightInfo;

ShardedWeightSource::ShardedWeightSource(const runtime::ModelConfig& config, const runtime::WeightSource& full,
                                         ShardingPlan plan, Allocator& scratch)
    : full_(full), plan_(std::move(plan)), scratch_(scratch) {
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
  const WeightInfo whole = full_.info(name);
  const Shape local = slice.local_shape(whole.shape);
  RETRO_CHECK(dst.shape() == local, "tensor '{}': rank {}'s slice has shape {}, the destination {}", name,
              plan_.shard.rank, local.str(), dst.shape().str());
  RETRO_CHECK(dst.is_contiguous() && dst.device().is_cpu(), "tensor '{}': destination {} is not contiguous host memory",
              name, dst.str());
  // Read whole in the destination's dtype, so a slice holds exactly the values a whole read gives
  // (a source may round to the destination dtype, as synthetic weights do).
  TensorBuffer scratch(scratch_, dst.dtype(), whole.shape, MemoryPurpose::kWorkspace);
  full_.read(name, scratch.view());
  const auto* src = static_cast<const char*>(scratch.data());
  auto* out = static_cast<char*>(dst.data());
  const size_t size = dst.element_size();
  const int64_t rows = whole.shape[0], cols = whole.shape.size() > 1 ? whole.shape.numel() / rows : 1;
  if (slice.axis == WeightSlice::Axis::kRows) {
    // Rows [begin, end) are one contiguous run.
    std::memcpy(out, src + slice.begin * cols * size, static_cast<size_t>((slice.end - slice.begin) * cols) * size);
    return;
  }
  const size_t width = static_cast<size_t>(slice.end - slice.begin) * size;
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * width, src + (r * cols + slice.begin) * size, width);
}

}  // namespace retro::parallel
