#include "runtime/core/cuda/swap.h"

#include <cstdint>

namespace retro::cuda {

namespace {

template <typename T>
__global__ void swap_kernel(T* a, T* b, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const T t = a[i];
    a[i] = b[i];
    b[i] = t;
  }
}

template <typename T>
cudaError_t launch(void* a, void* b, size_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const size_t blocks = (n + kThreads - 1) / kThreads;
  swap_kernel<T><<<unsigned(blocks < 4096 ? blocks : 4096), kThreads, 0, stream>>>(static_cast<T*>(a), static_cast<T*>(b), n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t swap_device_bytes(void* a, void* b, size_t n, cudaStream_t stream) {
  if (n == 0 || a == b) return cudaSuccess;
  // 16-byte words when both regions and the length allow, bytes otherwise.
  const auto aligned = [&](size_t w) {
    return reinterpret_cast<uintptr_t>(a) % w == 0 && reinterpret_cast<uintptr_t>(b) % w == 0 && n % w == 0;
  };
  if (aligned(16)) return launch<uint4>(a, b, n / 16, stream);
  if (aligned(4)) return launch<uint32_t>(a, b, n / 4, stream);
  return launch<uint8_t>(a, b, n, stream);
}

}  // namespace retro::cuda
