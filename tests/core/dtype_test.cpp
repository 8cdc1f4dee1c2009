// Conversions of bf16 / fp16 / fp8-e4m3 against hand-worked values and an independent
// nearest-representable search over every code of the format.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace retro {
namespace {

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kFP16), 2u);
  EXPECT_EQ(dtype_size(DType::kFP32), 4u);
  EXPECT_EQ(dtype_size(DType::kInt32), 4u);
  EXPECT_EQ(dtype_size(DType::kInt8), 1u);
  EXPECT_EQ(dtype_size(DType::kFP8E4M3), 1u);
  for (DType d : kAllDTypes) EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("F16"), DType::kFP16);
  EXPECT_EQ(parse_dtype("float32"), DType::kFP32);
}

TEST(DType, UnknownNameIsRejectedWithTheName) {
  try {
    parse_dtype("float13");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("float13"), std::string::npos) << e.what();
  }
}

TEST(BF16, ReferenceValuesRoundToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3F80);
  EXPECT_EQ(float_to_bf16(-2.0f).bits, 0xC000);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f).bits, 0x3F80);      // tie -> even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f).bits, 0x3F82);  // tie -> even (up)
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f).bits, 0x3F81);  // above the tie
  EXPECT_EQ(float_to_bf16(3.14159265f).bits, 0x4049);
  EXPECT_EQ(float_to_bf16(INFINITY).bits, 0x7F80);
  EXPECT_EQ(float_to_bf16(0x1.fffffep127f).bits, 0x7F80);  // rounds up to inf, as RNE does
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_float(bf16{0x3F80}), 1.0f);
}

TEST(FP16, ReferenceValues) {
  EXPECT_EQ(float_to_fp16(1.0f).bits, 0x3C00);
  EXPECT_EQ(float_to_fp16(65504.0f).bits, 0x7BFF);
  EXPECT_EQ(float_to_fp16(65519.0f).bits, 0x7BFF);
  EXPECT_EQ(float_to_fp16(65520.0f).bits, 0x7C00);  // tie past the largest finite -> inf
  EXPECT_EQ(float_to_fp16(0x1p-24f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_fp16(0x1p-25f).bits, 0x0000);  // tie -> even (zero)
  EXPECT_EQ(float_to_fp16(3 * 0x1p-25f).bits, 0x0002);
  EXPECT_EQ(float_to_fp16(1.0f / 3.0f).bits, 0x3555);
  EXPECT_EQ(float_to_fp16(-0.0f).bits, 0x8000);
  EXPECT_EQ(fp16_to_float(fp16{0x0001}), 0x1p-24f);
  EXPECT_TRUE(std::isinf(fp16_to_float(fp16{0x7C00})));
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(NAN))));
}

TEST(FP8E4M3, ReferenceValues) {
  EXPECT_EQ(float_to_fp8_e4m3(1.0f).bits, 0x38);
  EXPECT_EQ(float_to_fp8_e4m3(448.0f).bits, 0x7E);
  EXPECT_EQ(float_to_fp8_e4m3(500.0f).bits, 0x7E);  // saturates
  EXPECT_EQ(float_to_fp8_e4m3(INFINITY).bits, 0x7E);
  EXPECT_EQ(float_to_fp8_e4m3(-1e9f).bits, 0xFE);
  EXPECT_EQ(float_to_fp8_e4m3(0x1p-9f).bits, 0x01);   // smallest subnormal
  EXPECT_EQ(float_to_fp8_e4m3(0x1p-10f).bits, 0x00);  // tie -> even (zero)
  EXPECT_EQ(float_to_fp8_e4m3(3 * 0x1p-10f).bits, 0x02);
  EXPECT_EQ(float_to_fp8_e4m3(0.1f).bits, 0x1D);
  EXPECT_EQ(float_to_fp8_e4m3(-0.1f).bits, 0x9D);
  EXPECT_EQ(fp8_e4m3_to_float(fp8_e4m3{0x7E}), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(fp8_e4m3{0x08}), 0x1p-6f);  // smallest normal
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(fp8_e4m3{0x7F})));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(float_to_fp8_e4m3(NAN))));
}

// Every code decodes and re-encodes to itself (NaNs excepted).
TEST(DTypeRoundTrip, EveryCodeSurvivesDecodeEncode) {
  for (uint32_t c = 0; c < 65536; ++c) {
    float b = bf16_to_float(bf16{static_cast<uint16_t>(c)});
    if (!std::isnan(b)) { ASSERT_EQ(float_to_bf16(b).bits, c) << std::hex << c; }
    float h = fp16_to_float(fp16{static_cast<uint16_t>(c)});
    if (!std::isnan(h)) { ASSERT_EQ(float_to_fp16(h).bits, c) << std::hex << c; }
  }
  for (uint32_t c = 0; c < 256; ++c) {
    float f = fp8_e4m3_to_float(fp8_e4m3{static_cast<uint8_t>(c)});
    if (!std::isnan(f)) { ASSERT_EQ(float_to_fp8_e4m3(f).bits, c) << std::hex << c; }
  }
}

// Independent reference: the nearest of all finite non-negative values of the format (sorted by
// value), ties to the even code.
template <typename Decode>
uint32_t nearest_code(float a, const std::vector<std::pair<float, uint32_t>>& table) {
  auto it = std::lower_bound(table.begin(), table.end(), a, [](auto& p, float v) { return p.first < v; });
  if (it == table.end()) return table.back().second;
  if (it == table.begin()) return it->second;
  auto lo = it - 1;
  double dlo = static_cast<double>(a) - lo->first, dhi = static_cast<double>(it->first) - a;
  if (dlo < dhi) return lo->second;
  if (dhi < dlo) return it->second;
  return (lo->second % 2 == 0) ? lo->second : it->second;
}

template <typename T, typename Decode>
std::vector<std::pair<float, uint32_t>> positive_table(uint32_t n_codes, Decode decode) {
  std::vector<std::pair<float, uint32_t>> t;
  for (uint32_t c = 0; c < n_codes / 2; ++c) {
    float v = decode(T{static_cast<decltype(T{}.bits)>(c)});
    if (std::isfinite(v)) t.emplace_back(v, c);
  }
  std::sort(t.begin(), t.end());
  return t;
}

TEST(DTypeRoundTrip, RandomFloatsRoundToTheNearestRepresentable) {
  std::mt19937 rng(std::random_device{}());
  auto fp16_table = positive_table<fp16>(65536, fp16_to_float);
  auto fp8_table = positive_table<fp8_e4m3>(256, fp8_e4m3_to_float);
  auto bf16_table = positive_table<bf16>(65536, bf16_to_float);
  std::uniform_real_distribution<float> exponent(-30.0f, 12.0f);
  for (int i = 0; i < 200000; ++i) {
    float a = std::exp2(exponent(rng));
    ASSERT_EQ(float_to_fp16(a).bits & 0x7FFF, std::min<uint32_t>(nearest_code<fp16>(a, fp16_table), 0x7C00)) << a;
    ASSERT_EQ(float_to_fp8_e4m3(a).bits, nearest_code<fp8_e4m3>(a, fp8_table)) << a;
    ASSERT_EQ(float_to_bf16(a).bits, nearest_code<bf16>(a, bf16_table)) << a;
    ASSERT_EQ(float_to_fp8_e4m3(-a).bits, 0x80u | nearest_code<fp8_e4m3>(a, fp8_table)) << -a;
  }
}

TEST(ConvertHost, FloatingDTypesConvertAndIntegersRefuse) {
  std::vector<float> src = {1.0f, -2.5f, 0.1f, 448.0f};
  std::vector<uint16_t> mid(src.size());
  std::vector<float> back(src.size());
  convert_host(src.data(), DType::kFP32, mid.data(), DType::kBF16, src.size());
  convert_host(mid.data(), DType::kBF16, back.data(), DType::kFP32, src.size());
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(back[i], bf16_to_float(float_to_bf16(src[i])));
  std::vector<uint8_t> f8(src.size());
  convert_host(mid.data(), DType::kBF16, f8.data(), DType::kFP8E4M3, src.size());
  EXPECT_EQ(f8[0], 0x38);
  int32_t i32[4] = {};
  EXPECT_THROW(convert_host(src.data(), DType::kFP32, i32, DType::kInt32, 4), Error);
}

}  // namespace
}  // namespace retro
