#pragma once
// Switches read from the environment (the RETRO_* variables the README lists).

#include <cstdlib>
#include <string_view>

namespace retro {

// Whether environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, std::string_view value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string_view(v) == value;
}

}  // namespace retro
