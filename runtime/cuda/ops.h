#pragma once
// The non-attention ops of a Llama-family layer on the GPU: bf16 activations and weights, fp32
// arithmetic. Each is the twin of runtime/ops.h (or RopeTable::apply / argmax) and is tested against
// it. Launchers return the launch status (cudaErrorInvalidValue for a shape they do not take); they
// never synchronise, so a decode step made of them can be captured in a CUDA graph.

#include <cuda_runtime.h>

#include <cstdint>

namespace retro::runtime::cuda {

// y[n, dim] = x / sqrt(mean(x^2) + eps) * w. x, y: [n, dim] bf16 (may alias); w: [dim] bf16.
cudaError_t rms_norm(const void* x, const void* w, void* y, int64_t n, int64_t dim, float eps, cudaStream_t stream);

// Rotate-half RoPE in place on the first rotary_dim values of every head row.
//   x          [n_tokens, n_heads, head_dim] bf16, rows head_dim apart
//   positions  [n_tokens] int64 (device)
//   inv_freq   [rotary_dim / 2] fp32 (device), from RopeTable
// Angles are fp32 products position * inv_freq (as the CPU twin); cos and sin are multiplied by
// attention_scaling (yarn).
cudaError_t rope(void* x, const int64_t* positions, const float* inv_freq, float attention_scaling, int64_t n_tokens,
                 int n_heads, int head_dim, int rotary_dim, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i] for n values (SwiGLU); all bf16, out may alias gate.
cudaError_t silu_mul(const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream);

// The same over fused gate/up projection rows: gate_up [n, 2 * f] holds a row's gate in its first f
// values and its up in the last f; out [n, f] (must not alias gate_up).
cudaError_t silu_mul_fused(const void* gate_up, void* out, int64_t n, int64_t f, cudaStream_t stream);

// Splits fused QKV projection rows into Q, K and V, as add_bias then rope() on the parts would:
//   qkv   [n, nq + 2 * nkv, head_dim] bf16: a token's Q heads, then its K heads, then its V heads
//   bias  [(nq + 2 * nkv) * head_dim] bf16 or null; each value becomes bf16(qkv + bias) first
//   q     [n, nq, head_dim], k and v [n, nkv, head_dim] bf16, Q and K rotated (rotate-half on the
//         first rotary_dim values, angles as rope())
cudaError_t qkv_split_rope(const void* qkv, const void* bias, void* q, void* k, void* v, const int64_t* positions,
                           const float* inv_freq, float attention_scaling, int64_t n, int nq, int nkv, int head_dim,
                           int rotary_dim, cudaStream_t stream);

// y[n, dim] += bias[dim] (bf16).
cudaError_t add_bias(void* y, const void* bias, int64_t n, int64_t dim, cudaStream_t stream);

// Appends the new K and V rows of n sequences ([n, row_elems] bf16 each): row i goes to sequence i's
// cache (slot_stride elements apart) at row positions[i] (device), so a captured decode step needs no
// host-side pointer arithmetic.
cudaError_t append_kv(const void* k_new, const void* v_new, void* k_cache, void* v_cache, const int64_t* positions,
                      int64_t n, int64_t row_elems, int64_t slot_stride, cudaStream_t stream);

// out[t, :] = table[ids[t], :]. table [vocab, hidden] bf16, ids [n] int32 (device), out [n, hidden]
// bf16. An id outside [0, vocab) gives a zero row and sets *bad_id (device, may be null) to 1.
cudaError_t embedding(const void* table, const int32_t* ids, void* out, int64_t n, int64_t hidden, int64_t vocab,
                      int32_t* bad_id, cudaStream_t stream);

// out[r] = index of the largest of logits[r, :] (lowest index on ties; NaN never wins).
// logits [rows, vocab] fp32, out [rows] int32 (device).
cudaError_t argmax_rows(const float* logits, int32_t* out, int64_t rows, int64_t vocab, cudaStream_t stream);

}  // namespace retro::runtime::cuda
