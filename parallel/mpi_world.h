#pragma once
// The MPI world of this process: initialised when the process was started by an MPI launcher
// (mpirun / srun) or when asked for, finalised at exit. A process started on its own is a world of
// one and never touches MPI, so single-process runs need no launcher.

#include <string>
#include <vector>

namespace retro::parallel {

struct MpiWorld {
  bool initialized = false;  // false: single process, MPI not started
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // rank among the processes of this node
  int local_size = 1;
  std::string processor_name;
  std::string library_version;  // first line of MPI_Get_library_version
  bool thread_multiple = false;  // any thread may call MPI at any time (MPI_THREAD_MULTIPLE)
};

// True when the environment says an MPI launcher started this process.
bool launched_by_mpi();

// Initialises MPI once if launched_by_mpi() or `force`, and registers MPI_Finalize at exit. Asks
// for MPI_THREAD_MULTIPLE, which the failure watchdog's thread needs (watchdog.h); collectives
// stay on the main thread. Later calls return the same world.
const MpiWorld& init_mpi_world(int* argc, char*** argv, bool force = false);
const MpiWorld& mpi_world();

// Every rank's processor (host) name, in rank order, at rank 0; empty elsewhere. Collective.
std::vector<std::string> gather_processor_names();

}  // namespace retro::parallel
