#include "runtime/weight_source.h"

#include <cstring>
#include <vector>

#include "runtime/core/error.h"

namespace retro::runtime {

Shape WeightBlock::shape_in(const Shape& whole, const std::string& name) const {
  RETRO_CHECK(whole.size() >= 1, "tensor '{}' is a scalar and has no blocks", name);
  const int64_t rows = whole[0], columns = rows > 0 ? whole.numel() / rows : 0;
  const int64_t limit = axis == Axis::kRows ? rows : columns;
  RETRO_CHECK(begin >= 0 && begin < end && end <= limit, "{} [{}, {}) of tensor '{}' {} is empty or outside [0, {})",
              axis == Axis::kRows ? "rows" : "columns", begin, end, name, whole.str(), limit);
  if (axis == Axis::kRows) {
    Shape out = whole;
    out[0] = end - begin;
    return out;
  }
  RETRO_CHECK(whole.size() == 2, "a column block of tensor '{}' needs a 2-D tensor, it has shape {}", name,
              whole.str());
  return Shape{rows, end - begin};
}

std::pair<int64_t, int64_t> WeightSource::check_block(const std::string& name, const WeightBlock& block,
                                                      const Tensor& dst) const {
  const Shape whole = info(name).shape;
  const Shape want = block.shape_in(whole, name);
  RETRO_CHECK(dst.device().is_cpu() && dst.is_contiguous(), "tensor '{}': a block must be read into contiguous host memory, got {}",
              name, dst.str());
  RETRO_CHECK(dst.shape() == want, "tensor '{}': the block has shape {}, the destination {}", name, want.str(),
              dst.shape().str());
  RETRO_CHECK(is_floating(dst.dtype()), "tensor '{}' cannot be read as {}", name, dtype_name(dst.dtype()));
  return {whole[0], whole.numel() / whole[0]};
}

void WeightSource::read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const {
  const auto [rows, columns] = check_block(name, block, dst);
  const size_t elem = dst.element_size();
  std::vector<uint8_t> whole(static_cast<size_t>(rows * columns) * elem);
  read(name, Tensor(whole.data(), dst.dtype(), info(name).shape));
  auto* out = static_cast<uint8_t*>(dst.data());
  if (block.axis == WeightBlock::Axis::kRows) {
    std::memcpy(out, whole.data() + block.begin * columns * elem, static_cast<size_t>((block.end - block.begin) * columns) * elem);
    return;
  }
  const size_t width = static_cast<size_t>(block.end - block.begin) * elem;
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * width, whole.data() + (r * columns + block.begin) * elem, width);
}

}  // namespace retro::runtime
