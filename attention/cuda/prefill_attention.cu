// Launch of causal prefill attention (kernel in prefill_attention.cuh); checks in prefill_attention.cpp.

#include "attention/cuda/prefill_attention.cuh"
#include "attention/cuda/prefill_attention.h"

namespace retro::attention::cuda {

namespace {
template <int kHeadDim, int kMTiles, int kBlockN>
cudaError_t launch(const PrefillAttentionParams& p, cudaStream_t stream) {
  using namespace kernels;
  using Tile = PrefillTile<kHeadDim, kMTiles, kBlockN>;
  constexpr int kBlockM = Tile::kBlockM;
  const int smem = Tile::kSmemBytes;
  auto kernel = prefill_attention_kernel<kHeadDim, kMTiles, kBlockN>;
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
  // Two m16 tiles per warp halve the shared-memory reads per MMA; 32-token K/V tiles keep the
  // doubled accumulators inside the register file.
  // (One m-tile per warp with 64-token tiles measured 0.86x of this at head_dim 128.)
  return p.head_dim == 128 ? launch<128, 2, 32>(p, stream) : launch<64, 2, 64>(p, stream);
}

}  // namespace retro::attention::cuda
