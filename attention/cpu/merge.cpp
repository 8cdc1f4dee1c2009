#include "attention/merge.h"

#include <algorithm>
#include <cmath>

namespace retro::attention {

void merge_state(float* o, float* lse, const float* o_other, float lse_other, int head_dim) {
  const float a = *lse;
  const float b = lse_other;
  if (b == kEmptyLse) return;
  if (a == kEmptyLse) {
    std::copy(o_other, o_other + head_dim, o);
    *lse = b;
    return;
  }
  const float m = std::max(a, b);
  const float wa = std::exp(a - m);
  const float wb = std::exp(b - m);
  const float inv = 1.0f / (wa + wb);
  const float ca = wa * inv;
  const float cb = wb * inv;
  for (int i = 0; i < head_dim; ++i) o[i] = ca * o[i] + cb * o_other[i];
  *lse = m + std::log(wa + wb);
}

void merge_states(float* o, float* lse, const float* o_other, const float* lse_other, int64_t n, int head_dim) {
  for (int64_t r = 0; r < n; ++r) merge_state(o + r * head_dim, lse + r, o_other + r * head_dim, lse_other[r], head_dim);
}

}  // namespace retro::attention
