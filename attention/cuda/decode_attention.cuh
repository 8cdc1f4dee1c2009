#pragma once
// Kernels of split-KV GQA decode attention. Framework-free: raw pointers and a params struct.
//
// Work split: one CTA per (split, KV head, sequence). Inside a CTA every warp walks tokens of its
// chunk; a token row of head_dim bf16 is read by kLanesPerToken lanes, 8 elements (16 bytes) each,
// so a warp covers kTokensPerStep tokens per step with coalesced 16-byte loads. Each lane keeps the
// query slice of all kGroup heads and an online-softmax state (max, sum, 8 accumulators per head)
// for the tokens its lane group saw; states merge by log-sum-exp across lane groups, warps and
// finally splits. Scores use base-2 exponentials (log2(e) folded into the scale).

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/decode_attention.h"

namespace retro::attention::cuda::kernels {

constexpr int kWarps = kDecodeWarps;
constexpr int kUnroll = kDecodeUnroll;

struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void bf16x8_to_float(const Bf16x8& v, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __bfloat1622float2(v.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// 16 bytes of K/V that stay unchanged while the kernel runs, read past L1 (each byte is read once)
// with a 256-byte L2 prefetch: the rows of a warp's next steps are contiguous, so DRAM serves whole
// 256-byte sectors instead of the 32-byte ones of a plain load.
__device__ __forceinline__ Bf16x8 load_kv_stream(const __nv_bfloat16* p) {
  uint4 u;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
      : "l"(p));
  Bf16x8 r;
  static_assert(sizeof(r) == sizeof(u), "16 bytes");
  __builtin_memcpy(&r, &u, sizeof(r));
  return r;
}

// 16 bytes global -> shared without a register round trip, L2 only, with the same 256-byte L2
// prefetch; src_bytes 0 fills the 16 bytes with zeros and reads nothing.
__device__ __forceinline__ void cp_async_kv(void* dst, const __nv_bfloat16* src, int src_bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// Merges online-softmax state (m, l, acc) with (m2, l2, acc2); base-2 maxima.
template <int kN>
__device__ __forceinline__ void merge_online(float& m, float& l, float* acc, float m2, float l2, const float* acc2) {
  float m_new = fmaxf(m, m2);
  if (m_new == -INFINITY) return;  // both empty
  float a = exp2f(m - m_new), b = exp2f(m2 - m_new);
  l = l * a + l2 * b;
#pragma unroll
  for (int i = 0; i < kN; ++i) acc[i] = acc[i] * a + acc2[i] * b;
  m = m_new;
}

// Partial result of a split: out_partial [batch, num_q_heads, num_splits, head_dim] fp32 (normalised),
// lse_partial [batch, num_q_heads, num_splits] fp32 base 2.
//
// kAsync: each warp streams its K/V blocks through a ring of kDecodeStages blocks in shared memory
// (cp.async; dynamic shared memory, kAsyncSmemBytes of decode_attention.cu), so kDecodeStages - 1
// blocks are in flight while one is computed, against one block in registers otherwise. Each lane
// copies exactly the 16-byte pieces it later reads, so the ring needs no synchronisation beyond its
// own waits.
template <int kHeadDim, int kGroup, bool kAsync>
__global__ void __launch_bounds__(kWarps * 32)
    decode_attention_kernel(const __nv_bfloat16* __restrict__ q, int64_t q_stride_batch,
                            const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                            int64_t kv_stride_batch, int64_t kv_stride_head, int64_t kv_stride_token,
                            const int32_t* __restrict__ seq_lens, int num_q_heads, int tokens_per_split,
                            float scale_log2, __nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                            float* __restrict__ out_partial, float* __restrict__ lse_partial) {
  constexpr int kLanesPerToken = kHeadDim / 8;
  constexpr int kTokensPerStep = 32 / kLanesPerToken;
  const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
  const int num_splits = gridDim.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = lane / kLanesPerToken;  // which token of the step this lane group reads
  const int part = lane % kLanesPerToken;  // which 8 elements of the row this lane reads

  const int len = seq_lens[b];
  const int begin = split * tokens_per_split;
  const int end = min(len, begin + tokens_per_split);

  // Query slice of every head of the group, pre-scaled.
  float qf[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    const int head = kv_head * kGroup + g;
    Bf16x8 raw = *reinterpret_cast<const Bf16x8*>(q + b * q_stride_batch + int64_t(head) * kHeadDim + part * 8);
    bf16x8_to_float(raw, qf[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] *= scale_log2;
  }

  float m[kGroup], l[kGroup], acc[kGroup][8];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }

  const __nv_bfloat16* kbase = k + b * kv_stride_batch + kv_head * kv_stride_head + part * 8;
  const __nv_bfloat16* vbase = v + b * kv_stride_batch + kv_head * kv_stride_head + part * 8;
  // After the transposing reduction below, the lane whose two top "part" bits read (hi, lo) holds the
  // full score of unrolled step u = 2*hi + lo of its token slot.
  constexpr int kHiOff = kLanesPerToken / 2, kLoOff = kLanesPerToken / 4;
  const int my_u = ((part & kHiOff) ? 2 : 0) + ((part & kLoOff) ? 1 : 0);
  constexpr int kCtaStep = kWarps * kTokensPerStep * kUnroll;
  static_assert(kUnroll == 4 && kLanesPerToken >= 4, "the score transpose assumes 4 steps over >= 4 lanes");
  // Software pipeline: the loads of the next block are in flight while this block is computed.
  auto load_block = [&](int t0, Bf16x8* kr, Bf16x8* vr) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t0 + u * kTokensPerStep + slot;
      if (t < end) {
        kr[u] = load_kv_stream(kbase + int64_t(t) * kv_stride_token);
        vr[u] = load_kv_stream(vbase + int64_t(t) * kv_stride_token);
      } else {
        kr[u] = Bf16x8{};
        vr[u] = Bf16x8{};
      }
    }
  };
  // Double-buffered loads cost 32 registers a lane: only small groups keep them without spilling.
  constexpr bool kPrefetch = !kAsync && kGroup <= 5;
  constexpr int kStages = kDecodeStages;
  // This lane's piece of (stage, step u, K or V) in the warp's ring.
  extern __shared__ uint4 ring[];
  auto ring_at = [&](int stage, int u, int kv) -> Bf16x8* {
    return reinterpret_cast<Bf16x8*>(ring + (((warp * kStages + stage) * kUnroll + u) * 2 + kv) * 32 + lane);
  };
  auto issue_block = [&](int t_block, int stage) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = t_block + u * kTokensPerStep + slot;
      const bool in = t < end;
      cp_async_kv(ring_at(stage, u, 0), in ? kbase + int64_t(t) * kv_stride_token : kbase, in ? 16 : 0);
      cp_async_kv(ring_at(stage, u, 1), in ? vbase + int64_t(t) * kv_stride_token : vbase, in ? 16 : 0);
    }
    cp_async_commit();
  };
  Bf16x8 kr[kUnroll], vr[kUnroll];
  int t0 = begin + (warp * kUnroll) * kTokensPerStep;
  int stage = 0;
  if constexpr (kAsync) {
    // The first kStages - 1 blocks; blocks past the end are zero fills that read nothing.
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) issue_block(t0 + s * kCtaStep, s);
  }
  if (kPrefetch && t0 < end) load_block(t0, kr, vr);
#pragma unroll 1
  for (; t0 < end; t0 += kCtaStep) {
    Bf16x8 kn[kUnroll], vn[kUnroll];
    if constexpr (kAsync) {
      cp_async_wait<kStages - 2>();  // this block's group has landed
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        kr[u] = *ring_at(stage, u, 0);
        vr[u] = *ring_at(stage, u, 1);
      }
      // Refill the stage read last iteration (its values are consumed) with the block kStages - 1 on.
      issue_block(t0 + (kStages - 1) * kCtaStep, stage == 0 ? kStages - 1 : stage - 1);
      stage = stage == kStages - 1 ? 0 : stage + 1;
    } else if constexpr (kPrefetch) {
      if (t0 + kCtaStep < end) load_block(t0 + kCtaStep, kn, vn);
    } else {
      load_block(t0, kr, vr);
    }
    const bool my_valid = t0 + my_u * kTokensPerStep + slot < end;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      // Partial dot products of this lane's 8 elements for the 4 steps.
      float s[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float kf[8];
        bf16x8_to_float(kr[u], kf);
        s[u] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s[u] = fmaf(qf[g][i], kf[i], s[u]);
      }
      // Transposing reduction: 4 values over the lane group in 5 shuffles instead of 16.
      const bool hi = part & kHiOff, lo = part & kLoOff;
      float r0 = (hi ? s[2] : s[0]) + __shfl_xor_sync(0xffffffffu, hi ? s[0] : s[2], kHiOff);
      float r1 = (hi ? s[3] : s[1]) + __shfl_xor_sync(0xffffffffu, hi ? s[1] : s[3], kHiOff);
      float score = (lo ? r1 : r0) + __shfl_xor_sync(0xffffffffu, lo ? r0 : r1, kLoOff);
#pragma unroll
      for (int off = kLoOff / 2; off > 0; off /= 2) score += __shfl_xor_sync(0xffffffffu, score, off);
      if (!my_valid) score = -INFINITY;
      // One max, one rescale and one exponential per lane for the whole block of 4 steps.
      float blk = fmaxf(score, __shfl_xor_sync(0xffffffffu, score, kHiOff));
      blk = fmaxf(blk, __shfl_xor_sync(0xffffffffu, blk, kLoOff));
      const float m_new = fmaxf(m[g], blk);
      // Nothing valid yet for this lane group: a finite reference keeps corr and p at 0, not NaN.
      // (No early exit: every lane must reach the shuffles below.)
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = exp2f(m[g] - m_ref);
      const float p_mine = exp2f(score - m_ref);
      l[g] = l[g] * corr + p_mine;  // this lane's share; lanes of the group are summed at the end
      m[g] = m_new;
      const int base = lane & ~(kHiOff | kLoOff);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float p = __shfl_sync(0xffffffffu, p_mine, base | ((u & 2) ? kHiOff : 0) | ((u & 1) ? kLoOff : 0));
        float vf[8];
        bf16x8_to_float(vr[u], vf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
      }
    }
    if constexpr (kPrefetch) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        kr[u] = kn[u];
        vr[u] = vn[u];
      }
    }
  }
  if constexpr (kAsync) cp_async_wait<0>();  // no copy outlives the kernel
  // Each lane summed only the probabilities of its own step: total them over the lane group.
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    l[g] += __shfl_xor_sync(0xffffffffu, l[g], kHiOff);
    l[g] += __shfl_xor_sync(0xffffffffu, l[g], kLoOff);
  }

  // Merge the lane groups of the warp (lanes with the same `part`).
#pragma unroll
  for (int off = kLanesPerToken; off < 32; off *= 2) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float m2 = __shfl_xor_sync(0xffffffffu, m[g], off);
      float l2 = __shfl_xor_sync(0xffffffffu, l[g], off);
      float a2[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) a2[i] = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
      merge_online<8>(m[g], l[g], acc[g], m2, l2, a2);
    }
  }

  // Merge the warps through shared memory: warp w's lanes of slot 0 hold its state.
  __shared__ float sm_m[kWarps][kGroup], sm_l[kWarps][kGroup];
  __shared__ float sm_acc[kWarps][kGroup][kHeadDim];
  if (slot == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (part == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_acc[warp][g][part * 8 + i] = acc[g][i];
    }
  }
  __syncthreads();
  // Thread i of the CTA finalises element (g, d) pairs.
  for (int idx = threadIdx.x; idx < kGroup * kHeadDim; idx += kWarps * 32) {
    const int g = idx / kHeadDim, d = idx % kHeadDim;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm_m[w][g]);
    float ll = 0.0f, a = 0.0f;
    if (mm != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        float c = exp2f(sm_m[w][g] - mm);
        ll += sm_l[w][g] * c;
        a += sm_acc[w][g][d] * c;
      }
    }
    const int head = kv_head * kGroup + g;
    const float o = ll > 0.0f ? a / ll : 0.0f;
    const float lse2 = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
    if (num_splits == 1) {
      out[(int64_t(b) * num_q_heads + head) * kHeadDim + d] = __float2bfloat16(o);
      if (lse != nullptr && d == 0) lse[int64_t(b) * num_q_heads + head] = lse2 * 0.69314718055994531f;
    } else {
      const int64_t row = (int64_t(b) * num_q_heads + head) * num_splits + split;
      out_partial[row * kHeadDim + d] = o;
      if (d == 0) lse_partial[row] = lse2;
    }
  }
}

// Merges the splits of every (sequence, query head): one CTA per row, head_dim threads.
template <int kHeadDim>
__global__ void merge_splits_kernel(const float* __restrict__ out_partial, const float* __restrict__ lse_partial,
                                    int num_splits, __nv_bfloat16* __restrict__ out, float* __restrict__ lse) {
  const int64_t row = blockIdx.x;  // b * num_q_heads + head
  const int d = threadIdx.x;
  const float* lp = lse_partial + row * num_splits;
  float mm = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mm = fmaxf(mm, lp[s]);
  float sum = 0.0f, a = 0.0f;
  if (mm != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      float w = exp2f(lp[s] - mm);
      sum += w;
      a += w * out_partial[(row * num_splits + s) * kHeadDim + d];
    }
  }
  out[row * kHeadDim + d] = __float2bfloat16(sum > 0.0f ? a / sum : 0.0f);
  if (lse != nullptr && d == 0) lse[row] = sum > 0.0f ? (mm + log2f(sum)) * 0.69314718055994531f : -INFINITY;
}

}  // namespace retro::attention::cuda::kernels
