#include "parallel/world_config.h"

#include <fmt/format.h>

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "runtime/core/error.h"

namespace retro::parallel {

std::string WorldConfig::describe() const {
  return fmt::format("rank {}/{} tp {} (tp_rank {}) dp {} (dp_rank {}) device {}", rank, world_size, tp, tp_rank, dp,
                     dp_rank, local_device >= 0 ? fmt::format("cuda:{}", local_device) : std::string("none"));
}

WorldConfig make_world_config(int world_size, int rank, int local_rank, int local_size, int requested_tp,
                              int visible_devices) {
  RETRO_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "rank {} of a world of {} is out of range", rank,
              world_size);
  RETRO_CHECK(local_size >= 1 && local_rank >= 0 && local_rank < local_size,
              "node-local rank {} of {} is out of range", local_rank, local_size);
  RETRO_CHECK(requested_tp >= 0, "tensor parallelism must be positive (0: the world size), got {}", requested_tp);
  const int tp = requested_tp == 0 ? world_size : requested_tp;
  if (world_size == 1) {
    RETRO_CHECK(tp == 1,
                "tensor parallelism {} needs {} processes, but this is a single process: launch with "
                "`mpirun -np {} retroinfer ...`",
                tp, tp, tp);
  }
  RETRO_CHECK(world_size % tp == 0,
              "tensor parallelism {} does not divide the {} MPI processes: the world is cut into groups of tp "
              "ranks (use a tp that divides {}, or launch a multiple of {} processes)",
              tp, world_size, world_size, tp);
  WorldConfig w;
  w.world_size = world_size;
  w.rank = rank;
  w.tp = tp;
  w.tp_rank = rank % tp;
  w.dp = world_size / tp;
  w.dp_rank = rank / tp;
  w.local_rank = local_rank;
  w.local_size = local_size;
  w.local_device = visible_devices > 0 ? local_rank % visible_devices : -1;
  return w;
}

WorldConfig make_world_config(const MpiWorld& world, int requested_tp) {
  return make_world_config(world.size, world.rank, world.local_rank, world.local_size, requested_tp,
                           visible_device_count());
}

int visible_device_count() {
#ifdef RETRO_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error, report none
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

}  // namespace retro::parallel
