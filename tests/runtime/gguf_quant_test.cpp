// Dequantization of every GGUF block type against hand-built blocks: the test packs logical
// values (scales, mins, quants) into bytes following the block layouts of the GGML format, and
// expects exactly the value the format defines for each element. Scales are dyadic so every
// expected value is exact in fp32. Round trips through simple quantizers bound the error.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/gguf.h"

namespace retro::runtime {
namespace {

std::mt19937 rng(1234);

int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
// A dyadic scale (exact in fp16 and fp32).
float dyadic() { return std::ldexp(static_cast<float>(uniform(1, 31)), -uniform(4, 9)); }

void put_half(std::vector<uint8_t>& b, size_t at, float v) {
  const uint16_t bits = float_to_fp16(v).bits;
  ASSERT_EQ(fp16_to_float(fp16{bits}), v);  // the test's scales must be exact in fp16
  std::memcpy(&b[at], &bits, 2);
}

std::vector<float> dequant(GgufType type, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), NAN);
  gguf_dequantize(type, bytes.data(), n, out.data(), DType::kFP32);
  return out;
}

TEST(GgufDequant, TypeTraitsMatchTheFormat) {
  struct Row {
    GgufType type;
    int64_t block;
    size_t bytes;
  };
  for (Row r : {Row{GgufType::kQ4_0, 32, 18}, Row{GgufType::kQ4_1, 32, 20}, Row{GgufType::kQ5_0, 32, 22},
                Row{GgufType::kQ5_1, 32, 24}, Row{GgufType::kQ8_0, 32, 34}, Row{GgufType::kQ2_K, 256, 84},
                Row{GgufType::kQ3_K, 256, 110}, Row{GgufType::kQ4_K, 256, 144}, Row{GgufType::kQ5_K, 256, 176},
                Row{GgufType::kQ6_K, 256, 210}, Row{GgufType::kQ8_K, 256, 292}, Row{GgufType::kBF16, 1, 2}}) {
    auto t = gguf_type_traits(static_cast<uint32_t>(r.type));
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->block_elements, r.block) << t->name;
    EXPECT_EQ(t->block_bytes, r.bytes) << t->name;
  }
  EXPECT_FALSE(gguf_type_traits(16).has_value());  // IQ2_XXS: not known here
}

TEST(GgufDequant, Q4_0) {
  const float d = dyadic();
  std::vector<int> q(32);
  for (int& x : q) x = uniform(0, 15);
  std::vector<uint8_t> b(18);
  put_half(b, 0, d);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  const auto y = dequant(GgufType::kQ4_0, b, 32);
  for (int k = 0; k < 32; ++k) EXPECT_EQ(y[k], static_cast<float>(q[k] - 8) * d) << k;
}

TEST(GgufDequant, Q4_1) {
  const float d = dyadic(), m = -dyadic();
  std::vector<int> q(32);
  for (int& x : q) x = uniform(0, 15);
  std::vector<uint8_t> b(20);
  put_half(b, 0, d);
  put_half(b, 2, m);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
  const auto y = dequant(GgufType::kQ4_1, b, 32);
  for (int k = 0; k < 32; ++k) EXPECT_EQ(y[k], static_cast<float>(q[k]) * d + m) << k;
}

// Q5: low nibbles as Q4, the fifth bit of element k at bit k of a little-endian uint32.
std::vector<uint8_t> pack_q5(const std::vector<int>& q, size_t header) {
  std::vector<uint8_t> b(header + 4 + 16);
  uint32_t qh = 0;
  for (int k = 0; k < 32; ++k) qh |= static_cast<uint32_t>(q[k] >> 4) << k;
  std::memcpy(&b[header], &qh, 4);
  for (int j = 0; j < 16; ++j) b[header + 4 + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  return b;
}

TEST(GgufDequant, Q5_0AndQ5_1) {
  std::vector<int> q(32);
  for (int& x : q) x = uniform(0, 31);
  const float d = dyadic(), m = dyadic();
  auto b0 = pack_q5(q, 2);
  put_half(b0, 0, d);
  auto y = dequant(GgufType::kQ5_0, b0, 32);
  for (int k = 0; k < 32; ++k) EXPECT_EQ(y[k], static_cast<float>(q[k] - 16) * d) << k;
  auto b1 = pack_q5(q, 4);
  put_half(b1, 0, d);
  put_half(b1, 2, m);
  y = dequant(GgufType::kQ5_1, b1, 32);
  for (int k = 0; k < 32; ++k) EXPECT_EQ(y[k], static_cast<float>(q[k]) * d + m) << k;
}

TEST(GgufDequant, Q8_0TwoBlocks) {
  std::vector<uint8_t> b(68);
  std::vector<int> q(64);
  const float d[2] = {dyadic(), -dyadic()};
  for (int blk = 0; blk < 2; ++blk) {
    put_half(b, static_cast<size_t>(34 * blk), d[blk]);
    for (int j = 0; j < 32; ++j) {
      q[static_cast<size_t>(32 * blk + j)] = uniform(-128, 127);
      b[static_cast<size_t>(34 * blk + 2 + j)] = static_cast<uint8_t>(static_cast<int8_t>(q[static_cast<size_t>(32 * blk + j)]));
    }
  }
  const auto y = dequant(GgufType::kQ8_0, b, 64);
  for (int k = 0; k < 64; ++k) EXPECT_EQ(y[k], static_cast<float>(q[k]) * d[k / 32]) << k;
}

// K-quant element k of a super-block of 256: half n = k / 128, within it group g = (k % 128) / 32
// (the 2-bit shift for Q2_K/Q3_K, the nibble/qh slot for Q6_K) and lane l = k % 32.

TEST(GgufDequant, Q2_K) {
  const float d = dyadic(), dmin = dyadic();
  std::vector<int> sc(16), mn(16), q(256);
  for (int i = 0; i < 16; ++i) sc[i] = uniform(0, 15), mn[i] = uniform(0, 15);
  for (int& x : q) x = uniform(0, 3);
  std::vector<uint8_t> b(84, 0);
  for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(sc[i] | (mn[i] << 4));
  for (int k = 0; k < 256; ++k) {
    const int n = k / 128, g = (k % 128) / 32, l = k % 32;
    b[16 + 32 * n + l] |= static_cast<uint8_t>(q[k] << (2 * g));
  }
  put_half(b, 80, d);
  put_half(b, 82, dmin);
  const auto y = dequant(GgufType::kQ2_K, b, 256);
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(y[k], d * static_cast<float>(sc[k / 16]) * static_cast<float>(q[k]) - dmin * static_cast<float>(mn[k / 16]))
        << k;
  }
}

TEST(GgufDequant, Q3_K) {
  const float d = dyadic();
  std::vector<int> sc(16), q(256);
  for (int& s : sc) s = uniform(-32, 31);
  for (int& x : q) x = uniform(-4, 3);
  std::vector<uint8_t> b(110, 0);
  for (int k = 0; k < 256; ++k) {
    const int n = k / 128, g = (k % 128) / 32, l = k % 32;
    const int u = q[k] + 4;  // 3 bits: 2 in qs, the third in hmask (set bit = no -4)
    b[32 + 32 * n + l] |= static_cast<uint8_t>((u & 3) << (2 * g));
    b[l] |= static_cast<uint8_t>((u >> 2) << (4 * n + g));
  }
  for (int j = 0; j < 16; ++j) {
    const int u = sc[j] + 32;
    b[96 + j % 8] |= static_cast<uint8_t>((u & 15) << (j < 8 ? 0 : 4));
    b[96 + 8 + j % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (j / 4)));
  }
  put_half(b, 108, d);
  const auto y = dequant(GgufType::kQ3_K, b, 256);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(y[k], d * static_cast<float>(sc[k / 16]) * static_cast<float>(q[k])) << k;
}

// Q4_K / Q5_K scales: 8 six-bit scales and mins in 12 bytes. Bytes 0-3: scale j (low 6 bits) and the
// top 2 bits of scale j+4; bytes 4-7: min j and the top 2 bits of min j+4; bytes 8-11: low nibbles
// of scale j+4 (low) and min j+4 (high).
void pack_k4_scales(uint8_t* p, const std::vector<int>& sc, const std::vector<int>& mn) {
  for (int j = 0; j < 4; ++j) {
    p[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    p[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    p[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

TEST(GgufDequant, Q4_K) {
  const float d = dyadic(), dmin = dyadic();
  std::vector<int> sc(8), mn(8), q(256);
  for (int j = 0; j < 8; ++j) sc[j] = uniform(0, 63), mn[j] = uniform(0, 63);
  sc[5] = 63, mn[6] = 63;  // top bits set
  for (int& x : q) x = uniform(0, 15);
  std::vector<uint8_t> b(144, 0);
  put_half(b, 0, d);
  put_half(b, 2, dmin);
  pack_k4_scales(&b[4], sc, mn);
  for (int k = 0; k < 256; ++k) {
    const int pair = k / 64, w = k % 64;  // 64 elements share 32 bytes: low nibbles, then high
    b[16 + 32 * pair + w % 32] |= static_cast<uint8_t>(q[k] << (w < 32 ? 0 : 4));
  }
  const auto y = dequant(GgufType::kQ4_K, b, 256);
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(y[k], d * static_cast<float>(sc[k / 32]) * static_cast<float>(q[k]) - dmin * static_cast<float>(mn[k / 32]))
        << k;
  }
}

TEST(GgufDequant, Q5_K) {
  const float d = dyadic(), dmin = dyadic();
  std::vector<int> sc(8), mn(8), q(256);
  for (int j = 0; j < 8; ++j) sc[j] = uniform(0, 63), mn[j] = uniform(0, 63);
  for (int& x : q) x = uniform(0, 31);
  std::vector<uint8_t> b(176, 0);
  put_half(b, 0, d);
  put_half(b, 2, dmin);
  pack_k4_scales(&b[4], sc, mn);
  for (int k = 0; k < 256; ++k) {
    const int sub = k / 32, w = k % 32;  // sub-block's fifth bits: bit `sub` of qh[w]
    b[48 + 32 * (sub / 2) + w] |= static_cast<uint8_t>((q[k] & 15) << (sub % 2 ? 4 : 0));
    b[16 + w] |= static_cast<uint8_t>((q[k] >> 4) << sub);
  }
  const auto y = dequant(GgufType::kQ5_K, b, 256);
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(y[k], d * static_cast<float>(sc[k / 32]) * static_cast<float>(q[k]) - dmin * static_cast<float>(mn[k / 32]))
        << k;
  }
}

TEST(GgufDequant, Q6_K) {
  const float d = dyadic();
  std::vector<int> sc(16), q(256);
  for (int& s : sc) s = uniform(-128, 127);
  for (int& x : q) x = uniform(-32, 31);
  std::vector<uint8_t> b(210, 0);
  for (int k = 0; k < 256; ++k) {
    const int n = k / 128, g = (k % 128) / 32, l = k % 32;
    const int u = q[k] + 32;
    // Groups 0 and 2 use ql[l], groups 1 and 3 ql[l + 32]; groups 0-1 the low nibble, 2-3 the high.
    const int ql = 64 * n + l + (g % 2) * 32;
    b[ql] |= static_cast<uint8_t>((u & 15) << (g < 2 ? 0 : 4));
    b[128 + 32 * n + l] |= static_cast<uint8_t>((u >> 4) << (2 * g));
  }
  for (int j = 0; j < 16; ++j) b[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(sc[j]));
  put_half(b, 208, d);
  const auto y = dequant(GgufType::kQ6_K, b, 256);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(y[k], d * static_cast<float>(sc[k / 16]) * static_cast<float>(q[k])) << k;
}

TEST(GgufDequant, Q8_K) {
  const float d = -dyadic();
  std::vector<uint8_t> b(292, 0);
  std::memcpy(&b[0], &d, 4);
  std::vector<int> q(256);
  for (int k = 0; k < 256; ++k) b[4 + k] = static_cast<uint8_t>(static_cast<int8_t>(q[k] = uniform(-127, 127)));
  const auto y = dequant(GgufType::kQ8_K, b, 256);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(y[k], d * static_cast<float>(q[k])) << k;
}

TEST(GgufDequant, PlainTypesAndNarrowOutputs) {
  const std::vector<float> x{1.5f, -2.25f, 0.0f, 65504.0f};
  std::vector<uint8_t> f16(8), bf(8);
  for (int i = 0; i < 4; ++i) {
    const uint16_t h = float_to_fp16(x[i]).bits, g = float_to_bf16(x[i]).bits;
    std::memcpy(&f16[2 * i], &h, 2);
    std::memcpy(&bf[2 * i], &g, 2);
  }
  EXPECT_EQ(dequant(GgufType::kF16, f16, 4), x);
  const auto y = dequant(GgufType::kBF16, bf, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], bf16_to_float(float_to_bf16(x[i])));
  // Q8_0 straight to bf16 and fp16: the fp32 values rounded once.
  std::vector<uint8_t> b(34);
  put_half(b, 0, 0.5f);
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 7 - 100));
  std::vector<bf16> out_bf(32);
  std::vector<fp16> out_h(32);
  gguf_dequantize(GgufType::kQ8_0, b.data(), 32, out_bf.data(), DType::kBF16);
  gguf_dequantize(GgufType::kQ8_0, b.data(), 32, out_h.data(), DType::kFP16);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(bf16_to_float(out_bf[j]), bf16_to_float(float_to_bf16(0.5f * static_cast<float>(j * 7 - 100))));
    EXPECT_EQ(fp16_to_float(out_h[j]), 0.5f * static_cast<float>(j * 7 - 100));
  }
  EXPECT_THROW(gguf_dequantize(GgufType::kQ8_0, b.data(), 31, out_bf.data(), DType::kBF16), Error);
  EXPECT_THROW(gguf_dequantize(GgufType::kI32, b.data(), 4, out_bf.data(), DType::kFP32), Error);
}

// ---------------------------------------------------------------- round trips

std::vector<float> random_weights(int n) {
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

float half_round(float v) { return fp16_to_float(float_to_fp16(v)); }

TEST(GgufRoundTrip, Q8_0ErrorWithinHalfAStep) {
  const auto x = random_weights(32 * 64);
  std::vector<uint8_t> bytes;
  std::vector<float> step;
  for (size_t blk = 0; blk < x.size() / 32; ++blk) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[blk * 32 + j]));
    const float d = half_round(amax / 127.0f);
    std::vector<uint8_t> b(34);
    put_half(b, 0, d);
    for (int j = 0; j < 32; ++j) {
      b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(std::lround(x[blk * 32 + j] / d), -127L, 127L)));
    }
    bytes.insert(bytes.end(), b.begin(), b.end());
    step.push_back(d);
  }
  const auto y = dequant(GgufType::kQ8_0, bytes, static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) EXPECT_LE(std::fabs(y[i] - x[i]), 0.5f * step[i / 32] * 1.01f) << i;
}

TEST(GgufRoundTrip, Q4_0AndQ4_1ErrorBounds) {
  const auto x = random_weights(32 * 64);
  std::vector<uint8_t> b0, b1;
  std::vector<float> s0, s1;
  for (size_t blk = 0; blk < x.size() / 32; ++blk) {
    const float* v = &x[blk * 32];
    // Q4_0: the value of largest magnitude maps to -8.
    float max = 0;
    for (int j = 0; j < 32; ++j) if (std::fabs(v[j]) > std::fabs(max)) max = v[j];
    const float d0 = half_round(max / -8.0f);
    std::vector<uint8_t> a(18);
    put_half(a, 0, d0);
    auto q0 = [&](int j) { return static_cast<int>(std::clamp(std::lround(v[j] / d0) + 8, 0L, 15L)); };
    for (int j = 0; j < 16; ++j) a[2 + j] = static_cast<uint8_t>(q0(j) | (q0(j + 16) << 4));
    b0.insert(b0.end(), a.begin(), a.end());
    s0.push_back(std::fabs(d0));
    // Q4_1: [min, max] in 15 steps.
    float lo = v[0], hi = v[0];
    for (int j = 0; j < 32; ++j) lo = std::min(lo, v[j]), hi = std::max(hi, v[j]);
    const float d1 = half_round((hi - lo) / 15.0f), m = half_round(lo);
    std::vector<uint8_t> c(20);
    put_half(c, 0, d1);
    put_half(c, 2, m);
    auto q1 = [&](int j) { return static_cast<int>(std::clamp(std::lround((v[j] - m) / d1), 0L, 15L)); };
    for (int j = 0; j < 16; ++j) c[4 + j] = static_cast<uint8_t>(q1(j) | (q1(j + 16) << 4));
    b1.insert(b1.end(), c.begin(), c.end());
    s1.push_back(d1);
  }
  const auto y0 = dequant(GgufType::kQ4_0, b0, static_cast<int64_t>(x.size()));
  const auto y1 = dequant(GgufType::kQ4_1, b1, static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(y0[i] - x[i]), 1.01f * s0[i / 32]) << i;  // one step where +8 clamps to 7
    EXPECT_LE(std::fabs(y1[i] - x[i]), 0.51f * s1[i / 32] + 1e-3f * std::fabs(x[i]) + 1e-4f) << i;
  }
}

TEST(GgufRoundTrip, Q6_KRelativeError) {
  const auto x = random_weights(256 * 8);
  std::vector<uint8_t> bytes;
  for (size_t blk = 0; blk < x.size() / 256; ++blk) {
    const float* v = &x[blk * 256];
    float sub[16] = {};
    for (int k = 0; k < 256; ++k) sub[k / 16] = std::max(sub[k / 16], std::fabs(v[k]) / 31.0f);
    float smax = 0;
    for (float s : sub) smax = std::max(smax, s);
    const float d = half_round(smax / 127.0f);
    std::vector<uint8_t> b(210, 0);
    std::vector<int> sc(16);
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<int>(std::clamp(std::lround(sub[j] / d), 1L, 127L));
    for (int k = 0; k < 256; ++k) {
      const int q = static_cast<int>(std::clamp(std::lround(v[k] / (d * static_cast<float>(sc[k / 16]))), -32L, 31L));
      const int n = k / 128, g = (k % 128) / 32, l = k % 32, u = q + 32;
      b[64 * n + l + (g % 2) * 32] |= static_cast<uint8_t>((u & 15) << (g < 2 ? 0 : 4));
      b[128 + 32 * n + l] |= static_cast<uint8_t>((u >> 4) << (2 * g));
    }
    for (int j = 0; j < 16; ++j) b[192 + j] = static_cast<uint8_t>(sc[j]);
    put_half(b, 208, d);
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  const auto y = dequant(GgufType::kQ6_K, bytes, static_cast<int64_t>(x.size()));
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) err += (y[i] - x[i]) * (y[i] - x[i]), ref += x[i] * x[i];
  EXPECT_LT(std::sqrt(err / ref), 0.03);
}

}  // namespace
}  // namespace retro::runtime
