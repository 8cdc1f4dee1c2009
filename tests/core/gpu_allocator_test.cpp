// Device and pinned-host allocators on a real GPU (label gpu; skipped without one).

#include <gtest/gtest.h>

#include "runtime/core/allocator.h"
#include "runtime/core/error.h"
#include "runtime/core/system_info.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace retro {
namespace {

void skip_without_gpu() {
  CudaRuntimeInfo info = query_cuda_runtime();
  if (!info.built_with_cuda) GTEST_SKIP() << "built without CUDA";
  if (query_gpus().empty()) GTEST_SKIP() << "no CUDA device: " << info.error;
}

TEST(GpuAllocator, DeviceMemoryIsAccountedAndCapped) {
  skip_without_gpu();
  if (testing::Test::IsSkipped()) return;
  auto dev = make_device_allocator(0, size_t{64} << 20);
  Buffer a = dev->allocate(size_t{48} << 20, MemoryPurpose::kKvCache);
  EXPECT_EQ(dev->accounting().usage(MemoryPurpose::kKvCache).live_bytes, size_t{48} << 20);
  EXPECT_THROW(dev->allocate(size_t{32} << 20, MemoryPurpose::kWorkspace), Error);
#ifdef RETRO_WITH_CUDA
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, a.data()), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
#endif
}

TEST(GpuAllocator, PinnedHostMemoryIsMappedForKernels) {
  skip_without_gpu();
  if (testing::Test::IsSkipped()) return;
  auto pinned = make_pinned_host_allocator();
  Buffer b = pinned->allocate(1 << 20, MemoryPurpose::kKvHost);
#ifdef RETRO_WITH_CUDA
  void* dptr = nullptr;
  ASSERT_EQ(cudaHostGetDevicePointer(&dptr, b.data(), 0), cudaSuccess);
  EXPECT_NE(dptr, nullptr);
#endif
  EXPECT_EQ(pinned->accounting().usage(MemoryPurpose::kKvHost).live_bytes, size_t{1} << 20);
}

TEST(GpuInfo, VisibleGpusReportSaneProperties) {
  skip_without_gpu();
  if (testing::Test::IsSkipped()) return;
  for (const GpuInfo& g : query_gpus()) {
    EXPECT_GT(g.total_memory, 0u);
    EXPECT_GT(g.multiprocessors, 0);
    EXPECT_GT(g.peak_memory_bandwidth_gbs, 100.0);
  }
}

}  // namespace
}  // namespace retro
