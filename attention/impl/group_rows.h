#pragma once
// The query rows of one GQA group, gathered token-major so one exact-attention call serves every
// query head of the group: row i * group_size + h is query head group * group_size + h of token i.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/dense_attention.h"

namespace retro::attention::impl {

struct GroupRows {
  std::vector<float> q;        // [rows, head_dim]
  std::vector<float> o;        // [rows, head_dim] running states, initialised empty
  std::vector<float> lse;      // [rows]
  std::vector<int64_t> pos;    // [rows] position of each row's token
  int64_t rows() const { return static_cast<int64_t>(lse.size()); }
};

// q [n, num_q_heads, head_dim]; token i sits at position first_position + i.
inline void gather_group_rows(const float* q, int64_t n, int num_q_heads, int group, int group_size, int head_dim,
                              int64_t first_position, GroupRows& g) {
  const int64_t rows = n * group_size, d = head_dim;
  g.q.resize(static_cast<size_t>(rows * d));
  g.o.resize(static_cast<size_t>(rows * d));
  g.lse.resize(static_cast<size_t>(rows));
  g.pos.resize(static_cast<size_t>(rows));
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < group_size; ++h) {
      const int64_t r = i * group_size + h;
      std::copy_n(q + (i * num_q_heads + group * group_size + h) * d, d, g.q.data() + r * d);
      g.pos[static_cast<size_t>(r)] = first_position + i;
    }
  init_states(g.o.data(), g.lse.data(), rows, head_dim);
}

// Writes the group's finished states back: out [n, num_q_heads, head_dim], lse [n, num_q_heads] or null.
inline void scatter_group_rows(const GroupRows& g, int64_t n, int num_q_heads, int group, int group_size, int head_dim,
                               float* out, float* lse) {
  const int64_t d = head_dim;
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < group_size; ++h) {
      const int64_t r = i * group_size + h;
      std::copy_n(g.o.data() + r * d, d, out + (i * num_q_heads + group * group_size + h) * d);
      if (lse != nullptr) lse[i * num_q_heads + group * group_size + h] = g.lse[static_cast<size_t>(r)];
    }
}

}  // namespace retro::attention::impl
