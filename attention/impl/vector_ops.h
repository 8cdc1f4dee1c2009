#pragma once
// Inner loops of the CPU attention ops, written so the compiler vectorises them (-fopenmp-simd lets
// the reductions reassociate).

#include <cstdint>

namespace retro::attention::impl {

inline float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x
inline void axpy(float a, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

inline void scale(float a, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] *= a;
}

}  // namespace retro::attention::impl
