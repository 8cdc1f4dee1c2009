#include "launcher/model_options.h"

#include "parallel/mpi_world.h"
#include "parallel/sharding.h"
#include "parallel/tensor_parallel.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/open_model.h"
#include "runtime/open_tokenizer.h"

namespace retro::launcher {

attention::AttentionMode ModelOptions::attention_mode() const {
  if (attention == "dense") return attention::AttentionMode::kDense;
  if (attention == "wave") return attention::AttentionMode::kWave;
  RETRO_THROW("--attention must be dense or wave, got '{}'", attention);
}

attention::WaveIndexParams ModelOptions::wave_params() const {
  attention::WaveIndexParams p;
  p.retrieval_budget = retrieval_budget;
  p.estimation_budget = estimation_budget;
  p.min_retrieve_clusters = min_retrieve_clusters;
  p.tokens_per_cluster = tokens_per_cluster;
  p.window_tokens = window_tokens;
  p.validate();
  return p;
}

void add_model_options(CLI::App& cmd, ModelOptions& o, bool model_required) {
  auto* m = cmd.add_option("--model", o.model, "Model: a Hugging Face directory, a .gguf file, or preset:NAME");
  if (model_required) m->required();
  cmd.add_option("--attention", o.attention, "Attention: dense or wave")
      ->check(CLI::IsMember({"dense", "wave"}))
      ->capture_default_str();
  cmd.add_option("--budget", o.retrieval_budget, "Wave retrieval budget (fraction of clusters attended exactly)")
      ->capture_default_str();
  cmd.add_option("--estimation-budget", o.estimation_budget,
                 "Wave estimation budget (fraction of clusters estimated; >= 1 estimates all the rest)")
      ->capture_default_str();
  cmd.add_option("--min-retrieve", o.min_retrieve_clusters,
                 "Wave retrieval floor in clusters (short contexts; 0: the pure budget fraction)")
      ->capture_default_str();
  cmd.add_option("--cluster-tokens", o.tokens_per_cluster, "Wave: mean tokens per cluster of the index")
      ->capture_default_str();
  cmd.add_option("--window-tokens", o.window_tokens, "Wave: most recent tokens kept in the exact steady zone")
      ->capture_default_str();
  cmd.add_option("--prefill-chunk", o.prefill_chunk, "Prompt tokens per prefill step")->capture_default_str();
}

void add_tp_option(CLI::App& cmd, ModelOptions& o) {
  o.tp = 0;
  cmd.add_option("--tp", o.tp,
                 "Tensor-parallel ranks per model: each holds a slice of the heads and weights "
                 "(default: every process of the mpirun launch, 1 without mpirun)")
      ->check(CLI::Range(0, 1 << 16));
}

LoadedModel load_model(const ModelOptions& o) {
  LoadedModel m;
  m.host = make_host_allocator();
  m.world = parallel::make_world_config(parallel::mpi_world(), o.tp);
  runtime::ModelConfig config;
  std::unique_ptr<runtime::WeightSource> weights = runtime::open_model(o.model, &config);
  if (m.world.tp == 1) {
    m.model = std::make_unique<runtime::Model>(config, *weights, *m.host);
  } else {
    // Planned before any collective, so a tp that does not fit the model fails on every rank alike.
    const parallel::ShardingPlan plan = parallel::plan_sharding(config, m.world.tp, m.world.tp_rank);
    m.tp_group = parallel::make_tp_host_communicator(m.world);
    m.tp_collectives = std::make_unique<parallel::CommunicatorCollectives>(*m.tp_group);
    m.model = parallel::load_model_shard(config, *weights, *m.host, plan, m.tp_collectives.get());
    RETRO_LOG_INFO("{}; {}", m.world.describe(), plan.describe());
  }
  m.tokenizer = runtime::open_tokenizer(o.model);
  return m;
}

std::vector<int32_t> encode_prompt(const std::optional<runtime::Tokenizer>& tokenizer, int64_t vocab_size,
                                   std::string_view text) {
  if (tokenizer) return tokenizer->encode(text, /*add_special_tokens=*/true);
  std::vector<int32_t> ids;
  for (unsigned char c : text) ids.push_back(static_cast<int32_t>(static_cast<int64_t>(c) % vocab_size));
  RETRO_CHECK(!ids.empty(), "empty prompt");
  return ids;
}

DType host_kv_dtype(const std::string& name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "fp8") return DType::kFP8E4M3;
  RETRO_THROW("--host-kv must be bf16 or fp8, got '{}'", name);
}

std::vector<int32_t> stop_token_ids(const std::optional<runtime::Tokenizer>& tokenizer,
                                    const runtime::ModelConfig& config) {
  if (tokenizer && !tokenizer->eos_ids().empty()) return tokenizer->eos_ids();
  return config.eos_token_ids;
}

std::vector<int32_t> LoadedModel::encode(std::string_view text) const {
  return encode_prompt(tokenizer, model->config().vocab_size, text);
}

std::vector<int32_t> LoadedModel::stop_ids() const { return stop_token_ids(tokenizer, model->config()); }

}  // namespace retro::launcher
