#include "runtime/model_weights.h"

#include <fmt/format.h>

#include "runtime/core/error.h"
#include "runtime/impl/progress.h"

namespace retro::runtime {

std::vector<WeightInfo> expected_weights(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  const int64_t q = config.q_size();
  const int64_t kv = config.kv_size();
  std::vector<WeightInfo> out;
  auto add = [&](std::string name, Shape shape) { out.push_back(WeightInfo{std::move(name), config.dtype, shape}); };

  add("model.embed_tokens.weight", {vocab, hidden});
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    add(p + "input_layernorm.weight", {hidden});
    add(p + "self_attn.q_proj.weight", {q, hidden});
    add(p + "self_attn.k_proj.weight", {kv, hidden});
    add(p + "self_attn.v_proj.weight", {kv, hidden});
    if (config.attention_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    add(p + "self_attn.o_proj.weight", {hidden, q});
    if (config.attention_out_bias) add(p + "self_attn.o_proj.bias", {hidden});
    add(p + "post_attention_layernorm.weight", {hidden});
    add(p + "mlp.gate_proj.weight", {inter, hidden});
    add(p + "mlp.up_proj.weight", {inter, hidden});
    add(p + "mlp.down_proj.weight", {hidden, inter});
    if (config.mlp_bias) {
      add(p + "mlp.gate_proj.bias", {inter});
      add(p + "mlp.up_proj.bias", {inter});
      add(p + "mlp.down_proj.bias", {hidden});
    }
  }
  add("model.norm.weight", {hidden});
  if (!config.tie_word_embeddings) add("lm_head.weight", {vocab, hidden});
  return out;
}

void validate_weights(const ModelConfig& config, const WeightSource& source) {
  constexpr size_t kShown = 5;
  std::vector<std::string> problems;
  for (const WeightInfo& want : expected_weights(config)) {
    if (!source.contains(want.name)) {
      problems.push_back(fmt::format("missing tensor '{}' (expected shape {})", want.name, want.shape.str()));
      continue;
    }
    const WeightInfo have = source.info(want.name);
    if (!(have.shape == want.shape)) {
      problems.push_back(fmt::format("tensor '{}' has shape {}, the config expects {}", want.name, have.shape.str(),
                                     want.shape.str()));
    } else if (have.dtype != DType::kBF16 && have.dtype != DType::kFP16 && have.dtype != DType::kFP32) {
      problems.push_back(
          fmt::format("tensor '{}' is stored as {}, expected bf16, fp16 or fp32", want.name, dtype_name(have.dtype)));
    }
  }
  if (problems.empty()) return;
  std::string shown;
  for (size_t i = 0; i < problems.size() && i < kShown; ++i) shown += (i ? "; " : "") + problems[i];
  RETRO_THROW_KIND(ErrorKind::kInvalidInput, "weights do not match the {} config ({} layers, hidden {}): {}{}",
                   config.architecture, config.num_layers, config.hidden_size, shown,
                   problems.size() > kShown ? fmt::format("; and {} more", problems.size() - kShown) : "");
}

void read_weights(const WeightSource& source, const std::vector<std::string>& names,
                  const std::function<Tensor(const WeightInfo&)>& destination, size_t progress_min_bytes) {
  std::vector<WeightInfo> infos;
  infos.reserve(names.size());
  uint64_t total = 0;
  for (const std::string& name : names) {
    infos.push_back(source.info(name));
    total += static_cast<uint64_t>(infos.back().shape.numel()) * dtype_size(infos.back().dtype);
  }
  impl::ProgressBar progress("loading weights", total, /*bytes=*/true,
                             impl::stderr_is_terminal() && total >= progress_min_bytes);
  for (const WeightInfo& info : infos) {
    source.read(info.name, destination(info));
    progress.advance(static_cast<uint64_t>(info.shape.numel()) * dtype_size(info.dtype));
  }
  progress.finish();
}

}  // namespace retro::runtime
