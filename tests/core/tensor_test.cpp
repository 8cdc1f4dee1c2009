// Tensor views: shapes, strides, slicing, reshape rules and the errors for misuse.

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "runtime/core/allocator.h"
#include "runtime/core/tensor.h"

namespace retro {
namespace {

TEST(Tensor, ContiguousViewHasRowMajorStrides) {
  std::vector<float> data(24);
  Tensor t(data.data(), DType::kFP32, {2, 3, 4});
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.stride(1), 4);
  EXPECT_EQ(t.stride(-1), 1);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "Tensor(fp32, [2, 3, 4], cpu)");
}

TEST(Tensor, SliceSelectAndTransposeAddressTheSameMemory) {
  std::vector<float> data(24);
  std::iota(data.begin(), data.end(), 0.0f);
  Tensor t(data.data(), DType::kFP32, {2, 3, 4});
  Tensor s = t.slice(1, 1, 3);  // [2, 2, 4]
  EXPECT_EQ(s.shape(), Shape({2, 2, 4}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(*static_cast<float*>(s.element_ptr({1, 0, 2})), 12.0f + 4.0f + 2.0f);
  Tensor row = t.select(0, 1);  // [3, 4]
  EXPECT_EQ(*static_cast<float*>(row.element_ptr({2, 3})), 23.0f);
  Tensor tr = t.transpose(1, 2);  // [2, 4, 3]
  EXPECT_EQ(*static_cast<float*>(tr.element_ptr({0, 3, 2})), 11.0f);
  EXPECT_FALSE(tr.is_contiguous());
}

TEST(Tensor, ReshapeInfersOneDimensionAndRejectsBadRequests) {
  std::vector<float> data(24);
  Tensor t(data.data(), DType::kFP32, {2, 3, 4});
  EXPECT_EQ(t.reshape({6, -1}).shape(), Shape({6, 4}));
  EXPECT_THROW(t.reshape({5, 5}), Error);
  EXPECT_THROW(t.reshape({-1, -1}), Error);
  EXPECT_THROW(t.transpose(0, 2).reshape({24}), Error);  // non-contiguous
}

TEST(Tensor, OutOfRangeAccessIsAnErrorNotACrash) {
  std::vector<float> data(6);
  Tensor t(data.data(), DType::kFP32, {2, 3});
  EXPECT_THROW(t.slice(1, 2, 4), Error);
  EXPECT_THROW(t.select(0, 2), Error);
  EXPECT_THROW(t.element_ptr({0, 3}), Error);
  EXPECT_THROW(t.size(2), Error);
  EXPECT_THROW((Tensor(data.data(), DType::kFP32, {2, -3})), Error);
  EXPECT_THROW(t.data_as<int32_t>(), Error);
  EXPECT_NO_THROW(t.data_as<float>());
}

TEST(TensorBuffer, OwnsAccountedMemory) {
  auto host = make_host_allocator();
  {
    TensorBuffer b(*host, DType::kBF16, {4, 128}, MemoryPurpose::kActivations);
    EXPECT_EQ(b.view().nbytes(), 1024u);
    EXPECT_EQ(host->accounting().usage(MemoryPurpose::kActivations).live_bytes, 1024u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
  }
  EXPECT_EQ(host->accounting().usage(MemoryPurpose::kActivations).live_bytes, 0u);
}

TEST(TensorBuffer, ImpossibleSizesAreRejected) {
  auto host = make_host_allocator();
  EXPECT_THROW(TensorBuffer(*host, DType::kFP32, {int64_t{1} << 40, int64_t{1} << 40}, MemoryPurpose::kWorkspace),
               Error);
}

}  // namespace
}  // namespace retro
