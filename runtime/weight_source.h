#pragma once
// Where a model's weights come from: a safetensors checkpoint, a GGUF file or a synthetic
// generator. Tensors are addressed by their Hugging Face names ("model.layers.0.self_attn.q_proj.weight")
// whatever the container, so the model code reads one naming scheme.

#include <string>
#include <vector>

#include "runtime/core/tensor.h"

namespace retro::runtime {

struct WeightInfo {
  std::string name;
  DType dtype;  // as stored (a quantized GGUF tensor reports the dtype it dequantizes to)
  Shape shape;  // row-major, PyTorch order ([out_features, in_features] for linear layers)
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
};

}  // namespace retro::runtime
