#pragma once
// What this binary was built with (filled in at configure time).

#include <string>
#include <vector>

namespace retro {

struct BuildFeature {
  std::string name;
  bool enabled;
  std::string detail;
};

struct BuildInfo {
  std::string version;
  std::string build_type;
  std::string compiler;
  std::vector<BuildFeature> features;
};

const BuildInfo& build_info();

}  // namespace retro
