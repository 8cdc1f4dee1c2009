#include "runtime/core/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "runtime/core/error.h"

namespace retro {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 2;
    case DType::kFP16: return 2;
    case DType::kFP32: return 4;
    case DType::kInt32: return 4;
    case DType::kInt8: return 1;
    case DType::kFP8E4M3: return 1;
  }
  RETRO_THROW_KIND(ErrorKind::kInternal, "unknown dtype {}", static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "bf16";
    case DType::kFP16: return "fp16";
    case DType::kFP32: return "fp32";
    case DType::kInt32: return "int32";
    case DType::kInt8: return "int8";
    case DType::kFP8E4M3: return "fp8_e4m3";
  }
  return "unknown";
}

DType parse_dtype(std::string_view name) {
  std::string s(name);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "bf16" || s == "bfloat16" || s == "torch.bfloat16") return DType::kBF16;
  if (s == "fp16" || s == "f16" || s == "float16" || s == "half" || s == "torch.float16") return DType::kFP16;
  if (s == "fp32" || s == "f32" || s == "float32" || s == "float" || s == "torch.float32") return DType::kFP32;
  if (s == "int32" || s == "i32") return DType::kInt32;
  if (s == "int8" || s == "i8") return DType::kInt8;
  if (s == "fp8_e4m3" || s == "f8_e4m3" || s == "fp8" || s == "float8_e4m3fn" || s == "e4m3") return DType::kFP8E4M3;
  RETRO_THROW("unknown dtype '{}' (expected one of bf16, fp16, fp32, int32, int8, fp8_e4m3)", name);
}

bool is_floating(DType dtype) { return dtype != DType::kInt32 && dtype != DType::kInt8; }

bf16 float_to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return bf16{static_cast<uint16_t>((u >> 16) | 0x0040u)};  // quiet NaN, sign kept
  uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);                          // ties to even
  return bf16{static_cast<uint16_t>((u + rounding_bias) >> 16)};
}

float bf16_to_float(bf16 x) { return std::bit_cast<float>(static_cast<uint32_t>(x.bits) << 16); }

namespace {

// Encodes |x| (finite, non-negative) into a small IEEE-like format with kExp exponent bits and kMant
// mantissa bits, rounding to nearest even. Returns the unsigned code; the caller handles sign,
// NaN and overflow (a code above max_code means "too large").
template <int kExp, int kMant>
uint32_t encode_magnitude(float a) {
  constexpr int kBias = (1 << (kExp - 1)) - 1;
  constexpr int kMinNormalExp = 1 - kBias;
  if (a == 0.0f) return 0;
  int e;
  float f = std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  int exp = e - 1;              // a = (2f) * 2^exp, 2f in [1, 2)
  if (exp < kMinNormalExp) {
    // Subnormal: a / 2^(kMinNormalExp - kMant) is exact in float; round it to an integer.
    float q = std::nearbyint(std::ldexp(a, kMant - kMinNormalExp));
    return static_cast<uint32_t>(q);  // q == 2^kMant rolls over into the smallest normal code
  }
  float m = std::nearbyint((2.0f * f - 1.0f) * static_cast<float>(1 << kMant));
  uint32_t mant = static_cast<uint32_t>(m);
  if (mant == (1u << kMant)) {
    mant = 0;
    ++exp;
  }
  return (static_cast<uint32_t>(exp + kBias) << kMant) | mant;
}

}  // namespace

fp16 float_to_fp16(float x) {
  uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  if (std::isnan(x)) return fp16{static_cast<uint16_t>(sign | 0x7E00u)};
  float a = std::fabs(x);
  if (std::isinf(a)) return fp16{static_cast<uint16_t>(sign | 0x7C00u)};
  uint32_t code = encode_magnitude<5, 10>(a);
  if (code >= 0x7C00u) code = 0x7C00u;  // overflow rounds to infinity
  return fp16{static_cast<uint16_t>(sign | code)};
}

float fp16_to_float(fp16 x) {
  uint32_t sign = (x.bits & 0x8000u) ? 1u : 0u;
  uint32_t exp = (x.bits >> 10) & 0x1Fu;
  uint32_t mant = x.bits & 0x3FFu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

fp8_e4m3 float_to_fp8_e4m3(float x) {
  uint8_t sign = std::signbit(x) ? 0x80u : 0u;
  if (std::isnan(x)) return fp8_e4m3{static_cast<uint8_t>(sign | 0x7Fu)};
  float a = std::fabs(x);
  if (a >= kFp8E4M3Max) return fp8_e4m3{static_cast<uint8_t>(sign | 0x7Eu)};  // saturate (inf too)
  uint32_t code = encode_magnitude<4, 3>(a);
  if (code > 0x7Eu) code = 0x7Eu;  // 0x7F is NaN: values rounding past 448 saturate
  return fp8_e4m3{static_cast<uint8_t>(sign | code)};
}

float fp8_e4m3_to_float(fp8_e4m3 x) {
  bool negative = x.bits & 0x80u;
  uint32_t exp = (x.bits >> 3) & 0xFu;
  uint32_t mant = x.bits & 0x7u;
  float v;
  if (exp == 15 && mant == 7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -9);
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x8u), static_cast<int>(exp) - 10);
  }
  return negative ? -v : v;
}

namespace {

float load_as_float(const void* src, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kBF16: return bf16_to_float(static_cast<const bf16*>(src)[i]);
    case DType::kFP16: return fp16_to_float(static_cast<const fp16*>(src)[i]);
    case DType::kFP32: return static_cast<const float*>(src)[i];
    case DType::kFP8E4M3: return fp8_e4m3_to_float(static_cast<const fp8_e4m3*>(src)[i]);
    default: break;
  }
  RETRO_THROW_KIND(ErrorKind::kInternal, "load_as_float on integer dtype {}", dtype_name(dtype));
}

void store_float(void* dst, DType dtype, size_t i, float v) {
  switch (dtype) {
    case DType::kBF16: static_cast<bf16*>(dst)[i] = float_to_bf16(v); return;
    case DType::kFP16: static_cast<fp16*>(dst)[i] = float_to_fp16(v); return;
    case DType::kFP32: static_cast<float*>(dst)[i] = v; return;
    case DType::kFP8E4M3: static_cast<fp8_e4m3*>(dst)[i] = float_to_fp8_e4m3(v); return;
    default: break;
  }
  RETRO_THROW_KIND(ErrorKind::kInternal, "store_float on integer dtype {}", dtype_name(dtype));
}

}  // namespace

void convert_host(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * dtype_size(src_dtype));
    return;
  }
  RETRO_CHECK(is_floating(src_dtype) && is_floating(dst_dtype), "cannot convert {} to {}: only floating dtypes convert",
              dtype_name(src_dtype), dtype_name(dst_dtype));
  if (src_dtype == DType::kBF16 && dst_dtype == DType::kFP32) {
    const auto* s = static_cast<const bf16*>(src);
    auto* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
    return;
  }
  if (src_dtype == DType::kFP32 && dst_dtype == DType::kBF16) {
    const auto* s = static_cast<const float*>(src);
    auto* d = static_cast<bf16*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
    return;
  }
  for (size_t i = 0; i < n; ++i) store_float(dst, dst_dtype, i, load_as_float(src, src_dtype, i));
}

}  // namespace retro
