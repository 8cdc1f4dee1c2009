// Planning and argument checks of GPU decode attention; the launches are in decode_attention.cu.

#include "attention/cuda/decode_attention.h"

#include <algorithm>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

constexpr int kMinTokensPerSplit = 256;

// Tokens one CTA walks per loop iteration: warps x tokens per warp step x unrolled steps.
int tile_tokens(int head_dim) { return kDecodeWarps * (32 / (head_dim / 8)) * kDecodeUnroll; }

void check_shape(int batch, int num_q_heads, int num_kv_heads, int head_dim) {
  RETRO_CHECK(batch > 0 && num_q_heads > 0 && num_kv_heads > 0, "decode attention: batch {}, q heads {}, kv heads {}",
              batch, num_q_heads, num_kv_heads);
  RETRO_CHECK(num_q_heads % num_kv_heads == 0, "decode attention: {} q heads do not split over {} kv heads",
              num_q_heads, num_kv_heads);
  RETRO_CHECK(head_dim == 64 || head_dim == 128, "decode attention: head_dim {} (built for 64 and 128)", head_dim);
  RETRO_CHECK_KIND(decode_attention_group_supported(num_q_heads / num_kv_heads), ErrorKind::kUnsupported,
                   "decode attention: group size {} not built (1, 2, 4-8 are)", num_q_heads / num_kv_heads);
}

}  // namespace

DecodeAttentionPlan plan_decode_attention(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                                          int64_t max_seq_len, int num_sms, int ctas_per_sm) {
  check_shape(batch, num_q_heads, num_kv_heads, head_dim);
  RETRO_CHECK(max_seq_len >= 0, "decode attention: max_seq_len {}", max_seq_len);
  if (num_sms <= 0) {
    int dev = 0;
    RETRO_CUDA_CHECK(cudaGetDevice(&dev));
    RETRO_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev));
  }
  if (ctas_per_sm <= 0) ctas_per_sm = decode_attention_ctas_per_sm(head_dim, num_q_heads / num_kv_heads);
  const int tile = tile_tokens(head_dim);
  const int64_t len = std::max<int64_t>(max_seq_len, 1);
  const int64_t groups = int64_t(batch) * num_kv_heads;
  const int64_t slots = int64_t(num_sms) * ctas_per_sm;
  // Splits no shorter than kMinTokensPerSplit; among those, the count whose CTAs fill their last
  // wave best (a part-empty last wave idles SMs for a whole chunk), fewer splits on ties.
  const int64_t cap = std::max<int64_t>(1, len / kMinTokensPerSplit);
  int64_t best = 1;
  double best_fill = -1.0;
  for (int64_t s = 1; s <= std::min<int64_t>(cap, 4 * slots); ++s) {
    const int64_t ctas = s * groups;
    const int64_t waves = (ctas + slots - 1) / slots;
    // One part-full wave is not idle time when it is the only wave and already covers every SM.
    const double fill = double(ctas) / double(waves * slots);
    if (fill > best_fill + 1e-9) {
      best_fill = fill;
      best = s;
    }
    if (fill >= 0.999) break;
  }
  int64_t per = (len + best - 1) / best;
  per = (per + tile - 1) / tile * tile;
  DecodeAttentionPlan plan;
  plan.tokens_per_split = static_cast<int>(per);
  plan.num_splits = static_cast<int>((len + per - 1) / per);
  if (plan.num_splits > 1)
    plan.workspace_bytes = size_t(batch) * num_q_heads * plan.num_splits * (head_dim + 1) * sizeof(float);
  return plan;
}

DecodeAttentionPartials decode_attention_partials(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan,
                                                  const void* workspace) {
  DecodeAttentionPartials parts;
  if (plan.num_splits <= 1) return parts;
  // The layout launch() carves (decode_attention.cu).
  parts.o = static_cast<const float*>(workspace);
  parts.lse = parts.o + int64_t(p.batch) * p.num_q_heads * plan.num_splits * p.head_dim;
  parts.num_splits = plan.num_splits;
  return parts;
}

void run_decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, void* workspace,
                          cudaStream_t stream) {
  check_shape(p.batch, p.num_q_heads, p.num_kv_heads, p.head_dim);
  RETRO_CHECK(plan.num_splits >= 1 && plan.tokens_per_split > 0, "decode attention: run without a plan");
  RETRO_CHECK(plan.num_splits == 1 || workspace != nullptr, "decode attention: plan needs {} bytes of workspace",
              plan.workspace_bytes);
  RETRO_CUDA_CHECK(launch_decode_attention(p, plan, workspace, stream));
}

}  // namespace retro::attention::cuda
