// Host store of the wave buffer: pinned pages carved from chunks, grown per group on demand, the
// device page table pointing at exactly the pages the host writes, pages reused after release, and
// a clear error past the pinned capacity. Label gpu (pinned memory needs a device).

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/system_info.h"
#include "tests/test_support.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/host_store.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

class HostStoreGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
  }
};

TEST_F(HostStoreGpu, PageTablesPointAtTheHostRowsAndGrowOnDemand) {
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  const int groups = 3, d = 64;
  const int64_t page_rows = 16;
  cuda::HostPagePool pool(size_t(page_rows) * d * 2, size_t(page_rows) * d * 2 * 5, *pinned);
  cuda::HostKvStore store(groups, d, 2, 100, pool, *device);
  EXPECT_EQ(store.page_rows(), page_rows);
  EXPECT_EQ(store.max_pages(), 7);  // ceil(100 / 16)
  EXPECT_EQ(store.capacity_rows(1), 0);
  store.reserve(1, 17, nullptr);  // two pages
  store.reserve(2, 1, nullptr);
  store.reserve(1, 40, nullptr);  // a third page, appended
  EXPECT_EQ(store.capacity_rows(1), 48);
  EXPECT_EQ(store.capacity_rows(2), 16);
  EXPECT_EQ(pool.pages_in_use(), 8u);  // 4 K + 4 V
  EXPECT_EQ(store.bytes_in_use(), 8 * pool.page_bytes());

  cuda::HostStoreView view = store.view();
  std::vector<void*> k(size_t(groups) * view.max_pages), v(k.size());
  ASSERT_EQ(cudaMemcpy(k.data(), view.k_pages, k.size() * sizeof(void*), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(v.data(), view.v_pages, v.size() * sizeof(void*), cudaMemcpyDeviceToHost), cudaSuccess);
  std::set<void*> distinct;
  for (int g = 0; g < groups; ++g)
    for (int p = 0; p < view.max_pages; ++p) {
      const size_t i = size_t(g) * view.max_pages + p;
      const int64_t rows = store.capacity_rows(g);
      if (p * page_rows < rows) {
        EXPECT_EQ(k[i], store.row(g, p * page_rows, false)) << g << "/" << p;
        EXPECT_EQ(v[i], store.row(g, p * page_rows, true)) << g << "/" << p;
        distinct.insert(k[i]);
        distinct.insert(v[i]);
      } else {
        EXPECT_EQ(k[i], nullptr);
        EXPECT_EQ(v[i], nullptr);
      }
    }
  EXPECT_EQ(distinct.size(), 8u);
  // Rows inside a page are head_dim apart.
  EXPECT_EQ(static_cast<char*>(store.row(1, 20, false)) - static_cast<char*>(store.row(1, 16, false)), 4 * d * 2);

  // A page written on the host is what the device sees through the table.
  std::vector<uint16_t> pattern(static_cast<size_t>(d));
  for (int i = 0; i < d; ++i) pattern[size_t(i)] = uint16_t(1000 + i);
  std::memcpy(store.row(1, 33, true), pattern.data(), size_t(d) * 2);
  std::vector<uint16_t> seen(static_cast<size_t>(d));
  ASSERT_EQ(cudaMemcpy(seen.data(), static_cast<char*>(v[size_t(view.max_pages) + 2]) + 1 * d * 2, size_t(d) * 2,
                       cudaMemcpyDefault),
            cudaSuccess);
  EXPECT_EQ(seen, pattern);

  // Released pages go back to the pool and come out again before a new chunk is pinned.
  const size_t pinned_before = pool.pinned_bytes();
  store.release(1, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(pool.pages_in_use(), 2u);
  EXPECT_EQ(store.capacity_rows(1), 0);
  ASSERT_EQ(cudaMemcpy(k.data(), view.k_pages, k.size() * sizeof(void*), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int p = 0; p < view.max_pages; ++p) EXPECT_EQ(k[size_t(view.max_pages) + p], nullptr);
  store.reserve(0, 48, nullptr);
  EXPECT_EQ(pool.pinned_bytes(), pinned_before);

  test_support::expect_error([&] { store.reserve(0, 101, nullptr); }, ErrorKind::kInvalidArgument,
                             {"101 rows for group 0 exceed the 100 rows"});
}

// upload_rows: device rows land in the pages row for row, across page boundaries, the rows around
// them untouched; rows past the reservation are a clear error.
TEST_F(HostStoreGpu, UploadedRowsLandInThePagesAcrossPageBoundaries) {
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  const int d = 32;
  const int64_t page_rows = 8, row0 = 5, count = 19;  // rows 5..23: pages 0, 1, 2
  cuda::HostPagePool pool(size_t(page_rows) * d, size_t(page_rows) * d * 8, *pinned);
  cuda::HostKvStore store(2, d, 1, 64, pool, *device);
  store.reserve(1, 32, nullptr);
  for (int64_t r = 0; r < 32; ++r) {
    std::memset(store.row(1, r, false), 0xAA, size_t(d));
    std::memset(store.row(1, r, true), 0xBB, size_t(d));
  }
  std::vector<uint8_t> k(size_t(count) * d), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = uint8_t(i * 7 + 1);
    v[i] = uint8_t(i * 13 + 2);
  }
  void *dk = nullptr, *dv = nullptr;
  ASSERT_EQ(cudaMalloc(&dk, k.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dv, v.size()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dk, k.data(), k.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dv, v.data(), v.size(), cudaMemcpyHostToDevice), cudaSuccess);
  store.upload_rows(1, row0, count, dk, dv, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int64_t r = 0; r < 32; ++r) {
    const bool in = r >= row0 && r < row0 + count;
    for (int i = 0; i < d; ++i) {
      const size_t at = size_t(r - row0) * d + size_t(i);
      ASSERT_EQ(static_cast<uint8_t*>(store.row(1, r, false))[i], in ? k[at] : 0xAA) << "row " << r << " K " << i;
      ASSERT_EQ(static_cast<uint8_t*>(store.row(1, r, true))[i], in ? v[at] : 0xBB) << "row " << r << " V " << i;
    }
  }
  test_support::expect_error([&] { store.upload_rows(1, 30, 3, dk, dv, nullptr); }, ErrorKind::kInvalidArgument,
                             {"rows [30, 33) of group 1 holding 32"});
  cudaFree(dk);
  cudaFree(dv);
}

TEST_F(HostStoreGpu, PinnedCapacityIsAClearError) {
  const size_t page = 64 * 2 * 8;
  auto pinned = make_pinned_host_allocator(3 * page);
  cuda::HostPagePool pool(page, 2 * page, *pinned);
  void* a = pool.acquire();
  void* b = pool.acquire();
  EXPECT_NE(a, b);
  test_support::expect_error([&] { pool.acquire(); }, ErrorKind::kOutOfMemory, {"host KV store is full"});
  pool.release(a);
  EXPECT_EQ(pool.acquire(), a);
}

#else
TEST(HostStoreGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
