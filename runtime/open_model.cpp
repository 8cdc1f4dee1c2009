#include "runtime/open_model.h"

#include <charconv>
#include <filesystem>

#include "runtime/core/error.h"
#include "runtime/gguf.h"
#include "runtime/model_presets.h"
#include "runtime/model_weights.h"
#include "runtime/safetensors.h"
#include "runtime/synthetic_weights.h"

namespace retro::runtime {

namespace {

constexpr std::string_view kPresetPrefix = "preset:";

std::unique_ptr<WeightSource> open_preset(std::string_view rest, ModelConfig& config) {
  std::string name(rest);
  uint64_t seed = 0;
  if (size_t at = rest.find('@'); at != std::string_view::npos) {
    name = std::string(rest.substr(0, at));
    std::string_view digits = rest.substr(at + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seed);
    RETRO_CHECK(ec == std::errc() && end == digits.data() + digits.size() && !digits.empty(),
                "model spec 'preset:{}': the seed after '@' must be a non-negative integer", rest);
  }
  config = preset_config(name);
  return std::make_unique<SyntheticWeightSource>(config, seed);
}

}  // namespace

std::unique_ptr<WeightSource> open_model(const std::string& spec, ModelConfig* config_out) {
  namespace fs = std::filesystem;
  ModelConfig config;
  std::unique_ptr<WeightSource> source;
  const std::string_view view(spec);
  if (view.substr(0, kPresetPrefix.size()) == kPresetPrefix) {
    source = open_preset(view.substr(kPresetPrefix.size()), config);
  } else {
    const fs::path path(spec);
    if (path.extension() == ".gguf") {
      // GGUF files carry their config in their metadata.
      auto file = GgufFile::open(path);
      config = gguf_model_config(*file);
      source = std::make_unique<GgufWeightSource>(file);
      validate_weights(config, *source);
      if (config_out != nullptr) *config_out = config;
      return source;
    }
    RETRO_CHECK_KIND(fs::exists(path), ErrorKind::kIo,
                     "model spec '{}' is neither 'preset:NAME' nor an existing "
                     "file or directory",
                     spec);
    fs::path dir = fs::is_directory(path) ? path : path.parent_path();
    if (dir.empty()) dir = ".";
    config = load_model_config(dir);
    source = load_weight_source(path);
    validate_weights(config, *source);
  }
  if (config_out != nullptr) *config_out = config;
  return source;
}

}  // namespace retro::runtime
