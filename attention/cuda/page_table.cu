// Page-table writes of the host store (page_table.h).

#include "attention/cuda/page_table.h"

namespace retro::attention::cuda {

namespace {

constexpr int kPagesPerLaunch = 32;

struct PageBatch {
  void* pages[kPagesPerLaunch];
};

__global__ void write_pages_kernel(void** table, PageBatch batch, int count) {
  if (int(threadIdx.x) < count) table[threadIdx.x] = batch.pages[threadIdx.x];
}

}  // namespace

cudaError_t write_page_table(void** table, int64_t first, void* const* pages, int count, cudaStream_t stream) {
  if (count < 0 || (count > 0 && (table == nullptr || pages == nullptr))) return cudaErrorInvalidValue;
  for (int done = 0; done < count; done += kPagesPerLaunch) {
    const int n = count - done < kPagesPerLaunch ? count - done : kPagesPerLaunch;
    PageBatch batch{};
    for (int i = 0; i < n; ++i) batch.pages[i] = pages[done + i];
    write_pages_kernel<<<1, kPagesPerLaunch, 0, stream>>>(table + first + done, batch, n);
    const cudaError_t st = cudaGetLastError();
    if (st != cudaSuccess) return st;
  }
  return cudaSuccess;
}

}  // namespace retro::attention::cuda
