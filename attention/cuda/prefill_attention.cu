// Launch of causal prefill attention (kernel in prefill_attention.cuh); checks in prefill_attention.cpp.

#include "attention/cuda/prefill_attention.cuh"
#include "attention/cuda/prefill_attention.h"

namespace retro::attention::cuda {

namespace {
template <int kHeadDim>
cudaError_t launch(const PrefillAttentionParams& p, cudaStream_t stream) {
  using namespace kernels;
  const int smem = kBlockM * kHeadDim * 2 + 4 * kBlockN * kHeadDim * 2;  // Q + two stages of K and V
  auto kernel = prefill_attention_kernel<kHeadDim>;
  cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (st != cudaSuccess) return st;
  dim3 grid(static_cast<unsigned>((p.n_q + kBlockM - 1) / kBlockM), static_cast<unsigned>(p.num_q_heads));
  kernel<<<grid, kPrefillWarps * 32, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), p.q_stride_token, static_cast<const __nv_bfloat16*>(p.k),
      static_cast<const __nv_bfloat16*>(p.v), p.kv_stride_token, p.kv_stride_head, static_cast<__nv_bfloat16*>(p.out),
      p.lse, p.n_q, p.n_kv, p.num_q_heads, p.num_q_heads / p.num_kv_heads, p.sm_scale * 1.4426950408889634f);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  if (p.n_q == 0) return cudaSuccess;
  return p.head_dim == 128 ? launch<128>(p, stream) : launch<64>(p, stream);
}

}  // namespace retro::attention::cuda
