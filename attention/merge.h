#pragma once
// The one log-sum-exp merge of partial attention states.
//
// A partial state of one query head over a set of keys S is (o, lse): o = softmax-weighted mean of
// the values of S, lse = ln(sum over S of exp(logit)). Merging the states of two disjoint key sets
// gives the state over their union, so zones, pages and blocks are attended separately and merged.
// LSE is fp32 in natural log (FlashInfer's merge_state uses base 2: multiply by ln 2 to compare).
// The empty set has lse = -inf; its o is ignored.

#include <cmath>
#include <cstdint>
#include <limits>

namespace retro::attention {

inline constexpr float kEmptyLse = -std::numeric_limits<float>::infinity();

// (o, lse) <- (o, lse) merged with (o_other, lse_other). o and o_other: [head_dim] fp32.
void merge_state(float* o, float* lse, const float* o_other, float lse_other, int head_dim);

// Row by row over n states: o [n, head_dim], lse [n].
void merge_states(float* o, float* lse, const float* o_other, const float* lse_other, int64_t n, int head_dim);

}  // namespace retro::attention
