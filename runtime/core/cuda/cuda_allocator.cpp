// Pinned-host and device allocators (CUDA builds only).

#include <cuda_runtime.h>

#include "runtime/core/allocator.h"
#include "runtime/core/cuda/cuda_check.h"

namespace retro {
namespace {

// Makes `device` current for the lifetime of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    RETRO_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) RETRO_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

void require_device(int index) {
  int count = 0;
  cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" status
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "no CUDA device available ({})",
                     st == cudaSuccess ? "0 devices" : cudaGetErrorString(st));
  }
  RETRO_CHECK(index >= 0 && index < count, "CUDA device {} does not exist ({} visible)", index, count);
}

class PinnedHostAllocator final : public Allocator {
 public:
  explicit PinnedHostAllocator(size_t capacity) : Allocator(MemoryKind::kPinnedHost, Device::cpu(), capacity) {}

 protected:
  void* raw_allocate(size_t bytes, size_t /*alignment: page aligned already*/) override {
    void* p = nullptr;
    cudaError_t st = cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
    if (st != cudaSuccess) {
      cudaGetLastError();
      RETRO_THROW_KIND(ErrorKind::kOutOfMemory, "cudaHostAlloc of {} failed: {}", format_bytes(bytes),
                       cudaGetErrorString(st));
    }
    return p;
  }
  void raw_free(void* ptr) noexcept override { cudaFreeHost(ptr); }
};

class DeviceAllocator final : public Allocator {
 public:
  DeviceAllocator(int device, size_t capacity) : Allocator(MemoryKind::kDevice, Device::cuda(device), capacity) {}

 protected:
  void* raw_allocate(size_t bytes, size_t /*alignment: cudaMalloc gives 256 B*/) override {
    DeviceGuard guard(device().index);
    void* p = nullptr;
    cudaError_t st = cudaMalloc(&p, bytes);
    if (st != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      RETRO_THROW_KIND(ErrorKind::kOutOfMemory, "cudaMalloc of {} on {} failed: {} ({} free of {})",
                       format_bytes(bytes), device().str(), cudaGetErrorString(st), format_bytes(free_b),
                       format_bytes(total_b));
    }
    return p;
  }
  void raw_free(void* ptr) noexcept override {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device().index);
    cudaFree(ptr);
    cudaSetDevice(previous);
  }
};

}  // namespace

std::unique_ptr<Allocator> make_pinned_host_allocator(size_t capacity_bytes) {
  require_device(0);
  return std::make_unique<PinnedHostAllocator>(capacity_bytes);
}

std::unique_ptr<Allocator> make_device_allocator(int device_index, size_t capacity_bytes) {
  require_device(device_index);
  return std::make_unique<DeviceAllocator>(device_index, capacity_bytes);
}

}  // namespace retro
