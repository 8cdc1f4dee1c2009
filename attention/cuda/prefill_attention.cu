// Launch of causal prefill attention (kernel in prefill_attention.cuh); checks in prefill_attention.cpp.

#include <cuda.h>

#include <cstdint>

#include "attention/cuda/prefill_attention.cuh"
#include "attention/cuda/prefill_attention.h"
#include "attention/cuda/prefill_attention_wgmma.cuh"
#include "attention/cuda/prefill_attention_ws.cuh"


namespace retro::attention::cuda {

namespace {
template <int kHeadDim, int kMTiles, int kBlockN, bool kQInRegs>
cudaError_t launch(const PrefillAttentionParams& p, cudaStream_t stream) {
  using namespace kernels;
  using Tile = PrefillTile<kHeadDim, kMTiles, kBlockN>;
  constexpr int kBlockM = Tile::kBlockM;
  const int smem = Tile::kSmemBytes;
  auto kernel = prefill_attention_kernel<kHeadDim, kMTiles, kBlockN, kQInRegs>;
  cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (st != cudaSuccess) return st;
  dim3 grid(static_cast<unsigned>((p.n_q + kBlockM - 1) / kBlockM), static_cast<unsigned>(p.num_q_heads));
  kernel<<<grid, kPrefillWarps * 32, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), p.q_stride_token, static_cast<const __nv_bfloat16*>(p.k),
      static_cast<const __nv_bfloat16*>(p.v), p.kv_stride_token, p.kv_stride_head, static_cast<__nv_bfloat16*>(p.out),
      p.lse, p.n_q, p.n_kv, p.num_q_heads, p.num_q_heads / p.num_kv_heads, p.sm_scale * 1.4426950408889634f);
  return cudaGetLastError();
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's tensor-map encoder, reached through the runtime (no link against libcuda); null when
// the driver has none.
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return EncodeTiled{nullptr};
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// K or V of every KV head as a 3-D bf16 tensor for TMA: 64 columns (128 bytes, the swizzle span) x
// 1 head x kBlockN tokens a box, the smaller of the head and token strides second (*heads_inner) so
// the strides grow with the dimension, as the encoder requires. False where TMA cannot describe it
// (no encoder, a base or stride not a multiple of 16 bytes).
bool kv_tensor_map(CUtensorMap* map, const void* base, const PrefillAttentionParams& p, int block_n,
                   int* heads_inner) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0 || p.kv_stride_token % 8 != 0 ||
      p.kv_stride_head % 8 != 0)
    return false;
  *heads_inner = p.kv_stride_head <= p.kv_stride_token ? 1 : 0;
  const cuuint64_t heads = cuuint64_t(p.num_kv_heads), tokens = cuuint64_t(p.n_kv);
  const cuuint64_t head_bytes = cuuint64_t(p.kv_stride_head) * 2, token_bytes = cuuint64_t(p.kv_stride_token) * 2;
  const cuuint64_t dims[3] = {cuuint64_t(p.head_dim), *heads_inner ? heads : tokens, *heads_inner ? tokens : heads};
  const cuuint64_t strides[2] = {*heads_inner ? head_bytes : token_bytes, *heads_inner ? token_bytes : head_bytes};
  const cuuint32_t box[3] = {64, *heads_inner ? 1u : cuuint32_t(block_n), *heads_inner ? cuuint32_t(block_n) : 1u};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The tensor maps of K and V (kv_tensor_map), false where TMA cannot describe them.
bool kv_tensor_maps(const PrefillAttentionParams& p, int block_n, CUtensorMap* k, CUtensorMap* v, int* heads_inner) {
  return kv_tensor_map(k, p.k, p, block_n, heads_inner) && kv_tensor_map(v, p.v, p, block_n, heads_inner);
}

template <int kHeadDim, bool kPipelined, bool kTma>
cudaError_t launch_wgmma(const PrefillAttentionParams& p, cudaStream_t stream) {
  using namespace kernels;
  using Tile = WgmmaPrefillTile<kHeadDim>;
  auto kernel = prefill_attention_wgmma_kernel<kHeadDim, kPipelined, kTma>;
  const int smem = Tile::smem_bytes(kPipelined ? 3 : 2);
  cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (st != cudaSuccess) return st;
  CUtensorMap tmap_k{}, tmap_v{};
  int heads_inner = 0;
  if constexpr (kTma) {
    if (!kv_tensor_maps(p, Tile::kBlockN, &tmap_k, &tmap_v, &heads_inner)) return cudaErrorNotSupported;
  }
  dim3 grid(static_cast<unsigned>((p.n_q + Tile::kBlockM - 1) / Tile::kBlockM), static_cast<unsigned>(p.num_q_heads));
  kernel<<<grid, Tile::kThreads, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), p.q_stride_token, static_cast<const __nv_bfloat16*>(p.k),
      static_cast<const __nv_bfloat16*>(p.v), p.kv_stride_token, p.kv_stride_head, static_cast<__nv_bfloat16*>(p.out),
      p.lse, p.n_q, p.n_kv, p.num_q_heads, p.num_q_heads / p.num_kv_heads, p.sm_scale * 1.4426950408889634f, tmap_k,
      tmap_v, heads_inner);
  return cudaGetLastError();
}
template <int kHeadDim>
cudaError_t launch_ws(const PrefillAttentionParams& p, cudaStream_t stream) {
  using namespace kernels;
  using Tile = WsPrefillTile<kHeadDim>;
  auto kernel = prefill_attention_ws_kernel<kHeadDim>;
  cudaError_t st = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (st != cudaSuccess) return st;
  CUtensorMap tmap_k{}, tmap_v{};
  int heads_inner = 0;
  if (!kv_tensor_maps(p, Tile::kBlockN, &tmap_k, &tmap_v, &heads_inner)) return cudaErrorNotSupported;
  dim3 grid(static_cast<unsigned>((p.n_q + Tile::kBlockM - 1) / Tile::kBlockM), static_cast<unsigned>(p.num_q_heads));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), p.q_stride_token, static_cast<const __nv_bfloat16*>(p.k),
      static_cast<const __nv_bfloat16*>(p.v), p.kv_stride_head, static_cast<__nv_bfloat16*>(p.out), p.lse, p.n_q,
      p.n_kv, p.num_q_heads, p.num_q_heads / p.num_kv_heads, p.sm_scale * 1.4426950408889634f, tmap_k, tmap_v,
      heads_inner);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  if (p.n_q == 0) return cudaSuccess;
  const PrefillKernel kernel = resolve_prefill_kernel(p.kernel);
  if (kernel == PrefillKernel::kWgmmaWs) {
    const cudaError_t st = p.head_dim == 128 ? launch_ws<128>(p, stream) : launch_ws<64>(p, stream);
    // Auto falls back to the cp.async kernel where TMA cannot describe the K/V; an explicit ask fails.
    if (st != cudaErrorNotSupported || p.kernel != PrefillKernel::kAuto) return st;
    return p.head_dim == 128 ? launch_wgmma<128, true, false>(p, stream) : launch_wgmma<64, true, false>(p, stream);
  }
  if (kernel == PrefillKernel::kWgmmaTma)
    return p.head_dim == 128 ? launch_wgmma<128, true, true>(p, stream) : launch_wgmma<64, true, true>(p, stream);
  if (kernel == PrefillKernel::kWgmmaPipelined)
    return p.head_dim == 128 ? launch_wgmma<128, true, false>(p, stream) : launch_wgmma<64, true, false>(p, stream);
  if (kernel == PrefillKernel::kWgmma)
    return p.head_dim == 128 ? launch_wgmma<128, false, false>(p, stream) : launch_wgmma<64, false, false>(p, stream);
  // Two m16 tiles per warp halve the shared-memory reads per MMA. At head_dim 128 the Q fragments
  // are re-read from shared memory each k-step, which frees the registers for 64-token K/V tiles
  // (measured on H100 at 16K / 64K tokens: 275 / 295 TFLOP/s, against 231 / 251 with Q held in
  // registers and 32-token tiles, and 214 / 216 with one m-tile per warp). At head_dim 64 the Q
  // fragments fit in registers beside 64-token tiles.
  return p.head_dim == 128 ? launch<128, 2, 64, false>(p, stream) : launch<64, 2, 64, true>(p, stream);
}

}  // namespace retro::attention::cuda
