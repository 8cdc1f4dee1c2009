#pragma once
// Base fixture of the tests that run across the ranks of an mpirun launch with one GPU each (NCCL):
// every rank skips alike without mpirun -np 2 (or more) or without a GPU per rank; otherwise the
// world's geometry (tp = every rank) and its tensor-parallel host communicator are ready.

#include <gtest/gtest.h>

#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/world_config.h"

namespace retro::parallel::test {

class NcclRanks : public testing::Test {
 protected:
  void SetUp() override {
    if (mpi_world().size < 2) GTEST_SKIP() << "needs mpirun -np 2 (or more)";
    world_ = make_world_config(mpi_world(), /*requested_tp=*/0);
    // Every rank of a node sees the same devices, so all ranks skip alike.
    if (visible_device_count() < world_.local_size) GTEST_SKIP() << "needs one GPU per rank";
    host_group_ = make_tp_host_communicator(world_);
  }

  WorldConfig world_;
  std::unique_ptr<Communicator> host_group_;
};

}  // namespace retro::parallel::test
