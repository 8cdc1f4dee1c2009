// Argument checks of GPU prefill attention; the launch is in prefill_attention.cu.

#include "attention/cuda/prefill_attention.h"

#include <array>
#include <atomic>
#include <cstdint>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/env.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

bool prefill_wgmma_available() {
#ifdef RETRO_CUDA_SM90A
  // RETRO_PREFILL_KERNEL=mma keeps every prefill on the mma.sync kernel.
  static const bool refused = env_is("RETRO_PREFILL_KERNEL", "mma");
  if (refused) return false;
  // One answer per device, asked once (every prefill launch asks).
  static std::array<std::atomic<int8_t>, 64> known{};  // 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  std::atomic<int8_t>* slot = device < int(known.size()) ? &known[size_t(device)] : nullptr;
  if (slot != nullptr && slot->load(std::memory_order_relaxed) != 0) return slot->load() == 2;
  int major = 0, minor = 0;
  const bool yes = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                   cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
                   major == 9 && minor == 0;
  if (slot != nullptr) slot->store(yes ? 2 : 1);
  return yes;
#else
  return false;
#endif
}

PrefillKernel resolve_prefill_kernel(PrefillKernel kernel) {
  // Auto takes the warp-specialised kernel: it is the fastest at every shape measured (H200, head_dim
  // 128 at 16K / 64K / 128K tokens: 663 / 609 / 604 TFLOP/s, against 568 / 553 / 544 for the TMA
  // pipelined kernel and 356 / 372 / 376 for the cp.async pipelined one; PyTorch SDPA 659 / 607 / 568 in
  // the same call; head_dim 64: 452 / 456 / 457). Where TMA cannot describe the K/V (a base or stride
  // not a multiple of 16 bytes) the launch falls back to the cp.async pipelined kernel.
  if (kernel != PrefillKernel::kAuto) return kernel;
  return prefill_wgmma_available() ? PrefillKernel::kWgmmaWs : PrefillKernel::kMmaSync;
}

void run_prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  RETRO_CHECK(p.num_q_heads > 0 && p.num_kv_heads > 0 && p.num_q_heads % p.num_kv_heads == 0,
              "prefill attention: {} q heads do not split over {} kv heads", p.num_q_heads, p.num_kv_heads);
  RETRO_CHECK(p.head_dim == 64 || p.head_dim == 128, "prefill attention: head_dim {} (built for 64 and 128)",
              p.head_dim);
  RETRO_CHECK(p.n_q >= 0 && p.n_kv >= p.n_q, "prefill attention: {} queries over {} stored tokens", p.n_q, p.n_kv);
  RETRO_CHECK(p.q && p.k && p.v && p.out, "prefill attention: null tensor pointer");
  RETRO_CHECK(p.q_stride_token % 8 == 0 && p.kv_stride_token % 8 == 0 && p.kv_stride_head % 8 == 0,
              "prefill attention: strides must keep rows 16-byte aligned");
  const bool wgmma = p.kernel != PrefillKernel::kAuto && p.kernel != PrefillKernel::kMmaSync;  // every other kind
  RETRO_CHECK_KIND(!wgmma || prefill_wgmma_available(), ErrorKind::kUnsupported,
                   "prefill attention: the wgmma kernel needs a build with sm_90a code and a compute "
                   "capability 9.0 GPU");
  RETRO_CUDA_CHECK(launch_prefill_attention(p, stream));
}

}  // namespace retro::attention::cuda
