#include "runtime/core/tensor.h"

#include <fmt/format.h>

namespace retro {

std::string Device::str() const { return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index); }

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) push_back(d);
}

void Shape::push_back(int64_t d) {
  RETRO_CHECK(ndim_ < kMaxDims, "shape has more than {} dimensions", kMaxDims);
  dims_[static_cast<size_t>(ndim_++)] = d;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim_ != o.ndim_) return false;
  for (int i = 0; i < ndim_; ++i)
    if (dims_[static_cast<size_t>(i)] != o.dims_[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const { return fmt::format("[{}]", fmt::join(begin(), end(), ", ")); }

Shape contiguous_strides(const Shape& shape) {
  Shape strides;
  for (int i = 0; i < shape.size(); ++i) strides.push_back(0);
  int64_t s = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

static void check_shape(const Shape& shape) {
  for (int64_t d : shape) RETRO_CHECK(d >= 0, "negative dimension in shape {}", shape.str());
}

Tensor::Tensor(void* data, DType dtype, Shape shape, Device device)
    : data_(data), dtype_(dtype), shape_(shape), strides_(contiguous_strides(shape)), device_(device) {
  check_shape(shape_);
}

Tensor::Tensor(void* data, DType dtype, Shape shape, Shape strides, Device device)
    : data_(data), dtype_(dtype), shape_(shape), strides_(strides), device_(device) {
  check_shape(shape_);
  RETRO_CHECK(shape.size() == strides.size(), "shape {} and strides {} differ in rank", shape.str(), strides.str());
}

int Tensor::normalize_dim(int d) const {
  int n = shape_.size();
  RETRO_CHECK(d >= -n && d < n, "dimension {} out of range for a {}-d tensor", d, n);
  return d < 0 ? d + n : d;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = shape_.size() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

Tensor Tensor::reshape(Shape shape) const {
  RETRO_CHECK(is_contiguous(), "reshape of a non-contiguous tensor {}", str());
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      RETRO_CHECK(infer < 0, "reshape to {}: more than one -1", shape.str());
      infer = i;
    } else {
      RETRO_CHECK(shape[i] >= 0, "reshape to {}: negative dimension", shape.str());
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    RETRO_CHECK(known != 0 && numel() % known == 0, "cannot reshape {} elements to {}", numel(), shape.str());
    shape[infer] = numel() / known;
  }
  RETRO_CHECK(shape.numel() == numel(), "cannot reshape {} ({} elements) to {}", shape_.str(), numel(), shape.str());
  return Tensor(data_, dtype_, shape, device_);
}

Tensor Tensor::slice(int d, int64_t begin, int64_t end) const {
  d = normalize_dim(d);
  RETRO_CHECK(0 <= begin && begin <= end && end <= shape_[d], "slice [{}, {}) out of range for dim {} of size {}",
              begin, end, d, shape_[d]);
  Shape shape = shape_;
  shape[d] = end - begin;
  char* p = static_cast<char*>(data_) + begin * strides_[d] * static_cast<int64_t>(element_size());
  return Tensor(p, dtype_, shape, strides_, device_);
}

Tensor Tensor::select(int d, int64_t index) const {
  d = normalize_dim(d);
  RETRO_CHECK(0 <= index && index < shape_[d], "index {} out of range for dim {} of size {}", index, d, shape_[d]);
  Shape shape, strides;
  for (int i = 0; i < shape_.size(); ++i) {
    if (i == d) continue;
    shape.push_back(shape_[i]);
    strides.push_back(strides_[i]);
  }
  char* p = static_cast<char*>(data_) + index * strides_[d] * static_cast<int64_t>(element_size());
  return Tensor(p, dtype_, shape, strides, device_);
}

Tensor Tensor::transpose(int d0, int d1) const {
  d0 = normalize_dim(d0);
  d1 = normalize_dim(d1);
  Shape shape = shape_, strides = strides_;
  std::swap(shape[d0], shape[d1]);
  std::swap(strides[d0], strides[d1]);
  return Tensor(data_, dtype_, shape, strides, device_);
}

void* Tensor::element_ptr(std::initializer_list<int64_t> index) const {
  RETRO_CHECK(static_cast<int>(index.size()) == dim(), "index of rank {} for a {}-d tensor", index.size(), dim());
  int64_t offset = 0;
  int i = 0;
  for (int64_t v : index) {
    RETRO_CHECK(0 <= v && v < shape_[i], "index {} out of range for dim {} of size {}", v, i, shape_[i]);
    offset += v * strides_[i];
    ++i;
  }
  return static_cast<char*>(data_) + offset * static_cast<int64_t>(element_size());
}

std::string Tensor::str() const {
  return fmt::format("Tensor({}, {}, {})", dtype_name(dtype_), shape_.str(), device_.str());
}

TensorBuffer::TensorBuffer(Allocator& allocator, DType dtype, Shape shape, MemoryPurpose purpose) {
  for (int64_t d : shape) RETRO_CHECK(d >= 0, "negative dimension in shape {}", shape.str());
  size_t bytes = dtype_size(dtype);
  for (int64_t d : shape) {
    RETRO_CHECK(!__builtin_mul_overflow(bytes, static_cast<size_t>(d), &bytes),
                "tensor of shape {} and dtype {} overflows the address space", shape.str(), dtype_name(dtype));
  }
  buffer_ = allocator.allocate(bytes, purpose);
  Device device = allocator.kind() == MemoryKind::kDevice ? allocator.device() : Device::cpu();
  view_ = Tensor(buffer_.data(), dtype, shape, device);
}

}  // namespace retro
