#pragma once
// Where a model's weights come from: a safetensors checkpoint, a GGUF file or a synthetic
// generator. Tensors are addressed by their Hugging Face names ("model.layers.0.self_attn.q_proj.weight")
// whatever the container, so the model code reads one naming scheme.
//
// A tensor-parallel rank reads only its part of a weight (read_block): a container that can address
// it (safetensors, synthetic) converts just those elements, so no rank holds a whole sharded tensor.

#include <string>
#include <utility>
#include <vector>

#include "runtime/core/tensor.h"

namespace retro::runtime {

struct WeightInfo {
  std::string name;
  DType dtype;  // as stored (a quantized GGUF tensor reports the dtype it dequantizes to)
  Shape shape;  // row-major, PyTorch order ([out_features, in_features] for linear layers)
};

// Part of a tensor seen as a matrix of shape[0] rows by the product of its other dimensions: rows
// [begin, end) (kRows), or elements [begin, end) of every row (kColumns).
struct WeightBlock {
  enum class Axis { kRows, kColumns };
  Axis axis = Axis::kRows;
  int64_t begin = 0;
  int64_t end = 0;

  // The block's shape in a tensor of shape `whole`: dimension 0 (rows) or the matrix's columns cut
  // to [begin, end) (a column block keeps only 2-D shapes). Throws retro::Error (kInvalidArgument)
  // naming `name` when the range is empty or outside the tensor.
  Shape shape_in(const Shape& whole, const std::string& name) const;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::vector<std::string> names() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  // Throws retro::Error (kInvalidInput) naming the tensor when it is missing.
  virtual WeightInfo info(const std::string& name) const = 0;
  // Writes the tensor, converted to dst's dtype (bf16, fp16 or fp32), into dst: a contiguous host
  // tensor whose shape must equal info(name).shape (else a clear error naming both shapes).
  virtual void read(const std::string& name, const Tensor& dst) const = 0;
  // Writes one block of the tensor into dst (contiguous host memory of block.shape_in(info(name).shape)),
  // converted as read() converts. This default reads the whole tensor and copies the block; sources
  // that can address a block override it to convert only the block's elements.
  virtual void read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const;

 protected:
  // Shared checks of read_block: dst is contiguous host memory of the block's shape and a floating
  // dtype. Returns the tensor's (rows, columns) as a matrix.
  std::pair<int64_t, int64_t> check_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const;
};

}  // namespace retro::runtime
