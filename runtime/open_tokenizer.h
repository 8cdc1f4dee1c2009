#pragma once
// The tokenizer that belongs to a model spec (see open_model): tokenizer.json of a model directory,
// the tokenizer arrays of a GGUF file; synthetic presets have none.

#include <optional>
#include <string>

#include "runtime/tokenizer.h"

namespace retro::runtime {

// std::nullopt for preset:NAME specs (synthetic weights have no vocabulary). Throws retro::Error
// when a checkpoint's tokenizer is missing or malformed.
std::optional<Tokenizer> open_tokenizer(const std::string& spec);

}  // namespace retro::runtime
