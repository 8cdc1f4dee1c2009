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
