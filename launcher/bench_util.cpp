#include "launcher/bench_util.h"

#include <cctype>
#include <sstream>

#include "runtime/core/error.h"

namespace retro::launcher {

std::vector<int64_t> parse_size_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    RETRO_CHECK(!item.empty(), "{}: empty entry in '{}'", flag, text);
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
  RETRO_CHECK(!out.empty(), "{}: no sizes given", flag);
  return out;
}

}  // namespace retro::launcher
