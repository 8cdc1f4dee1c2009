#pragma once
// Kernel of causal prefill attention (FlashAttention-2 on mma.sync).
//
// One CTA = 4 warps of 16 x kMTiles query rows of one query head. K/V tiles of kBlockN tokens
// stream through shared memory (cp.async, two stages). Shared-memory rows are swizzled
// (16-byte chunk c of row r stored at chunk c ^ (r % 8)) so ldmatrix reads are bank-conflict free.
// Per tile a warp computes S = Q K^T in registers, masks it causally, updates the
// online softmax (base 2) and adds P V into its 16 x head_dim fp32 accumulators.

#include <cuda_bf16.h>

#include <cstdint>

namespace retro::attention::cuda::kernels {

constexpr int kPrefillWarps = 4;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of kChunks chunks per row.
template <int kChunks>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return uint32_t(row * kChunks + (chunk ^ (row & 7))) * 16u;
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // zero-fill rows past the end
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kN>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c += a (16x16 bf16, row) * b (16x8 bf16, col), fp32 accumulators.
__device__ __forceinline__ void mma_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit, subnormal results flushed to zero (harmless for softmax
// weights; exp2f would add a range check around the same instruction).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Loads rows [row0, row0 + kRows) of a [n, head_dim] bf16 matrix (row stride `stride` elements) into
// a swizzled shared tile; rows at or past n are zero-filled.
template <int kHeadDim, int kRows>
__device__ __forceinline__ void load_tile(uint32_t tile, const __nv_bfloat16* base, int64_t stride, int64_t row0,
                                          int64_t n) {
  constexpr int kChunks = kHeadDim / 8;
  for (int i = threadIdx.x; i < kRows * kChunks; i += kPrefillWarps * 32) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t row = row0 + r;
    const bool valid = row < n;
    cp_async_16(tile + swizzled<kChunks>(r, c), base + (valid ? row : 0) * stride + c * 8, valid);
  }
}

// What one CTA of either prefill kernel works on: kBlockM query rows of one query head (the heavy,
// late blocks first, so the causal triangle's long CTAs start early) and the K/V tiles of kBlockN
// tokens up to its last row's position.
struct PrefillBlock {
  int64_t q_row0;  // first query row
  int64_t offset;  // position of query row 0 (n_kv - n_q)
  int head;
  const __nv_bfloat16* qh;  // the head's Q, K and V columns
  const __nv_bfloat16* kh;
  const __nv_bfloat16* vh;
  int num_tiles;
};
template <int kHeadDim, int kBlockM, int kBlockN>
__device__ __forceinline__ PrefillBlock prefill_block(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                      const __nv_bfloat16* v, int64_t kv_stride_head, int64_t n_q,
                                                      int64_t n_kv, int group) {
  PrefillBlock b;
  const int64_t num_m_blocks = (n_q + kBlockM - 1) / kBlockM;
  b.q_row0 = (num_m_blocks - 1 - blockIdx.x) * kBlockM;
  b.offset = n_kv - n_q;
  b.head = blockIdx.y;
  const int kv_head = b.head / group;
  b.qh = q + int64_t(b.head) * kHeadDim;
  b.kh = k + int64_t(kv_head) * kv_stride_head;
  b.vh = v + int64_t(kv_head) * kv_stride_head;
  const int64_t kv_end = min(n_kv, b.offset + min(b.q_row0 + kBlockM, n_q));
  b.num_tiles = int((kv_end + kBlockN - 1) / kBlockN);
  return b;
}

// kMTiles: m16 tiles per warp (each K/V fragment read from shared memory feeds all of them).
template <int kHeadDim, int kMTiles, int kBlockN>
struct PrefillTile {
  static constexpr int kBlockM = kPrefillWarps * 16 * kMTiles;
  static constexpr int kSmemBytes = kBlockM * kHeadDim * 2 + 4 * kBlockN * kHeadDim * 2;  // Q + 2 x (K, V)
};

// kQInRegs: the warp's Q fragments stay in registers for the whole kernel (fewer shared-memory
// reads) or are re-read from shared memory every k-step (64 registers fewer at head_dim 128).
template <int kHeadDim, int kMTiles, int kBlockN, bool kQInRegs>
__global__ void __launch_bounds__(kPrefillWarps * 32)
    prefill_attention_kernel(const __nv_bfloat16* __restrict__ q, int64_t q_stride_token,
                             const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                             int64_t kv_stride_token, int64_t kv_stride_head, __nv_bfloat16* __restrict__ out,
                             float* __restrict__ lse, int64_t n_q, int64_t n_kv, int num_q_heads, int group,
                             float scale_log2) {
  constexpr int kBlockM = PrefillTile<kHeadDim, kMTiles, kBlockN>::kBlockM;
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kKSteps = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int kNTilesS = kBlockN / 8;   // n-tiles of S
  constexpr int kNTilesO = kHeadDim / 8;  // n-tiles of O
  constexpr uint32_t kTileBytes = kBlockN * kHeadDim * 2;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sq = smem_u32(smem);
  // Stage s holds K at sk(s) and V right after it (no arrays: a run-time index would go to local memory).
  const uint32_t sk0 = sq + kBlockM * kHeadDim * 2;
  auto sk = [&](int stage) { return sk0 + uint32_t(stage) * 2u * kTileBytes; };
  auto sv = [&](int stage) { return sk0 + uint32_t(stage) * 2u * kTileBytes + kTileBytes; };

  const PrefillBlock blk = prefill_block<kHeadDim, kBlockM, kBlockN>(q, k, v, kv_stride_head, n_q, n_kv, group);
  const int64_t q_row0 = blk.q_row0, offset = blk.offset;
  const int head = blk.head, num_tiles = blk.num_tiles;
  const __nv_bfloat16 *qh = blk.qh, *kh = blk.kh, *vh = blk.vh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  load_tile<kHeadDim, kBlockM>(sq, qh, q_stride_token, q_row0, n_q);
  load_tile<kHeadDim, kBlockN>(sk(0), kh, kv_stride_token, 0, n_kv);
  load_tile<kHeadDim, kBlockN>(sv(0), vh, kv_stride_token, 0, n_kv);
  cp_async_commit();

  uint32_t qf[kQInRegs ? kMTiles : 1][kQInRegs ? kKSteps : 1][4];
  float o[kMTiles][kNTilesO][4];
  float m_run[kMTiles][2], l_run[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int j = 0; j < kNTilesO; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
  }
  const int g = lane / 4, t = lane % 4;
  // Row of m-tile mt, half h (0: rows g, 1: rows g + 8) of this thread.
  auto row_of = [&](int mt, int h) { return q_row0 + (warp * kMTiles + mt) * 16 + g + h * 8; };

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < num_tiles) {
      load_tile<kHeadDim, kBlockN>(sk(stage ^ 1), kh, kv_stride_token, int64_t(tile + 1) * kBlockN, n_kv);
      load_tile<kHeadDim, kBlockN>(sv(stage ^ 1), vh, kv_stride_token, int64_t(tile + 1) * kBlockN, n_kv);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (kQInRegs && tile == 0) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
          const int r = (warp * kMTiles + mt) * 16 + (lane % 16), c = ks * 2 + lane / 16;
          ldmatrix_x4(sq + swizzled<kChunks>(r, c), qf[mt][ks][0], qf[mt][ks][1], qf[mt][ks][2], qf[mt][ks][3]);
        }
    }
    // S = Q K^T for this warp's rows x kBlockN tokens; each K fragment serves every m-tile.
    float s[kMTiles][kNTilesS][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int j = 0; j < kNTilesS; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t qs[kQInRegs ? 1 : kMTiles][4];
      if constexpr (!kQInRegs) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          const int r = (warp * kMTiles + mt) * 16 + (lane % 16), c = ks * 2 + lane / 16;
          ldmatrix_x4(sq + swizzled<kChunks>(r, c), qs[mt][0], qs[mt][1], qs[mt][2], qs[mt][3]);
        }
      }
#pragma unroll
      for (int j = 0; j < kNTilesS; j += 2) {
        const int r = j * 8 + (lane / 16) * 8 + lane % 8, c = ks * 2 + (lane / 8) % 2;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(sk(stage) + swizzled<kChunks>(r, c), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          const uint32_t* a = kQInRegs ? qf[kQInRegs ? mt : 0][kQInRegs ? ks : 0] : qs[kQInRegs ? 0 : mt];
          mma_16816(s[mt][j], a, b0, b1);
          mma_16816(s[mt][j + 1], a, b2, b3);
        }
      }
    }
    // Mask the future and the padding past n_kv, only on tiles that reach them (the diagonal and the
    // end); then the online softmax per row, base 2, scale folded into one FMA per score.
    const int kv0 = tile * kBlockN;
    const int warp_first_pos = int(offset + q_row0) + warp * kMTiles * 16;
    const bool need_mask = kv0 + kBlockN - 1 > warp_first_pos || int64_t(kv0) + kBlockN > n_kv;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      float tile_max[2] = {-INFINITY, -INFINITY};
      if (need_mask) {
        const int pos[2] = {int(offset + row_of(mt, 0)), int(offset + row_of(mt, 1))};
#pragma unroll
        for (int j = 0; j < kNTilesS; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kpos = kv0 + j * 8 + t * 2 + (e & 1);
            if (kpos > pos[e / 2] || kpos >= n_kv) s[mt][j][e] = -INFINITY;
          }
      }
#pragma unroll
      for (int j = 0; j < kNTilesS; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[mt][j][e]);
#pragma unroll
      for (int r = 0; r < 2; ++r) tile_max[r] *= scale_log2;  // -inf stays -inf (scale > 0)
      float corr[2];
      bool max_moved = false;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float m_new = fmaxf(m_run[mt][r], tile_max[r]);
        const float m_ref = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row stays empty, not NaN
        const bool moved = m_new != m_run[mt][r];
        corr[r] = moved ? fast_exp2(m_run[mt][r] - m_ref) : 1.0f;
        max_moved |= moved;
        m_run[mt][r] = m_new;
        tile_max[r] = m_ref;
      }
      float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kNTilesS; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = fast_exp2(fmaf(s[mt][j][e], scale_log2, -tile_max[e / 2]));
          s[mt][j][e] = p;
          row_sum[e / 2] += p;
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) l_run[mt][r] = l_run[mt][r] * corr[r] + row_sum[r];  // quad partial
      // Past the first tiles a row's maximum seldom moves: the accumulators are rescaled only when
      // some row of the warp's m-tile moved (corr is exactly 1 for the others).
      if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
        for (int j = 0; j < kNTilesO; ++j) {
          o[mt][j][0] *= corr[0];
          o[mt][j][1] *= corr[0];
          o[mt][j][2] *= corr[1];
          o[mt][j][3] *= corr[1];
        }
      }
    }
    // O += P V: P's accumulator layout is the A layout of the next MMA (two n-tiles per k-step);
    // each V fragment serves every m-tile.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int j = 0; j < kNTilesO; j += 2) {
        const int r = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8, c = j + lane / 16;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(sv(stage) + swizzled<kChunks>(r, c), b0, b1, b2, b3);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816(o[mt][j], a[mt], b0, b1);
          mma_16816(o[mt][j + 1], a[mt], b2, b3);
        }
      }
    }
    __syncthreads();  // this stage is refilled two tiles from now
  }

  // Finalise: total the row sums over the quad, normalise, write bf16 out and the LSE.
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int64_t row = row_of(mt, r);
      if (row >= n_q) continue;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      __nv_bfloat16* orow = out + (row * num_q_heads + head) * kHeadDim;
#pragma unroll
      for (int j = 0; j < kNTilesO; ++j) {
        *reinterpret_cast<__nv_bfloat162*>(orow + j * 8 + t * 2) =
            __floats2bfloat162_rn(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      }
      if (lse != nullptr && t == 0)
        lse[row * num_q_heads + head] = l > 0.0f ? (m_run[mt][r] + log2f(l)) * 0.69314718055994531f : -INFINITY;
    }
  }
}

}  // namespace retro::attention::cuda::kernels
