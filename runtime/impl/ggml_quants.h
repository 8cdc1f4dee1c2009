#pragma once
// Dequantization of ggml's block formats to fp32, byte for byte as ggml-common.h lays them out.
// Every function converts n_blocks whole blocks from src (raw file bytes, little-endian) into dst.

#include <cstddef>
#include <cstdint>

namespace retro::runtime::impl {

// Elements and bytes per block.
inline constexpr int kQK = 32;      // Q4_0 .. Q8_1
inline constexpr int kQK_K = 256;   // K-quants (super-blocks)
inline constexpr size_t kQ4_0Bytes = 2 + 16;
inline constexpr size_t kQ4_1Bytes = 2 + 2 + 16;
inline constexpr size_t kQ5_0Bytes = 2 + 4 + 16;
inline constexpr size_t kQ5_1Bytes = 2 + 2 + 4 + 16;
inline constexpr size_t kQ8_0Bytes = 2 + 32;
inline constexpr size_t kQ8_1Bytes = 2 + 2 + 32;
inline constexpr size_t kQ2_KBytes = 16 + 64 + 2 + 2;
inline constexpr size_t kQ3_KBytes = 32 + 64 + 12 + 2;
inline constexpr size_t kQ4_KBytes = 2 + 2 + 12 + 128;
inline constexpr size_t kQ5_KBytes = 2 + 2 + 12 + 32 + 128;
inline constexpr size_t kQ6_KBytes = 128 + 64 + 16 + 2;
inline constexpr size_t kQ8_KBytes = 4 + 256 + 32;

void dequantize_q4_0(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q4_1(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q5_0(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q5_1(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q8_0(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q8_1(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q2_k(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q3_k(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q4_k(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q5_k(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q6_k(const uint8_t* src, float* dst, int64_t n_blocks);
void dequantize_q8_k(const uint8_t* src, float* dst, int64_t n_blocks);

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block, from its 12 packed
// bytes: sub-blocks 0-3 keep 6 bits in bytes j and j+4; sub-blocks 4-7 keep their low 4 bits in
// byte j+4 and their top 2 bits in the top bits of bytes j-4 (scale) and j (min).
void k4_scale_min(int j, const uint8_t* packed, uint8_t& scale, uint8_t& min);

}  // namespace retro::runtime::impl
