#pragma once
// Independent references and random inputs for the attention tests: plain double-precision loops,
// sharing no code with the library.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace retro::attention::testing {

// A fresh seed per test, printed with every failure so a failing input can be replayed.
inline uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}
#define RETRO_SEEDED(seed_var)                 \
  const uint64_t seed_var = ::retro::attention::testing::fresh_seed(); \
  SCOPED_TRACE("seed " + std::to_string(seed_var))

inline std::vector<float> random_normal(std::mt19937_64& rng, size_t n, float stddev = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct RefState {
  std::vector<double> o;
  double lse = -std::numeric_limits<double>::infinity();
};

// Softmax attention of one query over the given rows. q [d]; k, v [n, d] with rows `stride` apart.
inline RefState reference_attention(const float* q, const float* k, const float* v, const std::vector<int64_t>& rows,
                                    int d, int64_t stride) {
  RefState s;
  s.o.assign(static_cast<size_t>(d), 0.0);
  if (rows.empty()) return s;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> l(rows.size());
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t j = 0; j < rows.size(); ++j) {
    double dot = 0.0;
    for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[rows[j] * stride + i];
    l[j] = dot * scale;
    mx = std::max(mx, l[j]);
  }
  double sum = 0.0;
  for (double x : l) sum += std::exp(x - mx);
  for (size_t j = 0; j < rows.size(); ++j) {
    const double p = std::exp(l[j] - mx) / sum;
    for (int i = 0; i < d; ++i) s.o[static_cast<size_t>(i)] += p * v[rows[j] * stride + i];
  }
  s.lse = mx + std::log(sum);
  return s;
}

inline std::vector<int64_t> iota_rows(int64_t n) {
  std::vector<int64_t> r(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) r[static_cast<size_t>(i)] = i;
  return r;
}

// ||a - b|| / ||b||
inline double relative_l2(const float* a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace retro::attention::testing
