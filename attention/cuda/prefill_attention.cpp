// Argument checks of GPU prefill attention; the launch is in prefill_attention.cu.

#include "attention/cuda/prefill_attention.h"

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

void run_prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  RETRO_CHECK(p.num_q_heads > 0 && p.num_kv_heads > 0 && p.num_q_heads % p.num_kv_heads == 0,
              "prefill attention: {} q heads do not split over {} kv heads", p.num_q_heads, p.num_kv_heads);
  RETRO_CHECK(p.head_dim == 64 || p.head_dim == 128, "prefill attention: head_dim {} (built for 64 and 128)",
              p.head_dim);
  RETRO_CHECK(p.n_q >= 0 && p.n_kv >= p.n_q, "prefill attention: {} queries over {} stored tokens", p.n_q, p.n_kv);
  RETRO_CHECK(p.q && p.k && p.v && p.out, "prefill attention: null tensor pointer");
  RETRO_CHECK(p.q_stride_token % 8 == 0 && p.kv_stride_token % 8 == 0 && p.kv_stride_head % 8 == 0,
              "prefill attention: strides must keep rows 16-byte aligned");
  RETRO_CUDA_CHECK(launch_prefill_attention(p, stream));
}

}  // namespace retro::attention::cuda
