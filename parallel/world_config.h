#pragma once
// Rank geometry of a run: the world of MPI processes cut into tensor-parallel groups of `tp`
// consecutive ranks (one model replica each) and `dp` such groups, and the GPU each rank drives.
//
//   tp_rank = rank % tp      place in the tensor-parallel group (which heads it owns)
//   dp_rank = rank / tp      which replica
//   dp      = world / tp
//   local_device = node-local rank mod visible GPUs (-1 when none is visible)
//
// A process not started by an MPI launcher is a world of one: tp = dp = 1, no MPI.

#include <string>

#include "parallel/mpi_world.h"

namespace retro::parallel {

struct WorldConfig {
  int world_size = 1;
  int rank = 0;
  int tp = 1;
  int tp_rank = 0;
  int dp = 1;
  int dp_rank = 0;
  int local_rank = 0;  // among the processes of this node
  int local_size = 1;
  int local_device = -1;  // CUDA ordinal this rank drives; -1 when no GPU is visible

  // World rank of rank 0 of this rank's tensor-parallel group.
  int tp_group_first_rank() const { return dp_rank * tp; }
  bool is_world_leader() const { return rank == 0; }
  // "rank 1/2 tp 2 (tp_rank 1) dp 1 (dp_rank 0) device cuda:1" (or "device none").
  std::string describe() const;
};

// The geometry of rank `rank` of `world_size` (local_rank of local_size on its node) for a requested
// tensor-parallel size (0: the whole world is one group) and the GPUs this process sees. Throws
// retro::Error (kInvalidArgument) when tp is negative or does not divide the world size. Whether tp
// fits a model (its KV heads) is checked by plan_sharding (sharding.h), where the model is known.
WorldConfig make_world_config(int world_size, int rank, int local_rank, int local_size, int requested_tp,
                              int visible_devices);
// The same for this process's MPI world (a world of one when MPI is not initialised) and the CUDA
// devices it sees.
WorldConfig make_world_config(const MpiWorld& world, int requested_tp);

// CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applied); 0 without CUDA or a driver.
int visible_device_count();

}  // namespace retro::parallel
