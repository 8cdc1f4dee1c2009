#include "runtime/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "runtime/core/error.h"

namespace retro::runtime::ops {

void add_bias(float* y, int64_t n, int64_t dim, const float* bias) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < dim; ++i) y[t * dim + i] += bias[i];
}

void linear(const float* x, int64_t n, int64_t in, const float* w, int64_t out, const float* bias, float* y,
            float beta) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(out),
              static_cast<int>(in), 1.0f, x, static_cast<int>(in), w, static_cast<int>(in), beta, y,
              static_cast<int>(out));
  add_bias(y, n, out, bias);
}

void rms_norm(const float* x, int64_t n, int64_t dim, const float* w, float eps, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) y[t * dim + i] = xr[i] * inv * w[i];
  }
}

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void embedding(const float* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    RETRO_CHECK(ids[t] >= 0 && ids[t] < vocab, "token id {} at index {} is outside the vocabulary [0, {})", ids[t], t,
                vocab);
    std::copy_n(table + static_cast<int64_t>(ids[t]) * hidden, hidden, out + t * hidden);
  }
}

}  // namespace retro::runtime::ops
