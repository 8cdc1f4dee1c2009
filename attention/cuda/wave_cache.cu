// Kernel launches of the GPU cluster cache (kernels in wave_cache.cuh). Planning and argument
// checks live in wave_cache.cpp: CUDA translation units stay free of fmt.

#include "attention/cuda/wave_cache.cuh"
#include "attention/cuda/wave_cache.h"

namespace retro::attention::cuda {

cudaError_t launch_wave_cache_invalidate(const WaveCacheView& cache, const int64_t* uids, int count,
                                         cudaStream_t stream) {
  if (count <= 0 || cache.num_sets <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t slots = cache.num_sets * cache.ways;
  const int64_t blocks = (slots + kThreads - 1) / kThreads;
  kernels::cache_invalidate_kernel<kThreads>
      <<<static_cast<unsigned>(blocks < 1024 ? blocks : 1024), kThreads, 0, stream>>>(cache, uids, count);
  return cudaGetLastError();
}

}  // namespace retro::attention::cuda
