#pragma once
// Causal prefill attention on the GPU: flash attention on tensor cores (bf16 in, fp32 accumulate),
// online softmax, never materialising the score matrix. Two kernels: warpgroup MMA (wgmma) where the
// build has sm_90a code and the GPU is a Hopper, FlashAttention-2 on mma.sync m16n8k16 elsewhere. A chunk of n_q
// query tokens attends to n_kv stored tokens, query i sitting at position n_kv - n_q + i (chunked
// prefill of long prompts). GQA by head index; LSE out in natural log.

#include <cuda_runtime.h>

#include <cstdint>

namespace retro::attention::cuda {

enum class PrefillKernel {
  kAuto,            // warp-specialised wgmma where available (else mma.sync)
  kMmaSync,         // FlashAttention-2 on mma.sync (any sm_80+ GPU)
  kWgmma,           // Hopper warpgroup MMA; an error where unavailable
  kWgmmaPipelined,  // the same with each tile's softmax beside the previous tile's P V (three stages)
  kWgmmaTma,        // the pipelined schedule with K/V tiles loaded by TMA; an error where unavailable
  kWgmmaWs,         // warp-specialised: a TMA producer warpgroup, two consumer warpgroups (FA3 layout)
};

struct PrefillAttentionParams {
  const void* q = nullptr;  // [n_q, num_q_heads, head_dim] bf16; q_stride_token elements between tokens
  int64_t q_stride_token = 0;
  const void* k = nullptr;  // [n_kv, num_kv_heads, head_dim] bf16 (token stride kv_stride_token)
  const void* v = nullptr;
  int64_t kv_stride_token = 0;
  int64_t kv_stride_head = 0;  // elements between KV heads (head_dim for token-major)
  void* out = nullptr;         // [n_q, num_q_heads, head_dim] bf16, contiguous
  float* lse = nullptr;        // [n_q, num_q_heads] fp32 natural log, may be null
  int64_t n_q = 0;
  int64_t n_kv = 0;  // >= n_q
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // 64 or 128
  float sm_scale = 0.0f;
  PrefillKernel kernel = PrefillKernel::kAuto;
};

// Whether the wgmma kernel can run on the current device: the build has sm_90a code, the device is
// compute capability 9.0 and RETRO_PREFILL_KERNEL is not `mma`.
bool prefill_wgmma_available();

// The kernel a launch with `kernel` runs on the current device: kAuto resolved, the rest as asked.
PrefillKernel resolve_prefill_kernel(PrefillKernel kernel);

// Checks the arguments and launches (no synchronisation).
void run_prefill_attention(const PrefillAttentionParams& params, cudaStream_t stream);
// The bare launch (prefill_attention.cu).
cudaError_t launch_prefill_attention(const PrefillAttentionParams& params, cudaStream_t stream);

}  // namespace retro::attention::cuda
