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
#include "parallel/communicator.h"
#include "parallel/world_config.h"
#include "runtime/core/allocator.h"
#include "runtime/core/dtype.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace retro::launcher {

struct ModelOptions {
  std::string model;                 // DIR | FILE.gguf | preset:NAME[@SEED]
  std::string attention = "dense";   // dense | wave
  double retrieval_budget = attention::WaveIndexParams{}.retrieval_budget;
  double estimation_budget = attention::WaveIndexParams{}.estimation_budget;
  int min_retrieve_clusters = attention::WaveIndexParams{}.min_retrieve_clusters;
  int tokens_per_cluster = attention::WaveIndexParams{}.tokens_per_cluster;
  int window_tokens = attention::WaveIndexParams{}.window_tokens;
  int64_t prefill_chunk = 512;
  int tp = 1;  // tensor-parallel ranks per model; 0: the whole MPI world (the default of --tp)

  attention::AttentionMode attention_mode() const;
  attention::WaveIndexParams wave_params() const;
};

void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required = true);
// --tp, for commands that run a model sharded over the ranks of an mpirun launch (CPU backend).
void add_tp_option(CLI::App& cmd, ModelOptions& o);

struct LoadedModel {
  std::unique_ptr<Allocator> host;
  parallel::WorldConfig world;
  // With tp > 1: the group's host communicator and the model's collectives over it (declared
  // before the model, which uses them until it is destroyed).
  std::unique_ptr<parallel::Communicator> tp_group;
  std::unique_ptr<runtime::ShardCollectives> tp_collectives;
  std::unique_ptr<runtime::Model> model;
  std::optional<runtime::Tokenizer> tokenizer;  // none for synthetic presets

  // With a tokenizer: its encoding (special tokens added). Without: the bytes of the text as ids.
  std::vector<int32_t> encode(std::string_view text) const;
  std::vector<int32_t> stop_ids() const;
  // Whether this rank writes results (world rank 0); every rank of a group computes the same tokens.
  bool leader() const { return world.is_world_leader(); }
};

LoadedModel load_model(const ModelOptions& o);

// With a tokenizer: its encoding (special tokens added). Without: the bytes of the text as ids
// (modulo the vocabulary); an empty text is then an error.
std::vector<int32_t> encode_prompt(const std::optional<runtime::Tokenizer>& tokenizer, int64_t vocab_size,
                                   std::string_view text);
// The element type of wave's offloaded K/V from a --host-kv value: "bf16" or "fp8" (e4m3).
DType host_kv_dtype(const std::string& name);
// The tokenizer's end-of-sequence ids, or the config's when it has none.
std::vector<int32_t> stop_token_ids(const std::optional<runtime::Tokenizer>& tokenizer,
                                    const runtime::ModelConfig& config);

}  // namespace retro::launcher
