// Entry point of the tests that run under `mpirun -np 2`: every rank runs every test, meeting the
// others in the collectives; rank 0 prints the full report, the other ranks only their failures.

#include <gtest/gtest.h>

#include "parallel/mpi_world.h"
#include "runtime/core/logging.h"

int main(int argc, char** argv) {
  retro::init_logging();
  const retro::parallel::MpiWorld& world = retro::parallel::init_mpi_world(&argc, &argv, /*force=*/true);
  // Before InitGoogleTest, which picks the result printer from the flag.
  if (world.rank != 0) GTEST_FLAG_SET(brief, true);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
