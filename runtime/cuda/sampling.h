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

// Greedy picks of a vocabulary split over tensor-parallel ranks gather one candidate per row and
// rank instead of the logits: each rank's best, then the best of those.
struct ArgmaxCandidate {
  float value = 0.0f;
  int32_t index = -1;  // -1: the row holds a NaN
};

// out[r] = the largest of logits[r * ld + c] for c in [0, cols) and its column + index_offset (lowest
// on ties, as runtime::argmax); index -1 when the row holds a NaN. One block per row.
cudaError_t argmax_rows(const float* logits, int64_t rows, int64_t cols, int64_t ld, int64_t index_offset,
                        ArgmaxCandidate* out, cudaStream_t stream);

// out[r] = the index of the best candidate of row r among candidates[p * rows + r], p in [0, parts)
// (largest value, lowest index on ties); -1 when any of them is -1.
cudaError_t pick_best_candidates(const ArgmaxCandidate* candidates, int parts, int64_t rows, int32_t* out,
                                 cudaStream_t stream);

}  // namespace retro::runtime::cuda
