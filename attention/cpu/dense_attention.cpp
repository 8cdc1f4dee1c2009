#include "attention/dense_attention.h"

#include "attention/impl/group_rows.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/impl/thread_pool.h"
#include "attention/impl/vector_ops.h"
#include "attention/merge.h"
#include "runtime/core/error.h"

namespace retro::attention {

void AttentionShape::validate() const {
  RETRO_CHECK(num_q_heads > 0, "attention shape: num_q_heads must be positive, got {}", num_q_heads);
  RETRO_CHECK(num_kv_heads > 0, "attention shape: num_kv_heads must be positive, got {}", num_kv_heads);
  RETRO_CHECK(head_dim > 0, "attention shape: head_dim must be positive, got {}", head_dim);
  RETRO_CHECK(num_q_heads % num_kv_heads == 0,
              "attention shape: num_q_heads ({}) must be a multiple of num_kv_heads ({}) for grouped-query attention",
              num_q_heads, num_kv_heads);
}

namespace {

// Keys per block: the logits of a block stay in cache.
constexpr int64_t kKeyBlock = 256;
// Query rows per tile on the GEMM path.
constexpr int64_t kRowTile = 256;
// From this many query rows on, QK^T and PV go through sgemm; fewer rows (a decode group) use the
// vector loops, which also keeps BLAS threads out of the worker pool.
constexpr int64_t kGemmRows = 16;

struct Workspace {
  std::vector<float> logits;   // [rows, kKeyBlock]
  std::vector<float> block_o;  // [rows, head_dim]
  std::vector<float> block_lse;
  std::vector<int64_t> visible;
};

// Exact attention of one row tile over one block of nb keys, merged into (o, lse).
void attend_block(const float* q, int64_t rows, int d, float scale, const int64_t* positions, const float* k,
                  const float* v, int64_t nb, int64_t first_position, bool use_gemm, float* o, float* lse,
                  Workspace& ws) {
  ws.visible.resize(static_cast<size_t>(rows));
  bool any = false;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t vis = nb;
    if (positions != nullptr && first_position != KvRun::kBeforeAllQueries)
      vis = std::clamp<int64_t>(positions[r] - first_position + 1, 0, nb);
    ws.visible[static_cast<size_t>(r)] = vis;
    any = any || vis > 0;
  }
  if (!any) return;
  ws.logits.resize(static_cast<size_t>(rows * nb));
  ws.block_o.assign(static_cast<size_t>(rows * d), 0.0f);
  ws.block_lse.resize(static_cast<size_t>(rows));
  float* s = ws.logits.data();
  if (use_gemm) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(nb), d, scale, q, d,
                k, d, 0.0f, s, static_cast<int>(nb));
  } else {
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t r = 0; r < rows; ++r) s[r * nb + j] = scale * impl::dot(q + r * d, k + j * d, d);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * nb;
    const int64_t vis = ws.visible[static_cast<size_t>(r)];
    if (vis == 0) {
      ws.block_lse[static_cast<size_t>(r)] = kEmptyLse;
      std::fill(sr, sr + nb, 0.0f);
      continue;
    }
    const float m = *std::max_element(sr, sr + vis);
    float sum = 0.0f;
    for (int64_t j = 0; j < vis; ++j) {
      sr[j] = std::exp(sr[j] - m);
      sum += sr[j];
    }
    std::fill(sr + vis, sr + nb, 0.0f);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < vis; ++j) sr[j] *= inv;
    ws.block_lse[static_cast<size_t>(r)] = m + std::log(sum);
  }
  float* bo = ws.block_o.data();
  if (use_gemm) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), d, static_cast<int>(nb), 1.0f, s,
                static_cast<int>(nb), v, d, 0.0f, bo, d);
  } else {
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t r = 0; r < rows; ++r) {
        const float p = s[r * nb + j];
        if (p != 0.0f) impl::axpy(p, v + j * d, bo + r * d, d);
      }
  }
  merge_states(o, lse, bo, ws.block_lse.data(), rows, d);
}

}  // namespace

void init_states(float* o, float* lse, int64_t rows, int head_dim) {
  std::fill(o, o + rows * head_dim, 0.0f);
  std::fill(lse, lse + rows, kEmptyLse);
}

void attend_exact(const float* q, int64_t rows, int head_dim, float scale, const int64_t* positions,
                  std::span<const KvRun> runs, float* o, float* lse) {
  thread_local Workspace ws;
  const int d = head_dim;
  const bool use_gemm = rows >= kGemmRows && !impl::in_parallel_region();
  const int64_t tile = use_gemm ? kRowTile : rows;
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t nr = std::min(tile, rows - r0);
    const int64_t* pos = positions != nullptr ? positions + r0 : nullptr;
    int64_t max_pos = -1;
    if (pos != nullptr) max_pos = *std::max_element(pos, pos + nr);
    for (const KvRun& run : runs) {
      for (int64_t b = 0; b < run.n; b += kKeyBlock) {
        const int64_t nb = std::min(kKeyBlock, run.n - b);
        const int64_t first = run.first_position == KvRun::kBeforeAllQueries ? KvRun::kBeforeAllQueries
                                                                              : run.first_position + b;
        if (pos != nullptr && first != KvRun::kBeforeAllQueries && first > max_pos) break;  // causally masked
        attend_block(q + r0 * d, nr, d, scale, pos, run.k + b * d, run.v + b * d, nb, first, use_gemm && nr >= kGemmRows,
                     o + r0 * d, lse + r0, ws);
      }
    }
  }
}

void dense_attention_causal(const AttentionShape& shape, const float* q, int64_t n_q, const float* k, const float* v,
                            int64_t n_kv, float* out, float* lse) {
  shape.validate();
  RETRO_CHECK(n_q >= 0 && n_kv >= 0, "dense attention: negative token counts (n_q {}, n_kv {})", n_q, n_kv);
  RETRO_CHECK(n_q <= n_kv, "dense attention: {} query tokens but only {} stored tokens; the queries are the last "
              "stored tokens", n_q, n_kv);
  const int d = shape.head_dim;
  const int g_size = shape.group_size();
  const int hq = shape.num_q_heads;
  const int hkv = shape.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t rows = n_q * g_size;
  auto one_head = [&](int64_t g) {
    std::vector<float> kh(static_cast<size_t>(n_kv * d)), vh(static_cast<size_t>(n_kv * d));
    for (int64_t t = 0; t < n_kv; ++t) {
      std::copy_n(k + (t * hkv + g) * d, d, kh.data() + t * d);
      std::copy_n(v + (t * hkv + g) * d, d, vh.data() + t * d);
    }
    impl::GroupRows gr;
    impl::gather_group_rows(q, n_q, hq, static_cast<int>(g), g_size, d, n_kv - n_q, gr);
    KvRun run{kh.data(), vh.data(), n_kv, 0};
    attend_exact(gr.q.data(), rows, d, scale, gr.pos.data(), std::span<const KvRun>(&run, 1), gr.o.data(),
                 gr.lse.data());
    impl::scatter_group_rows(gr, n_q, hq, static_cast<int>(g), g_size, d, out, lse);
  };
  if (rows < kGemmRows) {
    impl::parallel_for(hkv, one_head);
  } else {
    for (int64_t g = 0; g < hkv; ++g) one_head(g);
  }
}

}  // namespace retro::attention
