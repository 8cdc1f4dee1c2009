#pragma once
// Element types of the runtime and their exact host-side conversions.
//
// bf16 / fp16 / fp8-e4m3 are stored as raw bits on the host; arithmetic happens in fp32 after
// conversion. Every float -> narrow conversion rounds to nearest, ties to even (the rounding of
// CUDA's __float2bfloat16_rn, __float2half_rn and __nv_cvt_float_to_fp8(..., __NV_SATFINITE, E4M3)).

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace retro {

enum class DType : uint8_t { kBF16, kFP16, kFP32, kInt32, kInt8, kFP8E4M3 };

inline constexpr DType kAllDTypes[] = {DType::kBF16, DType::kFP16,   DType::kFP32,
                                       DType::kInt32, DType::kInt8, DType::kFP8E4M3};

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "bf16", "fp16", "fp32", "int32", "int8", "fp8_e4m3"
// Accepts our names and the common aliases ("bfloat16", "float16", "float32", "F32", "BF16", ...).
// Throws retro::Error naming the string when it is not a dtype.
DType parse_dtype(std::string_view name);
bool is_floating(DType dtype);

struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};
// OCP FP8 E4M3 ("e4m3fn"): bias 7, no infinities, 0x7F / 0xFF are NaN, largest finite 448.
struct fp8_e4m3 {
  uint8_t bits;
};

bf16 float_to_bf16(float x);
float bf16_to_float(bf16 x);
fp16 float_to_fp16(float x);  // overflow (|x| >= 65520) gives +-inf, as IEEE rounding does
float fp16_to_float(fp16 x);
fp8_e4m3 float_to_fp8_e4m3(float x);  // saturates to +-448; NaN stays NaN
float fp8_e4m3_to_float(fp8_e4m3 x);

inline constexpr float kFp8E4M3Max = 448.0f;

inline float to_float(bf16 x) { return bf16_to_float(x); }
inline float to_float(fp16 x) { return fp16_to_float(x); }
inline float to_float(fp8_e4m3 x) { return fp8_e4m3_to_float(x); }
inline float to_float(float x) { return x; }

template <typename T>
T from_float(float x);
template <>
inline bf16 from_float<bf16>(float x) { return float_to_bf16(x); }
template <>
inline fp16 from_float<fp16>(float x) { return float_to_fp16(x); }
template <>
inline fp8_e4m3 from_float<fp8_e4m3>(float x) { return float_to_fp8_e4m3(x); }
template <>
inline float from_float<float>(float x) { return x; }

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<bf16> { static constexpr DType value = DType::kBF16; };
template <>
struct DTypeOf<fp16> { static constexpr DType value = DType::kFP16; };
template <>
struct DTypeOf<float> { static constexpr DType value = DType::kFP32; };
template <>
struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <>
struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <>
struct DTypeOf<fp8_e4m3> { static constexpr DType value = DType::kFP8E4M3; };
template <typename T>
inline constexpr DType dtype_of = DTypeOf<T>::value;

// Converts n contiguous host elements between any two dtypes (floating <-> floating, or integer
// <-> integer of the same dtype). Float -> int is refused: it is never what a loader means.
void convert_host(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

}  // namespace retro
