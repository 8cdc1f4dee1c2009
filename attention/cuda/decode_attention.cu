// Kernel launches of split-KV GQA decode attention (kernels in decode_attention.cuh). Argument
// checks and planning live in decode_attention.cpp: CUDA translation units stay free of fmt.

#include "attention/cuda/decode_attention.cuh"
#include "attention/cuda/decode_attention.h"
#include "attention/cuda/impl/group_dispatch.h"
#include "runtime/core/env.h"

namespace retro::attention::cuda {

namespace {

// The cp.async kernel's ring: kDecodeStages blocks of kDecodeUnroll steps, K and V, 16 bytes a lane.
constexpr int kAsyncSmemBytes = kernels::kWarps * kDecodeStages * kDecodeUnroll * 2 * 32 * 16;

// The kernel of this shape and variant, its dynamic shared memory allowed (once per instantiation).
template <int kHeadDim, int kGroup, bool kAsync>
auto decode_kernel() {
  auto kernel = kernels::decode_attention_kernel<kHeadDim, kGroup, kAsync>;
  if constexpr (kAsync) {
    static const cudaError_t allowed =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kAsyncSmemBytes);
    (void)allowed;  // a failure shows at the launch
  }
  return kernel;
}

template <int kHeadDim, int kGroup, bool kAsync>
cudaError_t launch(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, void* workspace,
                   cudaStream_t stream) {
  float* out_partial = nullptr;
  float* lse_partial = nullptr;
  if (plan.num_splits > 1) {
    out_partial = static_cast<float*>(workspace);
    lse_partial = out_partial + int64_t(p.batch) * p.num_q_heads * plan.num_splits * kHeadDim;
  }
  const float scale_log2 = p.sm_scale * 1.4426950408889634f;
  dim3 grid(plan.num_splits, p.num_kv_heads, p.batch);
  decode_kernel<kHeadDim, kGroup, kAsync>()<<<grid, kernels::kWarps * 32, kAsync ? kAsyncSmemBytes : 0, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), p.q_stride_batch, static_cast<const __nv_bfloat16*>(p.k),
      static_cast<const __nv_bfloat16*>(p.v), p.kv_stride_batch, p.kv_stride_head, p.kv_stride_token, p.seq_lens,
      p.num_q_heads, plan.tokens_per_split, scale_log2, static_cast<__nv_bfloat16*>(p.out), p.lse, out_partial,
      lse_partial);
  cudaError_t st = cudaGetLastError();
  if (st != cudaSuccess || plan.num_splits == 1 || p.keep_partials) return st;
  kernels::merge_splits_kernel<kHeadDim><<<p.batch * p.num_q_heads, kHeadDim, 0, stream>>>(
      out_partial, lse_partial, plan.num_splits, static_cast<__nv_bfloat16*>(p.out), p.lse);
  return cudaGetLastError();
}

template <int kHeadDim, int kGroup, bool kAsync>
int ctas_per_sm() {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<kHeadDim, kGroup, kAsync>(),
                                                    kernels::kWarps * 32, kAsync ? kAsyncSmemBytes : 0) !=
      cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return n > 0 ? n : 1;
}

template <int kHeadDim>
int ctas_per_sm_for_group(int group) {
  return impl::with_group_size(group, 1, [](auto g) {
    return decode_attention_async() ? ctas_per_sm<kHeadDim, decltype(g)::value, true>()
                                    : ctas_per_sm<kHeadDim, decltype(g)::value, false>();
  });
}

template <int kHeadDim>
cudaError_t dispatch_group(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, void* ws,
                           cudaStream_t s) {
  return impl::with_group_size(p.num_q_heads / p.num_kv_heads, cudaErrorInvalidValue,
                               [&](auto g) {
                                 return resolve_decode_kernel(p.kernel) == DecodeKernel::kAsync
                                            ? launch<kHeadDim, decltype(g)::value, true>(p, plan, ws, s)
                                            : launch<kHeadDim, decltype(g)::value, false>(p, plan, ws, s);
                               });
}

}  // namespace

int decode_attention_ctas_per_sm(int head_dim, int group_size) {
  return head_dim == 128 ? ctas_per_sm_for_group<128>(group_size) : ctas_per_sm_for_group<64>(group_size);
}

bool decode_attention_async() {
  // Registers by default: on H100 (2026-11-28) neither kernel was ahead at every shape, each within
  // about 2% of the other and of SDPA, and the register kernel won at batch 1 to 4 of 32K and 128K.
  static const bool async = env_is("RETRO_DECODE_KERNEL", "async");
  return async;
}

DecodeKernel resolve_decode_kernel(DecodeKernel kernel) {
  if (kernel != DecodeKernel::kAuto) return kernel;
  return decode_attention_async() ? DecodeKernel::kAsync : DecodeKernel::kRegisters;
}

bool decode_attention_group_supported(int group_size) {
  return (group_size >= 1 && group_size <= 8 && group_size != 3);
}

cudaError_t launch_decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, void* workspace,
                                    cudaStream_t stream) {
  if (p.head_dim == 128) return dispatch_group<128>(p, plan, workspace, stream);
  return dispatch_group<64>(p, plan, workspace, stream);
}

}  // namespace retro::attention::cuda
