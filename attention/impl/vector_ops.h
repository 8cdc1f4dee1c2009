#pragma once
// Inner loops of the CPU attention ops, written so the compiler vectorises them.

#include <cstdint>

namespace retro::attention::impl {

inline float dot(const float* a, const float* b, int n) {
  // Sixteen partial sums: independent add chains (a single vector accumulator waits on the adder's
  // latency every step), which the compiler keeps in vector registers.
  float acc[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int u = 0; u < 16; ++u) acc[u] += a[i + u] * b[i + u];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int u = 0; u < 16; ++u) s += acc[u];
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
