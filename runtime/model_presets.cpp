#include "runtime/model_presets.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"
#include "runtime/impl/model_presets_data.h"

namespace retro::runtime {

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (size_t i = 0; i < impl::kNumEmbeddedPresets; ++i) out.emplace_back(impl::kEmbeddedPresets[i].name);
  std::sort(out.begin(), out.end());
  return out;
}

const char* preset_json(const std::string& name) {
  for (size_t i = 0; i < impl::kNumEmbeddedPresets; ++i)
    if (name == impl::kEmbeddedPresets[i].name) return impl::kEmbeddedPresets[i].json;
  RETRO_THROW("unknown model preset '{}' (known presets: {})", name, fmt::join(preset_names(), ", "));
}

ModelConfig preset_config(const std::string& name) {
  const char* text = preset_json(name);
  return parse_model_config(nlohmann::json::parse(text), fmt::format("preset '{}'", name));
}

}  // namespace retro::runtime
