#pragma once
// Helpers shared by the benchmark subcommands.

#include <cstdint>
#include <string>
#include <vector>

namespace retro::launcher {

// "4k,32k,1m,100" -> {4096, 32768, 1048576, 100}; throws retro::Error naming `flag` on bad input.
std::vector<int64_t> parse_size_list(const std::string& text, const std::string& flag);

}  // namespace retro::launcher
