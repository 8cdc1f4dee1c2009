#pragma once
// Stream-ordered writes into device page tables (host_store.h). The pointers travel as kernel
// arguments, so no host buffer has to outlive the call.

#include <cuda_runtime.h>

#include <cstdint>

namespace retro::attention::cuda {

// Writes `count` page pointers into table[first .. first + count) (device) on stream.
cudaError_t write_page_table(void** table, int64_t first, void* const* pages, int count, cudaStream_t stream);

}  // namespace retro::attention::cuda
