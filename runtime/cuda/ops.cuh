#pragma once
// Kernels of runtime/cuda/ops.h. Framework-free: raw pointers, fp32 arithmetic on bf16 data.

#include <cuda_bf16.h>

#include <cstdint>

namespace retro::runtime::cuda::kernels {

constexpr int kThreads = 256;

// Sum over the block; every thread gets the result. scratch: [kThreads / 32] floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// One block per row.
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                    __nv_bfloat16* y, int64_t dim, float eps) {
  __shared__ float scratch[kThreads / 32];
  const __nv_bfloat16* xr = x + blockIdx.x * dim;
  __nv_bfloat16* yr = y + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float v = __bfloat162float(xr[i]);
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads)
    yr[i] = __float2bfloat16(__bfloat162float(xr[i]) * inv * __bfloat162float(w[i]));
}

// Rotate-half RoPE of one pair (x[i], x[i + rotary_dim / 2]) at `angle` = position * inv_freq[i]
// (fp32, as the CPU twin), cos and sin scaled by attention_scaling; bf16 results.
__device__ __forceinline__ void rotate_pair(float a, float b, float angle, float attention_scaling, __nv_bfloat16& lo,
                                            __nv_bfloat16& hi) {
  float s, c;
  sincosf(angle, &s, &c);
  c *= attention_scaling;
  s *= attention_scaling;
  lo = __float2bfloat16(a * c - b * s);
  hi = __float2bfloat16(b * c + a * s);
}

// silu(g) * u in fp32.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

// One block per (token, head) row; threads walk the rotation pairs (i, i + rotary_dim / 2).
__global__ void rope_kernel(__nv_bfloat16* x, const int64_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            float attention_scaling, int n_heads, int head_dim, int rotary_dim) {
  const int64_t row = blockIdx.x;  // token * n_heads + head
  const int64_t token = row / n_heads;
  __nv_bfloat16* xr = x + row * head_dim;
  const int half = rotary_dim / 2;
  const float pos = float(positions[token]);
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rotate_pair(__bfloat162float(xr[i]), __bfloat162float(xr[i + half]), pos * inv_freq[i], attention_scaling, xr[i],
                xr[i + half]);
}

__global__ void silu_mul_kernel(const __nv_bfloat16* gate, const __nv_bfloat16* __restrict__ up, __nv_bfloat16* out,
                                int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(silu_times(__bfloat162float(gate[i]), __bfloat162float(up[i])));
  }
}

__global__ void silu_mul_fused_kernel(const __nv_bfloat16* __restrict__ gate_up, __nv_bfloat16* __restrict__ out,
                                      int64_t n, int64_t f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * f; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / f, c = i % f;
    out[i] = __float2bfloat16(
        silu_times(__bfloat162float(gate_up[r * 2 * f + c]), __bfloat162float(gate_up[r * 2 * f + f + c])));
  }
}

// bf16(x + bias) as add_bias rounds it; no bias: x.
__device__ __forceinline__ __nv_bfloat16 with_bias(__nv_bfloat16 x, const __nv_bfloat16* bias, int64_t i) {
  return bias == nullptr ? x : __float2bfloat16(__bfloat162float(x) + __bfloat162float(bias[i]));
}

// One block per (token, head of the fused row): Q and K heads rotated as rope_kernel does, V copied.
__global__ void qkv_split_rope_kernel(const __nv_bfloat16* __restrict__ qkv, const __nv_bfloat16* __restrict__ bias,
                                      __nv_bfloat16* __restrict__ q, __nv_bfloat16* __restrict__ k,
                                      __nv_bfloat16* __restrict__ v, const int64_t* __restrict__ positions,
                                      const float* __restrict__ inv_freq, float attention_scaling, int nq, int nkv,
                                      int head_dim, int rotary_dim) {
  const int heads = nq + 2 * nkv;
  const int64_t token = blockIdx.x / heads;
  const int head = int(blockIdx.x % heads);
  const __nv_bfloat16* src = qkv + int64_t(blockIdx.x) * head_dim;
  const __nv_bfloat16* b = bias == nullptr ? nullptr : bias + int64_t(head) * head_dim;
  __nv_bfloat16* dst = head < nq        ? q + (token * nq + head) * head_dim
                       : head < nq + nkv ? k + (token * nkv + head - nq) * head_dim
                                         : v + (token * nkv + head - nq - nkv) * head_dim;
  if (head >= nq + nkv) {
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = with_bias(src[i], b, i);
    return;
  }
  const int half = rotary_dim / 2;
  const float pos = float(positions[token]);
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rotate_pair(__bfloat162float(with_bias(src[i], b, i)), __bfloat162float(with_bias(src[i + half], b, i + half)),
                pos * inv_freq[i], attention_scaling, dst[i], dst[i + half]);
  for (int i = rotary_dim + threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = with_bias(src[i], b, i);
}

__global__ void add_bias_kernel(__nv_bfloat16* y, const __nv_bfloat16* __restrict__ bias, int64_t n, int64_t dim) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * dim; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(__bfloat162float(y[i]) + __bfloat162float(bias[i % dim]));
}

// One block per sequence; 16-byte copies (row_elems and slot_stride multiples of 8).
__global__ void append_kv_kernel(const uint4* __restrict__ k_new, const uint4* __restrict__ v_new, uint4* k_cache,
                                 uint4* v_cache, const int64_t* __restrict__ positions, int64_t row_vecs,
                                 int64_t slot_vecs) {
  const int64_t dst = blockIdx.x * slot_vecs + positions[blockIdx.x] * row_vecs, src = int64_t(blockIdx.x) * row_vecs;
  for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) {
    k_cache[dst + i] = k_new[src + i];
    v_cache[dst + i] = v_new[src + i];
  }
}

// One block per token.
__global__ void embedding_kernel(const __nv_bfloat16* __restrict__ table, const int32_t* __restrict__ ids,
                                 __nv_bfloat16* __restrict__ out, int64_t hidden, int64_t vocab, int32_t* bad_id) {
  const int32_t id = ids[blockIdx.x];
  const bool ok = id >= 0 && id < vocab;
  if (!ok && threadIdx.x == 0 && bad_id != nullptr) *bad_id = 1;
  __nv_bfloat16* o = out + blockIdx.x * hidden;
  const __nv_bfloat16* t = table + (ok ? int64_t(id) : 0) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = ok ? t[i] : __float2bfloat16(0.0f);
}

// One block per row: (value, index) reduction, larger value wins, lower index on ties.
__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const float* __restrict__ logits, int32_t* __restrict__ out, int64_t vocab) {
  const float* r = logits + blockIdx.x * vocab;
  float best = -INFINITY;
  int32_t best_i = INT32_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = r[i];
    if (v > best || (v == best && int32_t(i) < best_i)) {  // NaN compares false: never wins
      best = v;
      best_i = int32_t(i);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, off);
    const int32_t j = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (v > best || (v == best && j < best_i)) {
      best = v;
      best_i = j;
    }
  }
  __shared__ float sv[kThreads / 32];
  __shared__ int32_t si[kThreads / 32];
  if (threadIdx.x % 32 == 0) {
    sv[threadIdx.x / 32] = best;
    si[threadIdx.x / 32] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < best_i)) {
        best = sv[w];
        best_i = si[w];
      }
    out[blockIdx.x] = best_i == INT32_MAX ? 0 : best_i;
  }
}

}  // namespace retro::runtime::cuda::kernels
