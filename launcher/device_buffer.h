#pragma once
// Device memory owned by a GPU benchmark for its scope (CUDA builds only).

#include <cuda_runtime.h>

#include <cstddef>

#include "runtime/core/cuda/cuda_check.h"

namespace retro::launcher {

struct DeviceBuffer {
  void* ptr = nullptr;  // null for zero bytes
  explicit DeviceBuffer(size_t bytes) {
    if (bytes) RETRO_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace retro::launcher
