// Launch of GPU sampling (kernel in sampling.cuh).

#include "runtime/cuda/sampling.cuh"
#include "runtime/cuda/sampling.h"

namespace retro::runtime::cuda {

cudaError_t sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingRows& params, int32_t* out,
                        cudaStream_t stream) {
  if (rows < 0 || vocab <= 0 || vocab > INT32_MAX) return cudaErrorInvalidValue;
  if (!params.temperature || !params.top_k || !params.top_p || !params.uniform) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  kernels::sample_rows_kernel<<<static_cast<unsigned>(rows), kernels::kSampleThreads, 0, stream>>>(
      logits, vocab, params.temperature, params.top_k, params.top_p, params.uniform, out);
  return cudaGetLastError();
}

}  // namespace retro::runtime::cuda
