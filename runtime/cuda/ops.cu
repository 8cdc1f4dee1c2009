// Launches of runtime/cuda/ops.h (kernels in ops.cuh).

#include "runtime/cuda/ops.cuh"
#include "runtime/cuda/ops.h"

namespace retro::runtime::cuda {

namespace {
unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}
}  // namespace

cudaError_t rms_norm(const void* x, const void* w, void* y, int64_t n, int64_t dim, float eps, cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::rms_norm_kernel<<<static_cast<unsigned>(n), kernels::kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(y), dim,
      eps);
  return cudaGetLastError();
}

cudaError_t rope(void* x, const int64_t* positions, const float* inv_freq, float attention_scaling, int64_t n_tokens,
                 int n_heads, int head_dim, int rotary_dim, cudaStream_t stream) {
  if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || rotary_dim <= 0 || rotary_dim > head_dim || rotary_dim % 2)
    return cudaErrorInvalidValue;
  if (n_tokens == 0) return cudaSuccess;
  const int threads = rotary_dim / 2 < 128 ? ((rotary_dim / 2 + 31) / 32) * 32 : 128;
  kernels::rope_kernel<<<static_cast<unsigned>(n_tokens * n_heads), threads, 0, stream>>>(
      static_cast<__nv_bfloat16*>(x), positions, inv_freq, attention_scaling, n_heads, head_dim, rotary_dim);
  return cudaGetLastError();
}

cudaError_t silu_mul(const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::silu_mul_kernel<<<grid_for(n, 256), 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(gate),
                                                                static_cast<const __nv_bfloat16*>(up),
                                                                static_cast<__nv_bfloat16*>(out), n);
  return cudaGetLastError();
}

cudaError_t silu_mul_fused(const void* gate_up, void* out, int64_t n, int64_t f, cudaStream_t stream) {
  if (n < 0 || f <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::silu_mul_fused_kernel<<<grid_for(n * f, 256), 256, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(gate_up), static_cast<__nv_bfloat16*>(out), n, f);
  return cudaGetLastError();
}

cudaError_t qkv_split_rope(const void* qkv, const void* bias, void* q, void* k, void* v, const int64_t* positions,
                           const float* inv_freq, float attention_scaling, int64_t n, int nq, int nkv, int head_dim,
                           int rotary_dim, cudaStream_t stream) {
  if (n < 0 || nq <= 0 || nkv <= 0 || head_dim <= 0 || rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t blocks = n * (nq + 2 * nkv);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const int threads = head_dim / 2 < 32 ? 32 : (head_dim / 2 > 128 ? 128 : head_dim / 2);
  kernels::qkv_split_rope_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(qkv), static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(q),
      static_cast<__nv_bfloat16*>(k), static_cast<__nv_bfloat16*>(v), positions, inv_freq, attention_scaling, nq, nkv,
      head_dim, rotary_dim);
  return cudaGetLastError();
}

cudaError_t add_bias(void* y, const void* bias, int64_t n, int64_t dim, cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::add_bias_kernel<<<grid_for(n * dim, 256), 256, 0, stream>>>(
      static_cast<__nv_bfloat16*>(y), static_cast<const __nv_bfloat16*>(bias), n, dim);
  return cudaGetLastError();
}

cudaError_t append_kv(const void* k_new, const void* v_new, void* k_cache, void* v_cache, const int64_t* positions,
                      int64_t n, int64_t row_elems, int64_t slot_stride, cudaStream_t stream) {
  if (n < 0 || row_elems <= 0 || row_elems % 8 != 0 || slot_stride % 8 != 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::append_kv_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(
      static_cast<const uint4*>(k_new), static_cast<const uint4*>(v_new), static_cast<uint4*>(k_cache),
      static_cast<uint4*>(v_cache), positions, row_elems / 8, slot_stride / 8);
  return cudaGetLastError();
}

cudaError_t embedding(const void* table, const int32_t* ids, void* out, int64_t n, int64_t hidden, int64_t vocab,
                      int32_t* bad_id, cudaStream_t stream) {
  if (n < 0 || hidden <= 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  kernels::embedding_kernel<<<static_cast<unsigned>(n), 256, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(table), ids, static_cast<__nv_bfloat16*>(out), hidden, vocab, bad_id);
  return cudaGetLastError();
}

cudaError_t argmax_rows(const float* logits, int32_t* out, int64_t rows, int64_t vocab, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  kernels::argmax_kernel<<<static_cast<unsigned>(rows), kernels::kThreads, 0, stream>>>(logits, out, vocab);
  return cudaGetLastError();
}

}  // namespace retro::runtime::cuda
