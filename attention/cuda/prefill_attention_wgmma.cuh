#pragma once
// Kernel of causal prefill attention on Hopper warpgroup MMA (wgmma, sm_90a).
//
// One CTA = 2 warpgroups of 64 query rows each (128 rows of one query head). K/V tiles of 128 tokens
// stream through shared memory (cp.async by all threads, 128-byte-swizzled as wgmma reads them). Per
// tile each warpgroup computes S = Q K^T with Q and K straight from shared memory (64 x 128 fp32 in
// registers), masks it causally, updates the online softmax (base 2), converts P to bf16 A fragments
// in registers and adds P V into its 64 x head_dim fp32 accumulators, V read from shared memory as
// an MN-major operand. Same arithmetic as the mma.sync kernel of prefill_attention.cuh, on the
// instruction Hopper's tensor cores run at full rate.
//
// Two schedules of the same arithmetic. Plain (two stages): per tile S, wait, softmax, P V, wait.
// Pipelined (three stages): tile t's S = Q K_t^T and the previous tile's O += P_{t-1} V_{t-1} are
// issued together, and tile t's softmax runs while the tensor cores do P V (the intra-warpgroup
// overlap of FlashAttention-3); O is rescaled once that P V has landed.
//
// kTma (pipelined only): the K/V tiles come by TMA instead of cp.async. One thread issues a tile's
// bulk tensor copies (tma.cuh; the tensor maps cover K and V of every KV head, 64-column boxes of
// 128 tokens in the 128-byte swizzle) and the CTA waits on the stage's mbarrier, so the 256 threads
// no longer spend 16 copy instructions and their address arithmetic per tile each.

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/prefill_attention.cuh"
#include "attention/cuda/tma.cuh"
#include "attention/cuda/wgmma.cuh"

namespace retro::attention::cuda::kernels {

template <int kHeadDim>
struct WgmmaPrefillTile {
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = kWarpGroups * 128;
  static constexpr int kBlockM = kWarpGroups * 64;
  static constexpr int kBlockN = 128;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;
  // Q + kStages x (K, V), one mbarrier a stage (TMA), and room to start them on a 1024-byte boundary.
  static constexpr int smem_bytes(int stages) { return kQBytes + 2 * stages * kKvBytes + 8 * stages + 1024; }
};

// Loads rows [row0, row0 + kRows) of a [n, head_dim] bf16 matrix (row stride `stride` elements) into a
// 128-byte-swizzled tile (wgmma.cuh); rows at or past n are zero-filled.
template <int kHeadDim, int kRows, int kThreads>
__device__ __forceinline__ void load_tile_sw128(uint32_t tile, const __nv_bfloat16* base, int64_t stride,
                                                int64_t row0, int64_t n) {
  constexpr int kChunks = kHeadDim / 8;
#pragma unroll
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = row0 + r;
    const bool valid = row < n;
    cp_async_16(tile + sw128_offset(kRows, r, c), base + (valid ? row : 0) * stride + c * 8, valid);
  }
}

// S (64 x 128 per warpgroup) = the products of the warpgroup's Q rows with one K tile.
template <int kHeadDim>
__device__ __forceinline__ void wgmma_scores(float (&s)[64], uint32_t sq_wg, uint32_t sk) {
  constexpr int kBlockM = WgmmaPrefillTile<kHeadDim>::kBlockM, kBlockN = WgmmaPrefillTile<kHeadDim>::kBlockN;
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    const uint32_t column = uint32_t(ks % 4) * 32u;  // k16 step inside a 64-column block
    const uint64_t da = sw128_desc(sq_wg + uint32_t(ks / 4) * kBlockM * 128u + column, 16, 1024);
    const uint64_t db = sw128_desc(sk + uint32_t(ks / 4) * kBlockN * 128u + column, 16, 1024);
    wgmma_m64n128k16_ss(s, da, db, ks > 0);
  }
}

// A thread's share of P in bf16: the A fragments of the 8 k16 steps of P V. Tokens 16 kk .. 16 kk + 15
// are S's n8 blocks 2 kk and 2 kk + 1.
__device__ __forceinline__ void p_fragments(const float (&s)[64], uint32_t (&a)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      a[kk][i] = pack_bf16(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
      asm volatile("" : "+r"(a[kk][i])::"memory");  // converted before the fence that precedes the MMAs
    }
  }
}

// Starts O (64 x head_dim per warpgroup) += P V for one V tile; the caller commits and waits.
template <int kHeadDim>
__device__ __forceinline__ void wgmma_pv(float (&o)[kHeadDim / 2], const uint32_t (&a)[8][4], uint32_t sv) {
  constexpr int kBlockN = WgmmaPrefillTile<kHeadDim>::kBlockN;
  static_assert(kBlockN == 128, "8 k16 steps of P");
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t db = sw128_desc(sv + uint32_t(kk) * 16u * 128u, kBlockN * 128u, 1024);
    if constexpr (kHeadDim == 128)
      wgmma_m64n128k16_rs_bt(o, a[kk], db);
    else
      wgmma_m64n64k16_rs_bt(o, a[kk], db);
  }
}

// The online softmax of one tile of S for a thread's two rows: masks the future and the padding past
// n_kv (only when the tile reaches them), turns S into unnormalised probabilities against the new
// running maximum, updates m_run and the quad-partial l_run, and returns the factors O must be
// multiplied by (exactly 1 for a row whose maximum did not move); *moved: some row of the warp moved.
__device__ __forceinline__ void softmax_tile(float (&s)[64], int kv0, const int (&pos)[2], int warp_first_pos,
                                             int64_t n_kv, float scale_log2, float (&m_run)[2], float (&l_run)[2],
                                             float (&corr)[2], bool* moved_any) {
  const int t = threadIdx.x % 4;
  if (kv0 + 127 > warp_first_pos || int64_t(kv0) + 128 > n_kv) {
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int kpos = kv0 + (i / 4) * 8 + t * 2 + (i & 1);
      if (kpos > pos[(i / 2) & 1] || kpos >= n_kv) s[i] = -INFINITY;
    }
  }
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int i = 0; i < 64; ++i) tile_max[(i / 2) & 1] = fmaxf(tile_max[(i / 2) & 1], s[i]);
  bool max_moved = false;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tile_max[r] *= scale_log2;  // -inf stays -inf (scale > 0)
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    const float m_new = fmaxf(m_run[r], tile_max[r]);
    const float m_ref = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row stays empty, not NaN
    const bool moved = m_new != m_run[r];
    corr[r] = moved ? fast_exp2(m_run[r] - m_ref) : 1.0f;
    max_moved |= moved;
    m_run[r] = m_new;
    tile_max[r] = m_ref;
  }
  float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    const float p = fast_exp2(fmaf(s[i], scale_log2, -tile_max[(i / 2) & 1]));
    s[i] = p;
    row_sum[(i / 2) & 1] += p;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * corr[r] + row_sum[r];
  *moved_any = __any_sync(0xffffffffu, max_moved);
}

template <int kN>
__device__ __forceinline__ void rescale(float (&o)[kN], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) o[i] *= corr[(i / 2) & 1];
}

// S = Q K^T of one tile, issued and completed.
template <int kHeadDim>
__device__ __forceinline__ void scores_complete(float (&s)[64], uint32_t sq_wg, uint32_t sk) {
  wgmma_fence();
  wgmma_scores<kHeadDim>(s, sq_wg, sk);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(s);
}

// The pipelined step: issues S = Q K_t^T and then O += P_{t-1} V_{t-1} as two groups and returns once
// the scores are in registers (P V still runs; wgmma_wait<0>() and a fence on o complete it).
template <int kHeadDim>
__device__ __forceinline__ void scores_beside_pv(float (&s)[64], float (&o)[kHeadDim / 2], const uint32_t (&p)[8][4],
                                                 uint32_t sq_wg, uint32_t sk, uint32_t sv_previous) {
  wgmma_fence_operands(o);
  wgmma_fence();
  wgmma_scores<kHeadDim>(s, sq_wg, sk);
  wgmma_commit();
  wgmma_pv<kHeadDim>(o, p, sv_previous);
  wgmma_commit();
  wgmma_wait<1>();  // the scores
  wgmma_fence_operands(s);
}

// O += P V of one tile, issued and completed.
template <int kHeadDim>
__device__ __forceinline__ void pv_complete(float (&o)[kHeadDim / 2], const uint32_t (&p)[8][4], uint32_t sv) {
  wgmma_fence_operands(o);
  wgmma_fence();
  wgmma_pv<kHeadDim>(o, p, sv);
  wgmma_commit();
  wgmma_wait<0>();
  wgmma_fence_operands(o);
}

// Finalise a warp's 16 rows (first row warp_row0): total the row sums over the quad, normalise O,
// write it in bf16 and the LSE (natural log).
template <int kHeadDim>
__device__ __forceinline__ void write_rows(const float (&o)[kHeadDim / 2], const float (&m_run)[2],
                                           const float (&l_run)[2], int64_t warp_row0, int64_t n_q, int num_q_heads,
                                           int head, __nv_bfloat16* __restrict__ out, float* __restrict__ lse) {
  const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int64_t row = warp_row0 + g + r * 8;
    if (row >= n_q) continue;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    __nv_bfloat16* orow = out + (row * num_q_heads + head) * kHeadDim;
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(orow + j * 8 + t * 2) =
          __floats2bfloat162_rn(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (lse != nullptr && t == 0)
      lse[row * num_q_heads + head] = l > 0.0f ? (m_run[r] + log2f(l)) * 0.69314718055994531f : -INFINITY;
  }
}

// tmap_k / tmap_v (kTma): K and V as 3-D tensors of 64-column x 1-head x 128-token boxes, the head
// dimension second when tma_heads_inner (coordinates column, KV head, token), else third (column,
// token, KV head).
template <int kHeadDim, bool kPipelined, bool kTma>
__global__ void __launch_bounds__(WgmmaPrefillTile<kHeadDim>::kThreads, 1)
    prefill_attention_wgmma_kernel(const __nv_bfloat16* __restrict__ q, int64_t q_stride_token,
                                   const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                                   int64_t kv_stride_token, int64_t kv_stride_head, __nv_bfloat16* __restrict__ out,
                                   float* __restrict__ lse, int64_t n_q, int64_t n_kv, int num_q_heads, int group,
                                   float scale_log2, const __grid_constant__ CUtensorMap tmap_k,
                                   const __grid_constant__ CUtensorMap tmap_v, int tma_heads_inner) {
  static_assert(kPipelined || !kTma, "TMA loads feed the pipelined schedule");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = WgmmaPrefillTile<kHeadDim>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kThreads = Tile::kThreads;
  constexpr int kStages = kPipelined ? 3 : 2;
  constexpr int kNO = kHeadDim / 2;  // accumulator registers of O per thread
  extern __shared__ __align__(128) unsigned char smem[];  // aligned to 1024 below
  const uint32_t sq = (smem_u32(smem) + 1023u) & ~1023u;
  const uint32_t sk0 = sq + Tile::kQBytes;
  auto sk = [&](int tile) { return sk0 + uint32_t(tile % kStages) * 2u * Tile::kKvBytes; };
  auto sv = [&](int tile) { return sk0 + uint32_t(tile % kStages) * 2u * Tile::kKvBytes + Tile::kKvBytes; };

  const PrefillBlock blk = prefill_block<kHeadDim, kBlockM, kBlockN>(q, k, v, kv_stride_head, n_q, n_kv, group);
  const int64_t q_row0 = blk.q_row0, offset = blk.offset;
  const int head = blk.head, num_tiles = blk.num_tiles;
  const __nv_bfloat16 *qh = blk.qh, *kh = blk.kh, *vh = blk.vh;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4;
  // TMA: the mbarrier of stage i, completed once a use of the stage (tile t: stage t % kStages, phase
  // parity (t / kStages) & 1).
  const uint32_t bars = sk0 + uint32_t(kStages) * 2u * Tile::kKvBytes;
  auto full = [&](int tile) { return bars + uint32_t(tile % kStages) * 8u; };
  const int kv_head = head / group;
  auto load_kv = [&](int tile) {
    if constexpr (kTma) {
      if (threadIdx.x != 0) return;
      mbarrier_arrive_expect_tx(full(tile), 2u * Tile::kKvBytes);
      const int token = tile * kBlockN;
#pragma unroll
      for (int cb = 0; cb < kHeadDim / 64; ++cb) {
        const uint32_t block = uint32_t(cb) * kBlockN * 128u;
        const int c1 = tma_heads_inner ? kv_head : token, c2 = tma_heads_inner ? token : kv_head;
        tma_load_3d(sk(tile) + block, &tmap_k, full(tile), cb * 64, c1, c2);
        tma_load_3d(sv(tile) + block, &tmap_v, full(tile), cb * 64, c1, c2);
      }
    } else {
      load_tile_sw128<kHeadDim, kBlockN, kThreads>(sk(tile), kh, kv_stride_token, int64_t(tile) * kBlockN, n_kv);
      load_tile_sw128<kHeadDim, kBlockN, kThreads>(sv(tile), vh, kv_stride_token, int64_t(tile) * kBlockN, n_kv);
    }
  };

  if constexpr (kTma) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < kStages; ++i) mbarrier_init(full(i), 1);
      fence_mbarrier_init();
    }
    __syncthreads();
  }
  load_tile_sw128<kHeadDim, kBlockM, kThreads>(sq, qh, q_stride_token, q_row0, n_q);
  load_kv(0);
  cp_async_commit();

  float o[kNO];
#pragma unroll
  for (int i = 0; i < kNO; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  // Accumulator register i of a thread: row g (+ 8 when bit 1 of i is set) of its warp's 16 rows,
  // column 8 (i / 4) + 2 t + (i & 1) (the wgmma D layout).
  const int64_t warp_row0 = q_row0 + wg * 64 + warp * 16;
  const int warp_first_pos = int(offset + warp_row0);
  const int pos[2] = {warp_first_pos + g, warp_first_pos + g + 8};
  const uint32_t sq_wg = sq + uint32_t(wg) * 64u * 128u;
  float s[64], corr[2];
  uint32_t p[8][4];
  bool moved = false;

  if constexpr (!kPipelined) {
    for (int tile = 0; tile < num_tiles; ++tile) {
      if (tile + 1 < num_tiles) load_kv(tile + 1);
      cp_async_commit();
      cp_async_wait<1>();
      fence_view_async_shared();  // this thread's cp.async writes, seen by the async proxy (wgmma)
      __syncthreads();

      scores_complete<kHeadDim>(s, sq_wg, sk(tile));
      softmax_tile(s, tile * kBlockN, pos, warp_first_pos, n_kv, scale_log2, m_run, l_run, corr, &moved);
      if (moved) rescale(o, corr);
      p_fragments(s, p);
      pv_complete<kHeadDim>(o, p, sv(tile));
      __syncthreads();  // this stage is refilled two tiles from now
    }
  } else {
    // Tile 0: its scores and softmax alone.
    if (num_tiles > 1) load_kv(1);
    cp_async_commit();
    if constexpr (kTma) {
      cp_async_wait<0>();  // Q
      fence_view_async_shared();
      __syncthreads();
      mbarrier_wait(full(0), 0);
    } else {
      cp_async_wait<1>();
      fence_view_async_shared();
      __syncthreads();
    }
    scores_complete<kHeadDim>(s, sq_wg, sk(0));
    softmax_tile(s, 0, pos, warp_first_pos, n_kv, scale_log2, m_run, l_run, corr, &moved);  // O is still 0
    p_fragments(s, p);
    for (int tile = 1; tile < num_tiles; ++tile) {
      // Tile t's K/V have landed; every thread is past its P V of tile t - 2, whose stage the loads of
      // tile t + 1 now reuse.
      if constexpr (kTma) {
        __syncthreads();
        if (tile + 1 < num_tiles) load_kv(tile + 1);
        mbarrier_wait(full(tile), unsigned(tile / kStages) & 1u);
      } else {
        cp_async_wait<0>();
        fence_view_async_shared();
        __syncthreads();
        if (tile + 1 < num_tiles) load_kv(tile + 1);
        cp_async_commit();
      }
      scores_beside_pv<kHeadDim>(s, o, p, sq_wg, sk(tile), sv(tile - 1));
      softmax_tile(s, tile * kBlockN, pos, warp_first_pos, n_kv, scale_log2, m_run, l_run, corr, &moved);
      wgmma_wait<0>();  // P_{t-1} V_{t-1}, against the old maximum, is in O: now rescale it
      wgmma_fence_operands(o);
      if (moved) rescale(o, corr);
      p_fragments(s, p);
    }
    pv_complete<kHeadDim>(o, p, sv(num_tiles - 1));
  }

  write_rows<kHeadDim>(o, m_run, l_run, warp_row0, n_q, num_q_heads, head, out, lse);
#else
  __trap();  // launched only where the build has sm_90a code (prefill_attention.cu checks)
#endif
}

}  // namespace retro::attention::cuda::kernels
