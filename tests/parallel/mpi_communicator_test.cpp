// MpiCommunicator across the ranks of an mpirun launch (run with -np 2): sums of fp32 and bf16,
// gathers in rank order, broadcasts from every root, against values each rank computes alone.

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/world_config.h"
#include "runtime/core/dtype.h"

namespace retro::parallel {
namespace {

class MpiGroup : public testing::Test {
 protected:
  void SetUp() override {
    if (mpi_world().size < 2) GTEST_SKIP() << "needs mpirun -np 2 (or more)";
    world_ = make_world_config(mpi_world(), /*requested_tp=*/0);
    comm_ = make_tp_host_communicator(world_);
  }
  WorldConfig world_;
  std::unique_ptr<Communicator> comm_;
};

TEST_F(MpiGroup, GroupOfTheWholeWorldIsAnMpiCommunicatorInWorldRankOrder) {
  EXPECT_STREQ(comm_->backend(), "mpi");
  EXPECT_EQ(comm_->size(), mpi_world().size);
  EXPECT_EQ(comm_->rank(), mpi_world().rank);
  comm_->barrier();
}

TEST_F(MpiGroup, AllReduceSumsFp32Elementwise) {
  const int n = 1000, size = comm_->size(), rank = comm_->rank();
  std::vector<float> data(n);
  for (int i = 0; i < n; ++i) data[i] = static_cast<float>((rank + 1) * i) + 0.5f;  // exact in fp32
  comm_->all_reduce_sum(Tensor(data.data(), DType::kFP32, {n}));
  for (int i = 0; i < n; ++i) {
    float want = 0.0f;
    for (int r = 0; r < size; ++r) want += static_cast<float>((r + 1) * i) + 0.5f;
    ASSERT_EQ(data[i], want) << "element " << i;
  }
}

TEST_F(MpiGroup, AllReduceSumsBf16Elementwise) {
  const int n = 333, size = comm_->size(), rank = comm_->rank();
  std::vector<bf16> data(n);
  // Small integers: every partial sum is exact in bf16, so the order of additions cannot matter.
  for (int i = 0; i < n; ++i) data[i] = float_to_bf16(static_cast<float>((rank + 1) * (i % 32)) - 7.0f);
  comm_->all_reduce_sum(Tensor(data.data(), DType::kBF16, {n}));
  for (int i = 0; i < n; ++i) {
    float want = 0.0f;
    for (int r = 0; r < size; ++r) want += static_cast<float>((r + 1) * (i % 32)) - 7.0f;
    ASSERT_EQ(bf16_to_float(data[i]), want) << "element " << i;
  }
}

TEST_F(MpiGroup, AllGatherPlacesEachRankBlockAtItsRank) {
  const int n = 5, size = comm_->size(), rank = comm_->rank();
  std::vector<int32_t> send(n), recv(static_cast<size_t>(n * size), -1);
  for (int i = 0; i < n; ++i) send[i] = 100 * rank + i;
  comm_->all_gather(Tensor(send.data(), DType::kInt32, {n}), Tensor(recv.data(), DType::kInt32, {n * size}));
  for (int r = 0; r < size; ++r)
    for (int i = 0; i < n; ++i) EXPECT_EQ(recv[static_cast<size_t>(r * n + i)], 100 * r + i);
}

TEST_F(MpiGroup, AllGatherOfFp32LogitBlocks) {
  const int n = 64, size = comm_->size(), rank = comm_->rank();
  std::vector<float> send(n), recv(static_cast<size_t>(n * size));
  for (int i = 0; i < n; ++i) send[i] = 0.25f * static_cast<float>(rank * n + i);
  comm_->all_gather(Tensor(send.data(), DType::kFP32, {n}), Tensor(recv.data(), DType::kFP32, {n * size}));
  for (int i = 0; i < n * size; ++i) EXPECT_EQ(recv[static_cast<size_t>(i)], 0.25f * static_cast<float>(i));
}

TEST_F(MpiGroup, BroadcastCopiesTheRootsDataToEveryRank) {
  for (int root = 0; root < comm_->size(); ++root) {
    std::vector<float> data(17, comm_->rank() == root ? 0.0f : -1.0f);
    if (comm_->rank() == root)
      for (int i = 0; i < 17; ++i) data[i] = static_cast<float>(root * 1000 + i);
    comm_->broadcast(Tensor(data.data(), DType::kFP32, {17}), root);
    for (int i = 0; i < 17; ++i) EXPECT_EQ(data[i], static_cast<float>(root * 1000 + i)) << "root " << root;
  }
}

TEST_F(MpiGroup, OneRankGroupsOfAWorldOfTwoAreSelfCommunicators) {
  WorldConfig replicas = make_world_config(mpi_world(), /*requested_tp=*/1);
  EXPECT_EQ(replicas.dp, mpi_world().size);
  auto comm = make_tp_host_communicator(replicas);
  EXPECT_STREQ(comm->backend(), "self");
}

// Two groups of one rank each, split from the world: a sum stays within its group.
TEST_F(MpiGroup, SplitGroupsReduceOnlyAmongTheirMembers) {
  MpiCommunicator own(MPI_COMM_WORLD, /*color=*/mpi_world().rank, /*key=*/0);
  EXPECT_EQ(own.size(), 1);
  float x = static_cast<float>(mpi_world().rank + 1);
  own.all_reduce_sum(Tensor(&x, DType::kFP32, {1}));
  EXPECT_EQ(x, static_cast<float>(mpi_world().rank + 1));
}

}  // namespace
}  // namespace retro::parallel
