#pragma once
// Helpers shared by the benchmark subcommands.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace retro::launcher {

// "a,b" -> {"a", "b"}; throws retro::Error naming `flag` on an empty list or entry.
std::vector<std::string> parse_name_list(const std::string& text, const std::string& flag);

// "4k,32k,1m,100" -> {4096, 32768, 1048576, 100}; throws retro::Error naming `flag` on bad input.
std::vector<int64_t> parse_size_list(const std::string& text, const std::string& flag);

// Middle element of the sorted values (the upper one of an even count); 0 for none.
double median(std::vector<double> values);

// What a run of timed steps took, in ms: the total and mean, the median and 99th percentile (nearest
// rank), and the slowest step with its index among the timed ones.
struct StepTimes {
  double total_ms = 0, mean_ms = 0, median_ms = 0, p99_ms = 0, slowest_ms = 0;
  size_t slowest_step = 0;
};
StepTimes summarize_steps(std::span<const double> step_ms);

}  // namespace retro::launcher
