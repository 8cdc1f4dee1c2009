#pragma once
// Error checks for CUDA runtime, cuBLAS and NCCL calls: failures become retro::Error (kCuda).

#include <cuda_runtime.h>

#include "runtime/core/error.h"

#define RETRO_CUDA_CHECK(expr)                                                                           \
  do {                                                                                                   \
    cudaError_t retro_cuda_status_ = (expr);                                                             \
    if (retro_cuda_status_ != cudaSuccess) [[unlikely]] {                                                \
      ::retro::detail::throw_error(::retro::ErrorKind::kCuda, __FILE__, __LINE__,                        \
                                   ::fmt::format("{} failed: {} ({})", #expr,                            \
                                                 cudaGetErrorString(retro_cuda_status_),                 \
                                                 cudaGetErrorName(retro_cuda_status_)));                 \
    }                                                                                                    \
  } while (0)

// After a kernel launch: catches launch-configuration errors without synchronising.
#define RETRO_CUDA_CHECK_LAUNCH() RETRO_CUDA_CHECK(cudaGetLastError())
