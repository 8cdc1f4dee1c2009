#pragma once
// The non-attention ops of a Llama-family layer on the CPU, fp32: the reference twins of the CUDA
// ops in runtime/cuda/ops.h, and the CPU backend's implementation.

#include <cstdint>

namespace retro::runtime::ops {

// y[n, out] = x[n, in] @ w[out, in]^T (+ bias[out]); beta = 1 accumulates into y (residual add).
void linear(const float* x, int64_t n, int64_t in, const float* w, int64_t out, const float* bias, float* y,
            float beta = 0.0f);
// y[n, dim] += bias[dim]; no-op when bias is null.
void add_bias(float* y, int64_t n, int64_t dim, const float* bias);
// y = x / sqrt(mean(x^2) + eps) * w per row of dim (mean square accumulated in double). y may alias x.
void rms_norm(const float* x, int64_t n, int64_t dim, const float* w, float eps, float* y);
// gate[i] = silu(gate[i]) * up[i] for n values (SwiGLU).
void silu_mul(float* gate, const float* up, int64_t n);
// out[t, :] = table[ids[t], :]; ids are checked against vocab.
void embedding(const float* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n, float* out);

}  // namespace retro::runtime::ops
