#pragma once
// Kernel of runtime/cuda/sampling.h.
//
// Every cut (top-k, top-p, the draw itself) is one question about the candidates in descending
// order (logit descending, id ascending on ties): which is the first token whose inclusive cumulative
// weight (1 per token for top-k, exp((logit - max) / T) for the others) passes a target? It is
// answered without sorting by a radix select over the order-preserving 32-bit key of the logit:
// four passes of 8 bits, each a histogram of weight per digit among the tokens that share the
// digits already fixed, then a walk in id order among the tokens of the final key.

#include <cstdint>

namespace retro::runtime::cuda::kernels {

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kHistCopies = 8;  // per-warp-group copies of the histogram: fewer atomics on one address

// Unsigned key that orders like the float (NaN excluded); -0 and +0 share a key, as they compare
// equal (the CPU twin orders them by id like any other tie).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x) == 0x80000000u ? 0u : __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Keeps token i with key k when (k, -i) >= (key, -id): a prefix of the descending order.
struct Cut {
  uint32_t key;
  int64_t id;
  __device__ bool keeps(uint32_t k, int64_t i) const { return k > key || (k == key && i <= id); }
};

struct SampleScratch {
  double hist[kHistCopies][256];
  int count[256];
  double dred[kSampleWarps];
  float fred[kSampleWarps];
  int ired[kSampleWarps];
  uint32_t prefix;
  double above;
  int fallback;
  int64_t found;
  int64_t last;
};

__device__ __forceinline__ double block_sum(double v, SampleScratch& s) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) s.dred[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < kSampleWarps; ++w) t += s.dred[w];
  __syncthreads();
  return t;
}

// Weight of a candidate: 1 (count) or its unnormalised probability.
struct Weight {
  bool mass;
  double max_logit, inv_t;
  __device__ double operator()(float x) const { return mass ? exp((double(x) - max_logit) * inv_t) : 1.0; }
};

// The first token kept by cuts a and b, in descending order, whose inclusive cumulative weight is
// > target (strict) or >= target; the last kept token when none is. Returned as the cut that keeps
// exactly the prefix ending at it. All threads of the block call it and get the result.
__device__ Cut select_prefix(const float* __restrict__ l, int64_t vocab, Cut a, Cut b, Weight weight, double target,
                             bool strict, SampleScratch& s) {
  const int tid = threadIdx.x;
  if (tid == 0) {
    s.prefix = 0;
    s.above = 0.0;
    s.fallback = 0;
  }
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int i = tid; i < kHistCopies * 256; i += kSampleThreads) (&s.hist[0][0])[i] = 0.0;
    for (int i = tid; i < 256; i += kSampleThreads) s.count[i] = 0;
    __syncthreads();
    const uint32_t prefix = s.prefix;
    double* hist = s.hist[(tid / 32) % kHistCopies];
    for (int64_t i = tid; i < vocab; i += kSampleThreads) {
      const float x = l[i];
      const uint32_t k = order_key(x);
      if (!a.keeps(k, i) || !b.keeps(k, i)) continue;
      if (pass > 0 && (k >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      const int digit = (k >> shift) & 255;
      atomicAdd(&hist[digit], weight(x));
      atomicAdd(&s.count[digit], 1);
    }
    __syncthreads();
    for (int d = tid; d < 256; d += kSampleThreads) {
      double t = 0.0;
      for (int c = 0; c < kHistCopies; ++c) t += s.hist[c][d];
      s.hist[0][d] = t;
    }
    __syncthreads();
    if (tid == 0) {
      double above = s.above;
      int chosen = -1;
      if (!s.fallback) {
        for (int d = 255; d >= 0; --d) {
          if (s.count[d] == 0) continue;
          const double c = above + s.hist[0][d];
          if (strict ? c > target : c >= target) {
            chosen = d;
            break;
          }
          above = c;
        }
      }
      if (chosen < 0) {  // the target lies past every kept token: walk to the last one (lowest digit)
        s.fallback = 1;
        above = s.above;
        chosen = 0;
        for (int d = 0; d < 256; ++d)
          if (s.count[d] != 0) {
            chosen = d;
            break;
          }
        for (int d = 255; d > chosen; --d) above += s.hist[0][d];
      }
      s.above = above;
      s.prefix = prefix | (uint32_t(chosen) << shift);
    }
    __syncthreads();
  }
  const uint32_t key = s.prefix;
  const double above = s.above;
  const bool fallback = s.fallback != 0;
  // Tokens of the final key are equal logits (equal weights), taken in id order.
  const double w = weight(key_value(key));
  int64_t j = 0;
  if (fallback) {
    j = INT64_MAX;
  } else if (w > 0.0) {
    const double q = (target - above) / w;
    j = strict ? int64_t(floor(q)) : int64_t(ceil(q)) - 1;
    if (j < 0) j = 0;
  }
  if (tid == 0) {
    s.found = -1;
    s.last = -1;
  }
  __syncthreads();
  int64_t seen = 0;
  const int warp = tid / 32, lane = tid % 32;
  for (int64_t base = 0; base < vocab; base += kSampleThreads) {
    const int64_t i = base + tid;
    bool tie = false;
    if (i < vocab) {
      const uint32_t k = order_key(l[i]);
      tie = k == key && a.keeps(k, i) && b.keeps(k, i);
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) s.ired[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w2 = 0; w2 < kSampleWarps; ++w2) {
      if (w2 < warp) before += s.ired[w2];
      total += s.ired[w2];
    }
    const int64_t rank = seen + before + __popc(ballot & ((1u << lane) - 1u));
    if (tie && rank == j) s.found = i;
    if (tie && rank == seen + total - 1) s.last = i;
    __syncthreads();
    seen += total;
    if (s.found >= 0) break;
  }
  const int64_t id = s.found >= 0 ? s.found : s.last;
  __syncthreads();
  return Cut{key, id};
}

// One block per row: out[row] = sampled token, -1 on NaN.
__global__ void __launch_bounds__(kSampleThreads)
    sample_rows_kernel(const float* __restrict__ logits, int64_t vocab, const float* __restrict__ temperature,
                       const int32_t* __restrict__ top_k, const float* __restrict__ top_p,
                       const double* __restrict__ uniform, int32_t* __restrict__ out) {
  __shared__ SampleScratch s;
  const int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // Max logit (lowest id on ties) and NaN check.
  float best = -INFINITY;
  int best_id = INT32_MAX;
  int nan = 0;
  for (int64_t i = tid; i < vocab; i += kSampleThreads) {
    const float x = l[i];
    if (isnan(x)) nan = 1;
    else if (x > best || (x == best && int(i) < best_id)) {
      best = x;
      best_id = int(i);
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
    if (ob > best || (ob == best && oi < best_id)) {
      best = ob;
      best_id = oi;
    }
  }
  nan = __syncthreads_or(nan);
  if (lane == 0) {
    s.fred[warp] = best;
    s.ired[warp] = best_id;
  }
  __syncthreads();
  best = s.fred[0];
  best_id = s.ired[0];
  for (int w = 1; w < kSampleWarps; ++w)
    if (s.fred[w] > best || (s.fred[w] == best && s.ired[w] < best_id)) {
      best = s.fred[w];
      best_id = s.ired[w];
    }
  __syncthreads();
  if (nan) {
    if (tid == 0) out[row] = -1;
    return;
  }
  const float t = temperature[row];
  if (!(t > 0.0f) || best_id == INT32_MAX) {
    if (tid == 0) out[row] = best_id == INT32_MAX ? 0 : best_id;
    return;
  }
  const Weight count{false, 0.0, 0.0};
  const Weight mass{true, double(best), 1.0 / double(t)};
  const Cut all{0u, vocab};

  Cut kcut = all;
  const int32_t k = top_k[row];
  if (k > 0 && k < vocab) kcut = select_prefix(l, vocab, all, all, count, double(k - 1), true, s);

  auto kept_mass = [&](Cut a, Cut b) {
    double m = 0.0;
    for (int64_t i = tid; i < vocab; i += kSampleThreads) {
      const float x = l[i];
      const uint32_t key = order_key(x);
      if (a.keeps(key, i) && b.keeps(key, i)) m += mass(x);
    }
    return block_sum(m, s);
  };
  Cut pcut = all;
  const float p = top_p[row];
  if (p < 1.0f) pcut = select_prefix(l, vocab, kcut, all, mass, double(p) * kept_mass(kcut, all), false, s);

  const double target = uniform[row] * kept_mass(kcut, pcut);
  const Cut pick = select_prefix(l, vocab, kcut, pcut, mass, target, true, s);
  if (tid == 0) out[row] = int32_t(pick.id);
}

}  // namespace retro::runtime::cuda::kernels
