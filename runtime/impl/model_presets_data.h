#pragma once
// The model presets of configs/models/, compiled into the library by CMake (model_presets_data.cpp is
// generated from model_presets_data.cpp.in), so no binary reads the source tree at run time.

#include <cstddef>

namespace retro::runtime::impl {

struct EmbeddedPreset {
  const char* name;  // file name without .json: "llama3-8b"
  const char* json;  // the file's text
};

extern const EmbeddedPreset kEmbeddedPresets[];
extern const size_t kNumEmbeddedPresets;

}  // namespace retro::runtime::impl
