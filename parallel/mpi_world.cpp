#include "parallel/mpi_world.h"

#include <mpi.h>

#include <cstdlib>

#include "parallel/impl/mpi_check.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace retro::parallel {

namespace {
MpiWorld g_world;
bool g_done = false;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}
}  // namespace

bool launched_by_mpi() { return launcher_size_from_env() > 0; }

const MpiWorld& init_mpi_world(int* argc, char*** argv, bool force) {
  if (g_done) return g_world;
  g_done = true;
  if (!launched_by_mpi() && !force) return g_world;
  int provided = 0;
  RETRO_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  std::atexit(finalize_at_exit);
  MpiWorld w;
  w.initialized = true;
  w.thread_multiple = provided == MPI_THREAD_MULTIPLE;
  RETRO_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank));
  RETRO_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w.size));
  MPI_Comm node = MPI_COMM_NULL;
  RETRO_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node));
  MPI_Comm_rank(node, &w.local_rank);
  MPI_Comm_size(node, &w.local_size);
  MPI_Comm_free(&node);
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  w.processor_name.assign(name, static_cast<size_t>(len));
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  MPI_Get_library_version(version, &len);
  std::string v(version, static_cast<size_t>(len));
  w.library_version = v.substr(0, v.find_first_of("\n,"));
  g_world = w;
  set_log_rank(w.rank);
  return g_world;
}

const MpiWorld& mpi_world() { return g_world; }

std::vector<std::string> gather_processor_names() {
  const MpiWorld& world = g_world;
  if (!world.initialized) return {world.processor_name};
  constexpr int kLen = MPI_MAX_PROCESSOR_NAME;
  std::string mine = world.processor_name;
  mine.resize(kLen, '\0');
  std::vector<char> all(world.rank == 0 ? static_cast<size_t>(kLen) * static_cast<size_t>(world.size) : 0);
  RETRO_MPI_CHECK(MPI_Gather(mine.data(), kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, 0, MPI_COMM_WORLD));
  std::vector<std::string> names;
  for (int r = 0; world.rank == 0 && r < world.size; ++r)
    names.emplace_back(all.data() + static_cast<size_t>(r) * kLen);
  return names;
}

}  // namespace retro::parallel
