#pragma once
// One entry point from a model spec to its config and weights, for the launcher and the tests.

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::runtime {

// `spec` is one of
//   preset:NAME         synthetic weights (seed 0) of a built-in preset (see preset_names())
//   preset:NAME@SEED    the same with another seed
//   DIR                 a Hugging Face model directory: config.json + model.safetensors[.index.json]
//   FILE.safetensors    a single checkpoint file, config.json beside it
//   FILE.gguf           a GGUF file (config and tokenizer from its metadata)
// The weights are checked against the config (validate_weights) before returning. `config_out` may be
// null. Throws retro::Error naming the spec when it is none of these.
std::unique_ptr<WeightSource> open_model(const std::string& spec, ModelConfig* config_out);

}  // namespace retro::runtime
