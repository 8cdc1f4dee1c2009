#pragma once
// Exchanging two device regions in place, stream-ordered: how a sequence moves between two slots
// of a batched model without a scratch copy of its state.

#include <cuda_runtime.h>

#include <cstddef>

namespace retro::cuda {

// Swaps the n bytes at a with the n bytes at b (device memory, the regions must not overlap).
cudaError_t swap_device_bytes(void* a, void* b, size_t n, cudaStream_t stream);

}  // namespace retro::cuda
