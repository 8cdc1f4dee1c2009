#pragma once
// One logging setup for every binary: spdlog to stderr, the MPI rank in every line, the level from
// RETRO_LOG_LEVEL (trace, debug, info, warn, error, critical, off; default info).

#include <spdlog/spdlog.h>

#include <string_view>

namespace retro {

// Installs the process-wide logger. Safe to call more than once (later calls only refresh the
// level from the environment). The rank is read from the MPI launcher's environment
// (OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK) until set_log_rank() names it.
void init_logging();
void set_log_rank(int rank);
// Parses a level name; throws retro::Error naming the value when it is not a level.
spdlog::level::level_enum parse_log_level(std::string_view name);

// Rank of this process as the MPI launcher announced it in the environment; -1 if not launched by one.
int launcher_rank_from_env();
int launcher_size_from_env();

}  // namespace retro

#define RETRO_LOG_TRACE(...) ::spdlog::trace(__VA_ARGS__)
#define RETRO_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define RETRO_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define RETRO_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define RETRO_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
