#pragma once
// Next-token sampling on the GPU: greedy, temperature, top-k and top-p for many rows at once, each
// row with its own parameters and its own uniform number, so a batched decode step samples every
// sequence without bringing logits to the host. The twin of runtime::sample_token (sampler.h): for
// the same logits, parameters and uniform it picks the same token (up to summation order of the
// probability masses, which can only matter when u falls within rounding of a boundary).

#include <cuda_runtime.h>

#include <cstdint>

namespace retro::runtime::cuda {

// Per-row parameters (device arrays of `rows` entries).
struct SamplingRows {
  const float* temperature = nullptr;  // <= 0: greedy (argmax, lowest id on ties)
  const int32_t* top_k = nullptr;      // 0 (or >= vocab): no top-k cut
  const float* top_p = nullptr;        // in (0, 1]; 1: no nucleus cut
  const double* uniform = nullptr;     // [0, 1): where the row's draw lands (Sampler::next_uniform)
};

// out[r] = the token sampled from logits[r, :] ([rows, vocab] fp32); -1 when the row holds a NaN.
// One block per row; no synchronisation (graph-capturable).
cudaError_t sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingRows& params, int32_t* out,
                        cudaStream_t stream);

}  // namespace retro::runtime::cuda
