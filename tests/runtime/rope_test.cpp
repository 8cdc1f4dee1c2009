// RoPE frequencies against values worked by hand for small dimensions (default, linear, the three
// regimes of llama3 scaling, yarn's ramp and attention factor) and the rotation's defining properties.

#include "runtime/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "runtime/core/error.h"

namespace retro::runtime {
namespace {

void expect_rel_near(float actual, double expected, double rel) {
  EXPECT_NEAR(actual, expected, std::abs(expected) * rel) << "expected " << expected;
}

TEST(RopeFrequencies, DefaultIsInversePowersOfTheta) {
  // dim 8, theta 10^4: theta^(2i/8) = 1, 10, 100, 1000.
  RopeFrequencies f = compute_rope_frequencies(8, 10000.0f, RopeScaling{}, 0);
  ASSERT_EQ(f.inv_freq.size(), 4u);
  expect_rel_near(f.inv_freq[0], 1.0, 1e-7);
  expect_rel_near(f.inv_freq[1], 0.1, 1e-6);
  expect_rel_near(f.inv_freq[2], 0.01, 1e-6);
  expect_rel_near(f.inv_freq[3], 0.001, 1e-6);
  EXPECT_EQ(f.attention_scaling, 1.0f);
}

TEST(RopeFrequencies, LinearScalingDividesEveryFrequency) {
  RopeScaling s;
  s.type = RopeScalingType::kLinear;
  s.factor = 4.0f;
  RopeFrequencies f = compute_rope_frequencies(8, 10000.0f, s, 0);
  expect_rel_near(f.inv_freq[0], 0.25, 1e-7);
  expect_rel_near(f.inv_freq[3], 0.00025, 1e-6);
  EXPECT_EQ(f.attention_scaling, 1.0f);
}

TEST(RopeFrequencies, Llama3KeepsHighDividesLowAndBlendsMiddle) {
  // dim 6, theta 10^6: inv_freq 1, 1e-2, 1e-4; wavelengths 2*pi, 628.3, 62832.
  // original context 1000, low 1, high 4: wavelengths below 250 are kept, above 1000 divided by 8,
  // 628.3 is blended with smooth = (1000 / 628.3185 - 1) / 3 = 0.1971831:
  // 1e-2 * ((1 - 0.1971831) / 8 + 0.1971831) = 0.002975352.
  RopeScaling s;
  s.type = RopeScalingType::kLlama3;
  s.factor = 8.0f;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_position_embeddings = 1000;
  RopeFrequencies f = compute_rope_frequencies(6, 1e6f, s, 0);
  ASSERT_EQ(f.inv_freq.size(), 3u);
  expect_rel_near(f.inv_freq[0], 1.0, 1e-6);
  expect_rel_near(f.inv_freq[1], 0.002975352, 1e-5);
  expect_rel_near(f.inv_freq[2], 1.25e-5, 1e-5);
}

TEST(RopeFrequencies, Llama31ShapesFollowThePiecewiseRule) {
  RopeScaling s;
  s.type = RopeScalingType::kLlama3;
  s.factor = 8.0f;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_position_embeddings = 8192;
  RopeFrequencies scaled = compute_rope_frequencies(128, 500000.0f, s, 131072);
  RopeFrequencies plain = compute_rope_frequencies(128, 500000.0f, RopeScaling{}, 131072);
  ASSERT_EQ(scaled.inv_freq.size(), 64u);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < 64; ++i) {
    const double wavelen = 2 * M_PI / plain.inv_freq[i];
    const double ratio = scaled.inv_freq[i] / plain.inv_freq[i];
    if (wavelen < 2048) {
      EXPECT_NEAR(ratio, 1.0, 1e-6) << i;
      ++kept;
    } else if (wavelen > 8192) {
      EXPECT_NEAR(ratio, 1.0 / 8, 1e-6) << i;
      ++divided;
    } else {
      EXPECT_GT(ratio, 1.0 / 8);
      EXPECT_LT(ratio, 1.0);
      ++blended;
    }
    if (i > 0) {
      EXPECT_LT(scaled.inv_freq[i], scaled.inv_freq[i - 1]) << "frequencies stay ordered at " << i;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

RopeScaling yarn(float factor, int original) {
  RopeScaling s;
  s.type = RopeScalingType::kYarn;
  s.factor = factor;
  s.original_max_position_embeddings = original;
  return s;
}

TEST(RopeFrequencies, YarnRampMatchesHandComputation) {
  // dim 8, theta 10^4, factor 4, original 2048. Correction dims: 8 ln(2048 / (32 * 2 pi)) / (2 ln 10^4) = 1.008
  // -> floor 1; 8 ln(2048 / (2 pi)) / (2 ln 10^4) = 2.513 -> ceil 3. Ramp over i: (i - 1) / 2 clamped:
  // 0, 0, 0.5, 1, so frequencies 0 and 1 extrapolate (unchanged), 3 interpolates (divided by 4), 2 is half
  // of each: 0.5 / 400 + 0.5 / 100 = 0.00625. Attention factor 0.1 ln 4 + 1.
  RopeFrequencies f = compute_rope_frequencies(8, 10000.0f, yarn(4.0f, 2048), 0);
  expect_rel_near(f.inv_freq[0], 1.0, 1e-6);
  expect_rel_near(f.inv_freq[1], 0.1, 1e-6);
  expect_rel_near(f.inv_freq[2], 0.00625, 1e-6);
  expect_rel_near(f.inv_freq[3], 0.00025, 1e-6);
  expect_rel_near(f.attention_scaling, 1.1386294, 1e-6);
}

TEST(RopeFrequencies, YarnWithoutTruncationUsesTheExactRange) {
  // Range [1.007989, 2.513150]: ramp at i = 2 is 0.659072, so 0.659072 / 400 + 0.340928 / 100.
  RopeScaling s = yarn(4.0f, 2048);
  s.truncate = false;
  RopeFrequencies f = compute_rope_frequencies(8, 10000.0f, s, 0);
  expect_rel_near(f.inv_freq[2], 0.00505696, 1e-4);
  expect_rel_near(f.inv_freq[1], 0.1, 1e-6);      // below the range start: kept
  expect_rel_near(f.inv_freq[3], 0.00025, 1e-6);  // above the range end: divided by the factor
}

TEST(RopeFrequencies, YarnAttentionFactorFromMscalesOrExplicit) {
  RopeScaling s = yarn(4.0f, 2048);
  s.mscale = 1.0f;
  s.mscale_all_dim = 0.5f;
  // (0.1 * 1 * ln 4 + 1) / (0.1 * 0.5 * ln 4 + 1) = 1.1386294 / 1.0693147
  expect_rel_near(compute_rope_frequencies(8, 10000.0f, s, 0).attention_scaling, 1.0648221, 1e-6);
  s.attention_factor = 0.75f;
  EXPECT_FLOAT_EQ(compute_rope_frequencies(8, 10000.0f, s, 0).attention_scaling, 0.75f);
  // Missing original context: max_position_embeddings stands in.
  RopeScaling t = yarn(4.0f, 0);
  EXPECT_EQ(compute_rope_frequencies(8, 10000.0f, t, 2048).inv_freq,
            compute_rope_frequencies(8, 10000.0f, yarn(4.0f, 2048), 0).inv_freq);
}

TEST(RopeTable, RotatesHalfPairsByPositionTimesFrequency) {
  // head_dim 4, theta 10^4: frequencies 1 and 0.01; pairs (x0, x2) and (x1, x3).
  ModelConfig c;
  c.head_dim = 4;
  c.rope_theta = 10000.0f;
  RopeTable rope(c);
  std::vector<float> x = {1, 2, 3, 4};
  const int64_t pos = 1;
  rope.apply(x.data(), 1, 1, 4, &pos);
  EXPECT_NEAR(x[0], 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(x[2], 3 * std::cos(1.0) + 1 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(x[1], 2 * std::cos(0.01) - 4 * std::sin(0.01), 1e-6);
  EXPECT_NEAR(x[3], 4 * std::cos(0.01) + 2 * std::sin(0.01), 1e-6);
}

TEST(RopeTable, PositionZeroIsIdentityAndScoresDependOnlyOnDistance) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000.0f;
  RopeTable rope(c);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> q(64), k(64);
  for (auto& v : q) v = normal(rng);
  for (auto& v : k) v = normal(rng);

  std::vector<float> q0 = q;
  const int64_t zero = 0;
  rope.apply(q0.data(), 1, 1, 64, &zero);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(q0[i], q[i]);

  auto score = [&](int64_t m, int64_t n) {
    std::vector<float> a = q, b = k;
    rope.apply(a.data(), 1, 1, 64, &m);
    rope.apply(b.data(), 1, 1, 64, &n);
    double s = 0, na = 0, nq = 0;
    for (int i = 0; i < 64; ++i) {
      s += static_cast<double>(a[i]) * b[i];
      na += static_cast<double>(a[i]) * a[i];
      nq += static_cast<double>(q[i]) * q[i];
    }
    EXPECT_NEAR(na, nq, 1e-4 * nq);  // a rotation keeps the norm
    return s;
  };
  EXPECT_NEAR(score(5, 3), score(105, 103), 1e-3);
  EXPECT_NEAR(score(17, 40), score(1017, 1040), 1e-3);
}

TEST(RopeTable, TensorFormRotatesEveryHeadAtItsTokensPosition) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000.0f;
  RopeTable rope(c);
  // [2 tokens, 3 heads, 8]
  std::vector<float> x(48);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7) - 3.0f;
  std::vector<float> expected = x;
  const std::vector<int64_t> positions = {9, 2};
  for (int t = 0; t < 2; ++t)
    for (int h = 0; h < 3; ++h) rope.apply(expected.data() + (t * 3 + h) * 8, 1, 1, 8, &positions[t]);
  rope.apply(Tensor(x.data(), DType::kFP32, {2, 3, 8}), positions);
  EXPECT_EQ(x, expected);
  EXPECT_THROW(rope.apply(Tensor(x.data(), DType::kFP32, {3, 2, 8}), positions), Error);
}

TEST(RopeTable, YarnScalesCosAndSin) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000.0f;
  c.max_position_embeddings = 8192;
  c.rope_scaling = yarn(4.0f, 2048);
  RopeTable rope(c);
  std::vector<float> cos(4), sin(4);
  rope.cos_sin(0, cos.data(), sin.data());
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(cos[i], 1.1386294, 1e-6);
    EXPECT_EQ(sin[i], 0.0f);
  }
}

}  // namespace
}  // namespace retro::runtime
