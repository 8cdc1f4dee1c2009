#pragma once
// Tensor: a non-owning, strided view of typed memory on one device; TensorBuffer owns the bytes.
//
// Views are cheap values passed by copy. Shapes and strides are in elements (not bytes), up to
// kMaxDims dimensions, int64. Kernels take raw pointers; Tensor is what crosses API boundaries.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "runtime/core/allocator.h"
#include "runtime/core/device.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace retro {

inline constexpr int kMaxDims = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  template <typename It>
  Shape(It begin, It end) {
    for (auto it = begin; it != end; ++it) push_back(static_cast<int64_t>(*it));
  }

  int size() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(i)]; }
  void push_back(int64_t d);
  int64_t numel() const;
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + ndim_; }
  bool operator==(const Shape& o) const;
  std::string str() const;  // "[2, 3, 4]"

 private:
  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

class Tensor {
 public:
  Tensor() = default;
  // Contiguous (row-major) view.
  Tensor(void* data, DType dtype, Shape shape, Device device = Device::cpu());
  Tensor(void* data, DType dtype, Shape shape, Shape strides, Device device);

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    RETRO_CHECK(dtype_of<T> == dtype_, "tensor holds {}, accessed as {}", dtype_name(dtype_),
                dtype_name(dtype_of<T>));
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  Device device() const { return device_; }
  int dim() const { return shape_.size(); }
  int64_t size(int d) const { return shape_[normalize_dim(d)]; }
  int64_t stride(int d) const { return strides_[normalize_dim(d)]; }
  int64_t numel() const { return shape_.numel(); }
  size_t element_size() const { return dtype_size(dtype_); }
  // Bytes spanned by the elements (numel * element size; only meaningful when contiguous).
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  bool defined() const { return data_ != nullptr || numel() == 0; }

  // Views sharing the same memory.
  Tensor reshape(Shape shape) const;              // contiguous tensors only; one dim may be -1
  Tensor slice(int d, int64_t begin, int64_t end) const;  // [begin, end) along d
  Tensor select(int d, int64_t index) const;      // drops dimension d
  Tensor transpose(int d0, int d1) const;

  // Element pointer for a full index (bounds-checked).
  void* element_ptr(std::initializer_list<int64_t> index) const;
  std::string str() const;  // "Tensor(bf16, [2, 3], cpu)"

 private:
  int normalize_dim(int d) const;

  void* data_ = nullptr;
  DType dtype_ = DType::kFP32;
  Shape shape_;
  Shape strides_;
  Device device_;
};

Shape contiguous_strides(const Shape& shape);

// Owns one allocation and exposes it as a contiguous Tensor. Move-only.
class TensorBuffer {
 public:
  TensorBuffer() = default;
  TensorBuffer(Allocator& allocator, DType dtype, Shape shape, MemoryPurpose purpose);

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }
  void* data() const { return view_.data(); }
  template <typename T>
  T* data_as() const { return view_.data_as<T>(); }
  const Buffer& buffer() const { return buffer_; }

 private:
  Buffer buffer_;
  Tensor view_;
};

}  // namespace retro
