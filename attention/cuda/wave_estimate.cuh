#pragma once
// The estimation zone's slice merge (wave_select.cuh's estimate_merge_kernel, and the zone merge of
// wave_retrieve.cuh, which can take the slices itself).

#include <cstdint>

#include "attention/cuda/wave_layout.h"
#include "attention/cuda/wave_select.h"

namespace retro::attention::cuda::kernels {

// Element `elem` of row r of group g's estimation zone, merged over its slices: o (softmax-normalised)
// and lse (natural log; -inf when nothing was estimated).
template <int kHeadDim>
__device__ __forceinline__ void merge_estimate_slices(const WaveEstimatePartials& e, int group_size, int64_t g, int r,
                                                      int elem, float& o, float& lse) {
  const int G = group_size;
  const int n_slices = min((e.count[g] + kWaveEstimateTile - 1) / kWaveEstimateTile, e.slices);
  const float* rec = e.partials + (g * e.slices * G + r) * (kHeadDim + 2);
  const int64_t slice_stride = int64_t(G) * (kHeadDim + 2);
  // Unrolled so the loads of several slices are in flight at once.
  float m = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < n_slices; ++s) m = fmaxf(m, rec[s * slice_stride]);
  float mass = 0.0f, num = 0.0f;
  if (m != -INFINITY) {
#pragma unroll 8
    for (int s = 0; s < n_slices; ++s) {
      const float* x = rec + s * slice_stride;
      const float w = expf(x[0] - m);
      mass = fmaf(x[1], w, mass);
      num = fmaf(x[2 + elem], w, num);
    }
  }
  o = mass > 0.0f ? num / mass : 0.0f;
  lse = mass > 0.0f ? m + logf(mass) : -INFINITY;
}

}  // namespace retro::attention::cuda::kernels
