#pragma once
// Command-line options shared by the commands that run a model (generate, demo, bench), and the
// model they load.

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "attention/kv_store.h"
#include "runtime/core/allocator.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace retro::launcher {

struct ModelOptions {
  std::string model;                 // DIR | FILE.gguf | preset:NAME[@SEED]
  std::string attention = "dense";   // dense | wave
  double retrieval_budget = attention::WaveIndexParams{}.retrieval_budget;
  double estimation_budget = attention::WaveIndexParams{}.estimation_budget;
  int min_retrieve_clusters = attention::WaveIndexParams{}.min_retrieve_clusters;
  int64_t prefill_chunk = 512;

  attention::AttentionMode attention_mode() const;
  attention::WaveIndexParams wave_params() const;
};

void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required = true);

struct LoadedModel {
  std::unique_ptr<Allocator> host;
  std::unique_ptr<runtime::Model> model;
  std::optional<runtime::Tokenizer> tokenizer;  // none for synthetic presets

  // With a tokenizer: its encoding (special tokens added). Without: the bytes of the text as ids.
  std::vector<int32_t> encode(std::string_view text) const;
  std::vector<int32_t> stop_ids() const;
};

LoadedModel load_model(const ModelOptions& o);

}  // namespace retro::launcher
