#pragma once
// Dense decode attention on the GPU: one query token per sequence against all of its cached K/V,
// grouped-query (all query heads of a group read each K/V byte once), split-KV ("flash decoding")
// so a few long sequences still fill the GPU, variable lengths in one batch, fp32 natural-log LSE
// out (the wave path merges it with its other zones).
//
// Plan / run: plan_decode_attention() picks the split count and workspace size on the host once
// per shape; run_decode_attention() only launches, so it can be captured in a CUDA graph.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace retro::attention::cuda {

// CTA geometry shared by the kernels and the planner: warps per CTA, and token steps whose loads
// are issued before the first use.
inline constexpr int kDecodeWarps = 4;
inline constexpr int kDecodeUnroll = 4;
// Blocks of kDecodeUnroll token steps in each warp's shared-memory ring (the cp.async kernel).
inline constexpr int kDecodeStages = 4;

enum class DecodeKernel {
  kAuto,       // decode_attention_async() picks
  kRegisters,  // each warp loads the next block of K/V into registers while it computes this one
  kAsync,      // each warp streams K/V through a ring of kDecodeStages blocks in shared memory (cp.async)
};

struct DecodeAttentionParams {
  // [batch, num_q_heads, head_dim] bf16; q_stride_batch in elements (heads are contiguous).
  const void* q = nullptr;
  int64_t q_stride_batch = 0;
  // K and V of sequence b, KV head h, token t at base + b*stride_batch + h*stride_head + t*stride_token
  // (elements, bf16, each row head_dim contiguous): covers [b, h, t, d] and [b, t, h, d] layouts.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t kv_stride_batch = 0;
  int64_t kv_stride_head = 0;
  int64_t kv_stride_token = 0;
  const int32_t* seq_lens = nullptr;  // [batch] device; 0 is allowed (output 0, lse -inf)
  void* out = nullptr;                // [batch, num_q_heads, head_dim] bf16, contiguous
  float* lse = nullptr;               // [batch, num_q_heads] fp32 natural log, may be null
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;       // 64 or 128
  float sm_scale = 0.0f;  // usually 1/sqrt(head_dim)
  // With more than one split: leave the splits' partial states in the workspace
  // (decode_attention_partials) for the caller's own merge, out and lse untouched. One split
  // writes out and lse either way.
  bool keep_partials = false;
  DecodeKernel kernel = DecodeKernel::kAuto;
};

struct DecodeAttentionPlan {
  int num_splits = 1;          // KV chunks per (sequence, KV head)
  int tokens_per_split = 0;    // chunk length, a multiple of the CTA's token tile
  size_t workspace_bytes = 0;  // partial outputs + LSEs when num_splits > 1
};

// max_seq_len bounds every seq_lens[b] at run time. The grid is sized to whole waves of the
// device's resident CTAs (num_sms x ctas_per_sm; 0 reads them from the current device).
DecodeAttentionPlan plan_decode_attention(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                                          int64_t max_seq_len, int num_sms = 0, int ctas_per_sm = 0);

// Checks the arguments, then launches. workspace: device memory of plan.workspace_bytes (ignored when 0).
void run_decode_attention(const DecodeAttentionParams& params, const DecodeAttentionPlan& plan, void* workspace,
                          cudaStream_t stream);

// Where a run with keep_partials left the splits' states in `workspace`: o [batch, num_q_heads,
// num_splits, head_dim] fp32 (each split's normalised output) and lse [batch, num_q_heads,
// num_splits] fp32 base 2 (-inf: the split saw no token). Null pointers when the plan has one split.
struct DecodeAttentionPartials {
  const float* o = nullptr;
  const float* lse = nullptr;
  int num_splits = 1;
};
DecodeAttentionPartials decode_attention_partials(const DecodeAttentionParams& params, const DecodeAttentionPlan& plan,
                                                  const void* workspace);

// The bare launch without checks (decode_attention.cu); returns the launch status.
cudaError_t launch_decode_attention(const DecodeAttentionParams& params, const DecodeAttentionPlan& plan,
                                    void* workspace, cudaStream_t stream);
bool decode_attention_group_supported(int group_size);
// What kAuto takes: the register kernel, or the cp.async kernel with RETRO_DECODE_KERNEL=async. The
// planner sizes its grid for this kernel.
bool decode_attention_async();
// The kernel a launch with `kernel` runs: kAuto resolved, the rest as asked.
DecodeKernel resolve_decode_kernel(DecodeKernel kernel);
// Resident CTAs of the kernel for this shape on one SM of the current device.
int decode_attention_ctas_per_sm(int head_dim, int group_size);

}  // namespace retro::attention::cuda
