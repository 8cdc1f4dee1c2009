#pragma once
// Built-in model shapes (configs/models/*.json, compiled in): Llama-3-8B, Llama-3.1-8B, Qwen2.5-7B,
// Llama-3-70B and a tiny Llama for CPU tests. Used with SyntheticWeightSource to run and benchmark
// real model shapes without a checkpoint.

#include <string>
#include <vector>

#include "runtime/model_config.h"

namespace retro::runtime {

std::vector<std::string> preset_names();  // sorted: "llama3-70b", "llama3-8b", "llama3.1-8b", ...
// Parsed and validated. Throws retro::Error (kInvalidArgument) listing the known names for an unknown one.
ModelConfig preset_config(const std::string& name);
// The preset's config.json text, as compiled in.
const char* preset_json(const std::string& name);

}  // namespace retro::runtime
