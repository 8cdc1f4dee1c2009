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

namespace {

constexpr int kArgmaxThreads = 256;

// a beats b: larger, or equal and earlier; a NaN (index -1) beats everything so it is never lost.
__device__ __forceinline__ bool beats(const ArgmaxCandidate& a, const ArgmaxCandidate& b) {
  if (a.index < 0 || b.index < 0) return a.index < 0 && b.index >= 0;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_rows_kernel(const float* __restrict__ logits, int64_t cols, int64_t ld, int64_t index_offset,
                       ArgmaxCandidate* __restrict__ out) {
  __shared__ ArgmaxCandidate best[kArgmaxThreads];
  const float* row = logits + int64_t(blockIdx.x) * ld;
  ArgmaxCandidate mine{-INFINITY, int32_t(INT32_MAX)};
  bool any = false;
  for (int64_t c = threadIdx.x; c < cols; c += kArgmaxThreads) {
    const float x = row[c];
    const ArgmaxCandidate cand{x, isnan(x) ? -1 : int32_t(c + index_offset)};
    if (!any || beats(cand, mine)) mine = cand;
    any = true;
  }
  best[threadIdx.x] = mine;
  __syncthreads();
  for (int stride = kArgmaxThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride && beats(best[threadIdx.x + stride], best[threadIdx.x]))
      best[threadIdx.x] = best[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best[0];
}

__global__ void pick_best_kernel(const ArgmaxCandidate* __restrict__ candidates, int parts, int64_t rows,
                                 int32_t* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  ArgmaxCandidate best = candidates[r];
  for (int p = 1; p < parts; ++p)
    if (beats(candidates[int64_t(p) * rows + r], best)) best = candidates[int64_t(p) * rows + r];
  out[r] = best.index;
}

}  // namespace

cudaError_t argmax_rows(const float* logits, int64_t rows, int64_t cols, int64_t ld, int64_t index_offset,
                        ArgmaxCandidate* out, cudaStream_t stream) {
  if (rows < 0 || cols <= 0 || ld < cols || index_offset < 0 || cols + index_offset > INT32_MAX)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  argmax_rows_kernel<<<static_cast<unsigned>(rows), kArgmaxThreads, 0, stream>>>(logits, cols, ld, index_offset, out);
  return cudaGetLastError();
}

cudaError_t pick_best_candidates(const ArgmaxCandidate* candidates, int parts, int64_t rows, int32_t* out,
                                 cudaStream_t stream) {
  if (parts <= 0 || rows < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  pick_best_kernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0, stream>>>(candidates, parts,
                                                                                                   rows, out);
  return cudaGetLastError();
}

}  // namespace retro::runtime::cuda
