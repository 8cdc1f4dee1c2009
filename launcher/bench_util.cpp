#include "launcher/bench_util.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

#include "runtime/core/error.h"

namespace retro::launcher {

std::vector<std::string> parse_name_list(const std::string& text, const std::string& flag) {
  std::vector<std::string> out;
  // getline yields no last, empty entry for a trailing comma: look for it here.
  RETRO_CHECK(text.empty() || text.back() != ',', "{}: empty entry in '{}'", flag, text);
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    RETRO_CHECK(!item.empty(), "{}: empty entry in '{}'", flag, text);
    out.push_back(item);
  }
  RETRO_CHECK(!out.empty(), "{}: nothing given", flag);
  return out;
}

std::vector<int64_t> parse_size_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  for (std::string item : parse_name_list(text, flag)) {
    int64_t mult = 1;
    char suffix = static_cast<char>(std::tolower(static_cast<unsigned char>(item.back())));
    if (suffix == 'k' || suffix == 'm') {
      mult = suffix == 'k' ? 1024 : 1024 * 1024;
      item.pop_back();
    }
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      used = 0;
    }
    RETRO_CHECK(used == item.size() && v > 0, "{}: '{}' is not a positive size (e.g. 4096, 32k, 1m)", flag, text);
    out.push_back(v * mult);
  }
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  const auto mid = values.begin() + std::ptrdiff_t(values.size() / 2);
  std::nth_element(values.begin(), mid, values.end());
  return *mid;
}

StepTimes summarize_steps(std::span<const double> step_ms) {
  StepTimes t;
  if (step_ms.empty()) return t;
  for (size_t i = 0; i < step_ms.size(); ++i) {
    t.total_ms += step_ms[i];
    if (step_ms[i] > t.slowest_ms) {
      t.slowest_ms = step_ms[i];
      t.slowest_step = i;
    }
  }
  t.mean_ms = t.total_ms / double(step_ms.size());
  std::vector<double> sorted(step_ms.begin(), step_ms.end());
  std::sort(sorted.begin(), sorted.end());
  t.median_ms = sorted[sorted.size() / 2];
  // Nearest rank: the smallest value with at least 99% of the steps at or below it.
  const size_t rank = size_t(std::ceil(0.99 * double(sorted.size())));
  t.p99_ms = sorted[std::max<size_t>(rank, 1) - 1];
  return t;
}

}  // namespace retro::launcher
