#pragma once
// Device-side fills for tests and benchmarks: reproducible pseudo-random data without a host copy.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace retro::cuda {

// dst[i] = scale * N(0, 1) sample from a counter-based hash of (seed, i), as bf16. Deterministic.
cudaError_t fill_normal_bf16(void* dst, size_t n, uint64_t seed, float scale, cudaStream_t stream);

}  // namespace retro::cuda
