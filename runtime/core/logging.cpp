#include "runtime/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "runtime/core/error.h"

namespace retro {

namespace {
int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return -1;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && x >= 0) ? static_cast<int>(x) : -1;
}

std::string pattern_for_rank(int rank) {
  std::string r = rank >= 0 ? std::to_string(rank) : std::string("-");
  return "[%Y-%m-%d %H:%M:%S.%e] [rank " + r + "] [%^%l%$] %v";
}
}  // namespace

int launcher_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    int v = env_int(name);
    if (v >= 0) return v;
  }
  return -1;
}

int launcher_size_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    int v = env_int(name);
    if (v > 0) return v;
  }
  return -1;
}

spdlog::level::level_enum parse_log_level(std::string_view name) {
  std::string s(name);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "warn" || s == "warning") return spdlog::level::warn;
  if (s == "err") s = "error";
  for (int l = spdlog::level::trace; l <= spdlog::level::off; ++l) {
    auto level = static_cast<spdlog::level::level_enum>(l);
    if (s == std::string(spdlog::level::to_string_view(level).data(), spdlog::level::to_string_view(level).size()))
      return level;
  }
  RETRO_THROW("unknown log level '{}' (expected trace, debug, info, warn, error, critical or off)", name);
}

void init_logging() {
  static std::once_flag once;
  std::call_once(once, [] {
    auto logger = spdlog::stderr_color_mt("retroinfer");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern(pattern_for_rank(launcher_rank_from_env()));
  });
  const char* level = std::getenv("RETRO_LOG_LEVEL");
  if (level != nullptr && *level != '\0') {
    try {
      spdlog::set_level(parse_log_level(level));
    } catch (const Error& e) {
      spdlog::set_level(spdlog::level::info);
      spdlog::warn("ignoring RETRO_LOG_LEVEL: {}", e.message());
    }
  } else {
    spdlog::set_level(spdlog::level::info);
  }
}

void set_log_rank(int rank) { spdlog::set_pattern(pattern_for_rank(rank)); }

}  // namespace retro
