#pragma once
// Hopper tensor memory access (TMA, sm_90a) and the shared-memory barriers that track it, for the
// kernels that use them: one thread issues a tile's bulk tensor copy, the copy engine writes it into
// shared memory (in the layout of the tensor map, here 128-byte swizzled as wgmma reads it) and
// completes a transaction count on an mbarrier that the consumers wait on. Callers compile these
// only where __CUDA_ARCH_FEAT_SM90_ALL is defined.

#include <cuda.h>

#include <cstdint>

namespace retro::attention::cuda::kernels {

// An mbarrier at shared address `bar` expecting `count` arrivals a phase.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the copy engine (before the CTA's barrier that follows).
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Arrives on `bar` and adds `bytes` to the transactions its current phase waits for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase of parity `phase` of `bar` has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, unsigned phase) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(phase)
      : "memory");
}
// Copies the box of `map` at coordinates (c0, c1, c2) into shared memory at `dst`; the bytes complete
// transactions on `bar`. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

}  // namespace retro::attention::cuda::kernels
