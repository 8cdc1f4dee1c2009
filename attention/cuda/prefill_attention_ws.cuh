#pragma once
// Causal prefill attention on Hopper with warp specialisation (sm_90a), the FlashAttention-3 layout
// of the work: one producer warpgroup and two consumer warpgroups per CTA.
//
// The producer gives most of its registers back (setmaxnreg) and one of its threads streams the K
// and V tiles of 128 tokens by TMA into two stages each; a stage's "full" mbarrier completes when
// its bytes have landed, its "empty" mbarrier when all 8 consumer warps are done with it. The
// consumers take the registers (240 each) and run the pipelined schedule of
// prefill_attention_wgmma.cuh on 64 query rows each: tile t's S = Q K_t^T and O += P_{t-1} V_{t-1}
// issued together, the softmax of tile t while P V runs, K_t released as soon as S is in registers
// and V_{t-1} once P V has landed. Nothing waits on the whole CTA after the start: K/V loads never
// hold the consumers, and K runs up to two tiles ahead of the math.

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "attention/cuda/prefill_attention.cuh"
#include "attention/cuda/prefill_attention_wgmma.cuh"
#include "attention/cuda/tma.cuh"
#include "attention/cuda/wgmma.cuh"

namespace retro::attention::cuda::kernels {

template <int kHeadDim>
struct WsPrefillTile {
  static constexpr int kConsumers = 2;                   // warpgroups of 64 query rows
  static constexpr int kThreads = (kConsumers + 1) * 128;  // + the producer warpgroup
  static constexpr int kBlockM = kConsumers * 64;
  static constexpr int kBlockN = 128;
  static constexpr int kStages = 2;  // of K, and of V
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKvBytes = kBlockN * kHeadDim * 2;
  static constexpr int kBarriers = 4 * kStages;  // full and empty, of K and of V
  // Q + kStages x K + kStages x V, the barriers, and room to start on a 1024-byte boundary.
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kKvBytes + 8 * kBarriers + 1024;
  static_assert(kBlockM == WgmmaPrefillTile<kHeadDim>::kBlockM && kBlockN == WgmmaPrefillTile<kHeadDim>::kBlockN,
                "the consumers run the wgmma kernel's tile helpers");
};

// tmap_k / tmap_v as for prefill_attention_wgmma_kernel<..., kTma = true>.
template <int kHeadDim>
__global__ void __launch_bounds__(WsPrefillTile<kHeadDim>::kThreads, 1)
    prefill_attention_ws_kernel(const __nv_bfloat16* __restrict__ q, int64_t q_stride_token,
                                const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                                int64_t kv_stride_head, __nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                int64_t n_q, int64_t n_kv, int num_q_heads, int group, float scale_log2,
                                const __grid_constant__ CUtensorMap tmap_k, const __grid_constant__ CUtensorMap tmap_v,
                                int tma_heads_inner) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = WsPrefillTile<kHeadDim>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kStages = Tile::kStages;
  constexpr int kNO = kHeadDim / 2;  // accumulator registers of O per thread
  extern __shared__ __align__(128) unsigned char smem[];  // aligned to 1024 below
  const uint32_t sq = (smem_u32(smem) + 1023u) & ~1023u;
  const uint32_t sk0 = sq + Tile::kQBytes, sv0 = sk0 + kStages * Tile::kKvBytes;
  const uint32_t bars = sv0 + kStages * Tile::kKvBytes;
  auto sk = [&](int tile) { return sk0 + uint32_t(tile % kStages) * Tile::kKvBytes; };
  auto sv = [&](int tile) { return sv0 + uint32_t(tile % kStages) * Tile::kKvBytes; };
  // Barrier b of stage tile % kStages; a stage's barriers complete once a use, tile t being use
  // t / kStages (phase parity (t / kStages) & 1).
  enum { kFullK = 0, kFullV = 1, kEmptyK = 2, kEmptyV = 3 };
  auto bar = [&](int which, int tile) { return bars + uint32_t(which * kStages + tile % kStages) * 8u; };
  auto parity = [&](int tile) { return unsigned(tile / kStages) & 1u; };
  constexpr unsigned kConsumerWarps = Tile::kConsumers * 4;

  const PrefillBlock blk = prefill_block<kHeadDim, kBlockM, kBlockN>(q, k, v, kv_stride_head, n_q, n_kv, group);
  const int64_t q_row0 = blk.q_row0, offset = blk.offset;
  const int head = blk.head, num_tiles = blk.num_tiles, kv_head = head / group;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(bar(kFullK, s), 1);
      mbarrier_init(bar(kFullV, s), 1);
      mbarrier_init(bar(kEmptyK, s), kConsumerWarps);
      mbarrier_init(bar(kEmptyV, s), kConsumerWarps);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer ----
    setmaxnreg_dec<24>();
    if (threadIdx.x != 0) return;
    auto load = [&](const CUtensorMap* map, uint32_t dst, uint32_t full, int tile) {
      mbarrier_arrive_expect_tx(full, Tile::kKvBytes);
      const int token = tile * kBlockN;
      const int c1 = tma_heads_inner ? kv_head : token, c2 = tma_heads_inner ? token : kv_head;
#pragma unroll
      for (int cb = 0; cb < kHeadDim / 64; ++cb)
        tma_load_3d(dst + uint32_t(cb) * kBlockN * 128u, map, full, cb * 64, c1, c2);
    };
    for (int tile = 0; tile < num_tiles; ++tile) {
      // The stage's previous use (tile - kStages) must be released first.
      if (tile >= kStages) mbarrier_wait(bar(kEmptyK, tile), parity(tile) ^ 1u);
      load(&tmap_k, sk(tile), bar(kFullK, tile), tile);
      if (tile >= kStages) mbarrier_wait(bar(kEmptyV, tile), parity(tile) ^ 1u);
      load(&tmap_v, sv(tile), bar(kFullV, tile), tile);
    }
    return;
  }

  // ---- Consumers: warpgroup c = wg - 1 holds query rows [64 c, 64 c + 64) of the block ----
  setmaxnreg_inc<240>();
  const int c = wg - 1, tid = threadIdx.x % 128;
  const int warp = tid / 32, lane = threadIdx.x % 32;
  const int g = lane / 4;
  {
    // This warpgroup's Q rows, by cp.async into the block's swizzled Q tile.
    constexpr int kChunks = kHeadDim / 8;
    for (int i = tid; i < 64 * kChunks; i += 128) {
      const int r = c * 64 + i / kChunks, ch = i % kChunks;
      const int64_t row = q_row0 + r;
      const bool valid = row < n_q;
      cp_async_16(sq + sw128_offset(kBlockM, r, ch), blk.qh + (valid ? row : 0) * q_stride_token + ch * 8, valid);
    }
    cp_async_commit();
    cp_async_wait<0>();
    fence_view_async_shared();
    named_barrier_sync(1 + c, 128);
  }
  auto release = [&](int which, int tile) {
    if (lane == 0) mbarrier_arrive(bar(which, tile));
  };

  float o[kNO];
#pragma unroll
  for (int i = 0; i < kNO; ++i) o[i] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const int64_t warp_row0 = q_row0 + c * 64 + warp * 16;
  const int warp_first_pos = int(offset + warp_row0);
  const int pos[2] = {warp_first_pos + g, warp_first_pos + g + 8};
  const uint32_t sq_wg = sq + uint32_t(c) * 64u * 128u;
  float s[64], corr[2];
  uint32_t p[8][4];
  bool moved = false;

  // Tile 0: its scores and softmax alone.
  mbarrier_wait(bar(kFullK, 0), 0);
  scores_complete<kHeadDim>(s, sq_wg, sk(0));
  release(kEmptyK, 0);
  softmax_tile(s, 0, pos, warp_first_pos, n_kv, scale_log2, m_run, l_run, corr, &moved);  // O is still 0
  p_fragments(s, p);
  for (int tile = 1; tile < num_tiles; ++tile) {
    mbarrier_wait(bar(kFullK, tile), parity(tile));
    mbarrier_wait(bar(kFullV, tile - 1), parity(tile - 1));
    scores_beside_pv<kHeadDim>(s, o, p, sq_wg, sk(tile), sv(tile - 1));
    release(kEmptyK, tile);
    softmax_tile(s, tile * kBlockN, pos, warp_first_pos, n_kv, scale_log2, m_run, l_run, corr, &moved);
    wgmma_wait<0>();  // P_{t-1} V_{t-1}, against the old maximum, is in O: now rescale it
    wgmma_fence_operands(o);
    release(kEmptyV, tile - 1);
    if (moved) rescale(o, corr);
    p_fragments(s, p);
  }
  mbarrier_wait(bar(kFullV, num_tiles - 1), parity(num_tiles - 1));
  pv_complete<kHeadDim>(o, p, sv(num_tiles - 1));

  write_rows<kHeadDim>(o, m_run, l_run, warp_row0, n_q, num_q_heads, head, out, lse);
#else
  __trap();  // launched only where the build has sm_90a code (prefill_attention.cu checks)
#endif
}

}  // namespace retro::attention::cuda::kernels
