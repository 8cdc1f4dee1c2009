#pragma once
// Exact (dense) softmax attention with GQA: the reference every sparse path is measured against.

#include <cstdint>
#include <span>

#include "attention/attention_shape.h"

namespace retro::attention {

// A run of consecutive K/V rows of one KV head, e.g. one page of a store or one cluster list.
struct KvRun {
  const float* k = nullptr;  // [n, head_dim] fp32, rows contiguous
  const float* v = nullptr;  // [n, head_dim] fp32
  int64_t n = 0;
  // Position of the first row, the others follow it; kBeforeAllQueries marks rows (such as cluster
  // lists, which are not in position order) that every query may see.
  int64_t first_position = kBeforeAllQueries;

  static constexpr int64_t kBeforeAllQueries = -1;
};

// Exact attention of `rows` query vectors of one KV head over the runs, merged into the states
// (o, lse) with merge_state, so several calls over disjoint runs compose.
//   q          [rows, head_dim] fp32
//   positions  [rows] position of each query row; a row sees the keys at positions <= its own.
//              nullptr: every row sees every key (one decode query).
//   o, lse     [rows, head_dim], [rows]: running states (initialise with init_states).
void attend_exact(const float* q, int64_t rows, int head_dim, float scale, const int64_t* positions,
                  std::span<const KvRun> runs, float* o, float* lse);

// o <- 0, lse <- -inf: the state of the empty key set. o [rows, head_dim], lse [rows].
void init_states(float* o, float* lse, int64_t rows, int head_dim);

// Causal attention of n_q query tokens over n_kv stored tokens with GQA; query i sits at position
// n_kv - n_q + i and sees keys at positions <= its own (n_q == 1 is a decode step).
//   q    [n_q, num_q_heads, head_dim] fp32
//   k, v [n_kv, num_kv_heads, head_dim] fp32
//   out  [n_q, num_q_heads, head_dim] fp32
//   lse  [n_q, num_q_heads] natural log, optional
void dense_attention_causal(const AttentionShape& shape, const float* q, int64_t n_q, const float* k,
                            const float* v, int64_t n_kv, float* out, float* lse = nullptr);

}  // namespace retro::attention
