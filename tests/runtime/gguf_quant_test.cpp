// Dequantization of every GGUF block type against hand-built blocks: the test packs logical
// values (scales, mins, quants) into bytes following the block layouts of the GGML format, and
// expects exactly the value the format defines for each element. Scales are dyadic so every
// expected value is exact in fp32. Round trips through simple quantizers bound the error.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
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

// Random super-blocks (fp16 scales made finite) and values dequantized by gguf-py 0.19.0
// (gguf.quants.dequantize), the Python reference of the format, at a few positions.
TEST(GgufDequant, KQuantsMatchTheReferenceImplementation) {
  struct Golden {
    GgufType type;
    const char* hex;
    std::vector<int> index;
    std::vector<float> value;
  };
  const std::vector<Golden> cases = {
      {GgufType::kQ2_K, "8826d916cdfb21c6c1ff91a761565a702416da6ec212cddb8d8800160eb686b2eb819333b5011c188c53c786ed62c2f971445abc2f0ddac24097acb7a3823bc913d16283160ecc206ebdf9d6297e4c73fa2d592c", {0, 17, 63, 100, 128, 170, 200, 255}, {-0.543457031f, 0.424438477f, 1.05267334f, 0.144287109f, -0.721801758f, -0.331237793f, -0.407592773f, -0.475524902f}},
      {GgufType::kQ3_K, "8b9eec5eb6a004674d81a0d2233ea18bca9783713a5151731e512c3a22389617c344f98dafbf4ce3e35356106efab8dbf0a2dfd32cb9d94610c2b4a1f5734c2ac30912c21f7955b3be36c25a893463116daa7ff83c931872f795a3e4b0198cad0f2444c710c588c2a4d7d3312323", {0, 17, 63, 100, 128, 170, 200, 255}, {-0.710884094f, 0.557556152f, -0.250900269f, 0.669067383f, -0.0f, -0.0f, 0.0418167114f, 0.557556152f}},
      {GgufType::kQ4_K, "be299a28a0faeb8b22847f272be24dbed34bdcaed4c82aec8ebba8be0b4bdc5dc3b7aef7227d2d69694a69532231d1e78172d65e1f3a8b1345cf3478d0aeb1cbea318130f6458376288942213909bdaf4cccc77935bf875429bb163aa710839011ee78ab7ae6b7f02a30e96f01dc2229f4652ad5b73b38a1df9244b33fd8e3189d42f74f356b91c474fa0ed50a5c6a6f", {0, 17, 63, 100, 128, 170, 200, 255}, {3.08435059f, 8.82653809f, 36.2832031f, -0.908569336f, 23.0762939f, 0.589355469f, 40.3286743f, 11.986145f}},
      {GgufType::kQ5_K, "8127fc29b1a8533d7d06b8aeb1d202a39ad1c623453c2ed5172f2d3347de0dce637ee20131e0fdcb41e073c9bbf4c5c76daa33aad79fb878dfb785b45d71f14697dbddc715e13e8e17817b7549696f81e4059991db058a096fbcc9238edad73ec8d7511de6838a70dd741cab57a688a7cec29978fc85e6da3f50b390f347461412f7d6c3c70619935ae67ca2674ebc902d61b78d7b5c2f175333288faa647fcb72accf4d6e9b539a77ade3072cb5f558", {0, 17, 63, 100, 128, 170, 200, 255}, {15.8199005f, 12.9473114f, 27.8591309f, 21.0938873f, 27.7566833f, 26.3007507f, 0.0867614746f, -0.116958618f}},
      {GgufType::kQ6_K, "f8b5cc6f81551ffeb19f78da5da3e1084975e33bba4159d2b0edec0ebb3e0ddb55c608480540ebeae3f5284bdc622f6f575c73a92cef5320bda8998e0db24881938dadc8bcdc00ffc17310aa5371c06827f808682758ff6ad2a363d0ba313b52bebcbe2abd1f94555b75d0050a292c1b69600d17807584c5da8aecb815925fb20e963d768c2591b7781b49297a248fe66a784480d12224f00bedfd261c06517f560d42b24a56e17e344c3772c2018d2a699b8a6137c91f3d72e52f4db00107af34335aa1b039719b51c09f5cc469aef54725", {0, 17, 63, 100, 128, 170, 200, 255}, {8.57568359f, -28.3863373f, -33.2926178f, 0.0f, 5.00935364f, 31.9938965f, -34.6325684f, -2.49436951f}},
  };
  for (const Golden& g : cases) {
    std::vector<uint8_t> b;
    for (const char* p = g.hex; p[0] && p[1]; p += 2) b.push_back(static_cast<uint8_t>(std::stoi(std::string(p, 2), nullptr, 16)));
    ASSERT_EQ(b.size(), gguf_type_traits(static_cast<uint32_t>(g.type))->block_bytes);
    const auto y = dequant(g.type, b, 256);
    for (size_t i = 0; i < g.index.size(); ++i) {
      EXPECT_FLOAT_EQ(y[static_cast<size_t>(g.index[i])], g.value[i]) << gguf_type_name(g.type) << " @" << g.index[i];
    }
  }
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
