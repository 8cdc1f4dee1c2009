// WorldConfig: the rank geometry of a launch (tp_rank = rank % tp, dp_rank = rank / tp, local
// device = node-local rank mod visible GPUs) and its errors, from plain numbers (no MPI).

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <set>

#include "parallel/world_config.h"

namespace retro::parallel {
namespace {

using test_support::error_of;

TEST(WorldConfig, SingleProcessIsOneRankWithoutTensorParallelism) {
  WorldConfig w = make_world_config(MpiWorld{}, /*requested_tp=*/0);
  EXPECT_EQ(w.world_size, 1);
  EXPECT_EQ(w.tp, 1);
  EXPECT_EQ(w.dp, 1);
  EXPECT_EQ(w.tp_rank, 0);
  EXPECT_EQ(w.dp_rank, 0);
  EXPECT_TRUE(w.is_world_leader());
}

TEST(WorldConfig, TensorParallelismDefaultsToTheWholeWorld) {
  WorldConfig w = make_world_config(4, 3, 3, 4, /*requested_tp=*/0, /*visible_devices=*/4);
  EXPECT_EQ(w.tp, 4);
  EXPECT_EQ(w.tp_rank, 3);
  EXPECT_EQ(w.dp, 1);
  EXPECT_EQ(w.dp_rank, 0);
}

TEST(WorldConfig, GroupsAreConsecutiveRanksAndEveryGroupHoldsEachTpRankOnce) {
  const int world = 8, tp = 2;
  std::set<std::pair<int, int>> seen;  // (dp_rank, tp_rank)
  for (int r = 0; r < world; ++r) {
    WorldConfig w = make_world_config(world, r, r % 4, 4, tp, 4);
    EXPECT_EQ(w.tp_rank, r % tp);
    EXPECT_EQ(w.dp_rank, r / tp);
    EXPECT_EQ(w.dp, world / tp);
    EXPECT_EQ(w.tp_group_first_rank() + w.tp_rank, r);
    EXPECT_TRUE(seen.insert({w.dp_rank, w.tp_rank}).second) << "rank " << r;
  }
  EXPECT_EQ(seen.size(), size_t{world});
}

TEST(WorldConfig, LocalDeviceIsTheNodeLocalRankModuloVisibleDevices) {
  EXPECT_EQ(make_world_config(16, 13, 5, 8, 8, 8).local_device, 5);
  EXPECT_EQ(make_world_config(16, 13, 5, 8, 8, 4).local_device, 1);  // two ranks share each GPU
  EXPECT_EQ(make_world_config(2, 1, 1, 2, 2, 0).local_device, -1);   // CPU only
  EXPECT_NE(make_world_config(2, 1, 1, 2, 2, 2).describe().find("tp 2 (tp_rank 1)"), std::string::npos);
}

TEST(WorldConfig, TensorParallelismThatDoesNotDivideTheWorldIsRefused) {
  std::string msg = error_of([] { make_world_config(6, 0, 0, 6, 4, 0); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("tensor parallelism 4 does not divide the 6 MPI processes"), std::string::npos) << msg;
}

TEST(WorldConfig, TensorParallelismInASingleProcessAsksForMpirun) {
  std::string msg = error_of([] { make_world_config(MpiWorld{}, 2); }, ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("mpirun -np 2"), std::string::npos) << msg;
}

TEST(WorldConfig, NegativeTensorParallelismAndBadRanksAreRefused) {
  error_of([] { make_world_config(2, 0, 0, 2, -1, 0); }, ErrorKind::kInvalidArgument);
  error_of([] { make_world_config(2, 2, 0, 2, 2, 0); }, ErrorKind::kInvalidArgument);
  error_of([] { make_world_config(2, 1, 2, 2, 2, 0); }, ErrorKind::kInvalidArgument);
}

}  // namespace
}  // namespace retro::parallel
