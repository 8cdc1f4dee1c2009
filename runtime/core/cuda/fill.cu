#include "runtime/core/cuda/fill.h"

#include <cuda_bf16.h>

namespace retro::cuda {

namespace {

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_normal_bf16_kernel(__nv_bfloat16* dst, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t h = splitmix64(seed ^ splitmix64(i));
    // Box-Muller on two 24-bit uniforms in (0, 1].
    float u1 = (float((h >> 40) & 0xFFFFFF) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = float((h >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
    float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    dst[i] = __float2bfloat16(z * scale);
  }
}

}  // namespace

cudaError_t fill_normal_bf16(void* dst, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const size_t blocks = (n + threads - 1) / threads;
  fill_normal_bf16_kernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), threads, 0, stream>>>(
      static_cast<__nv_bfloat16*>(dst), n, seed, scale);
  return cudaGetLastError();
}

}  // namespace retro::cuda
