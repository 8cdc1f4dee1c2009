// Allocator accounting: live and peak bytes per purpose, capacities, and the out-of-memory error.

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

namespace retro {
namespace {

TEST(Allocator, CountsLiveAndPeakBytesPerPurpose) {
  auto host = make_host_allocator();
  const MemoryAccounting& acc = host->accounting();
  {
    Buffer w = host->allocate(1000, MemoryPurpose::kWeights);
    Buffer kv = host->allocate(3000, MemoryPurpose::kKvHost);
    EXPECT_EQ(acc.usage(MemoryPurpose::kWeights).live_bytes, 1000u);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes, 3000u);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_allocations, 1u);
    EXPECT_EQ(acc.total().live_bytes, 4000u);
    kv.reset();
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).live_bytes, 0u);
    EXPECT_EQ(acc.usage(MemoryPurpose::kKvHost).peak_bytes, 3000u);
    Buffer kv2 = host->allocate(500, MemoryPurpose::kKvHost);
    EXPECT_EQ(acc.total().peak_bytes, 4000u);  // peak of the sum, not sum of peaks
  }
  EXPECT_EQ(acc.total().live_bytes, 0u);
  EXPECT_EQ(acc.total().live_allocations, 0u);
  host->accounting().reset_peaks();
  EXPECT_EQ(acc.total().peak_bytes, 0u);
}

TEST(Allocator, MovedBuffersReleaseOnce) {
  auto host = make_host_allocator();
  Buffer a = host->allocate(256, MemoryPurpose::kIndex);
  Buffer b = std::move(a);
  EXPECT_FALSE(a);
  EXPECT_TRUE(b);
  std::vector<Buffer> v;
  v.push_back(std::move(b));
  v.clear();
  EXPECT_EQ(host->accounting().usage(MemoryPurpose::kIndex).live_bytes, 0u);
}

TEST(Allocator, CapacityIsEnforcedWithAMessageNamingPurposeAndUsage) {
  auto host = make_host_allocator(/*capacity_bytes=*/4096);
  Buffer a = host->allocate(3000, MemoryPurpose::kKvCache);
  EXPECT_EQ(host->available(), 1096u);
  EXPECT_TRUE(host->can_allocate(1096));
  EXPECT_FALSE(host->can_allocate(1097));
  try {
    host->allocate(2000, MemoryPurpose::kWorkspace);
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfMemory);
    std::string m = e.what();
    EXPECT_NE(m.find("workspace"), std::string::npos) << m;
    EXPECT_NE(m.find("kv-cache 2.93 KiB"), std::string::npos) << m;
    EXPECT_NE(m.find("4.00 KiB"), std::string::npos) << m;
  }
  // The failed request left nothing behind.
  EXPECT_EQ(host->accounting().total().live_bytes, 3000u);
  a.reset();
  EXPECT_NO_THROW(host->allocate(4096, MemoryPurpose::kWorkspace));
}

TEST(Allocator, ConcurrentAllocationsBalance) {
  auto host = make_host_allocator();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&host, t] {
      for (int i = 0; i < 1000; ++i) {
        Buffer b = host->allocate(64 + static_cast<size_t>(i % 7) * 64, static_cast<MemoryPurpose>(t % 6));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(host->accounting().total().live_bytes, 0u);
  EXPECT_GT(host->accounting().total().peak_bytes, 0u);
}

TEST(Allocator, ZeroBytesGiveAnEmptyBufferAndBadAlignmentIsRejected) {
  auto host = make_host_allocator();
  EXPECT_FALSE(host->allocate(0, MemoryPurpose::kWorkspace));
  EXPECT_THROW(host->allocate(64, MemoryPurpose::kWorkspace, 3), Error);
}

TEST(Allocator, ReportListsEveryLiveAllocator) {
  auto host = make_host_allocator(1 << 20);
  Buffer b = host->allocate(1 << 10, MemoryPurpose::kActivations);
  bool found = false;
  for (const auto& r : report_allocators()) {
    if (r.capacity_bytes == (1u << 20) && r.by_purpose[static_cast<size_t>(MemoryPurpose::kActivations)].live_bytes == 1024u)
      found = true;
  }
  EXPECT_TRUE(found);
}

TEST(Allocator, FormatBytes) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(size_t{16} << 30), "16.00 GiB");
}

}  // namespace
}  // namespace retro
