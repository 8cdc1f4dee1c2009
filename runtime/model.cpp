#include "runtime/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "runtime/core/error.h"
#include "runtime/model_weights.h"
#include "runtime/ops.h"

namespace retro::runtime {

using ops::linear;
using ops::rms_norm;

Model::Model(const ModelConfig& config, const WeightSource& weights, Allocator& host_allocator)
    : config_(config), host_(host_allocator), rope_(config) {
  config_.validate();
  validate_weights(config_, weights);
  // Every expected tensor lands in an fp32 host buffer, then moves to its slot below.
  std::unordered_map<std::string, TensorBuffer> loaded;
  std::vector<std::string> names;
  for (const WeightInfo& w : expected_weights(config_)) names.push_back(w.name);
  read_weights(weights, names, [&](const WeightInfo& info) -> Tensor {
    auto [it, inserted] =
        loaded.emplace(info.name, TensorBuffer(host_, DType::kFP32, info.shape, MemoryPurpose::kWeights));
    return it->second.view();
  });
  auto take = [&](const std::string& name) {
    auto it = loaded.find(name);
    RETRO_ASSERT(it != loaded.end());
    TensorBuffer b = std::move(it->second);
    loaded.erase(it);
    return b;
  };
  auto take_if = [&](bool present, const std::string& name) { return present ? take(name) : TensorBuffer(); };
  embed_ = take("model.embed_tokens.weight");
  final_norm_ = take("model.norm.weight");
  if (!config_.tie_word_embeddings) lm_head_ = take("lm_head.weight");
  layers_.resize(static_cast<size_t>(config_.num_layers));
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    L.input_norm = take(p + "input_layernorm.weight");
    L.post_norm = take(p + "post_attention_layernorm.weight");
    L.wq = take(p + "self_attn.q_proj.weight");
    L.wk = take(p + "self_attn.k_proj.weight");
    L.wv = take(p + "self_attn.v_proj.weight");
    L.wo = take(p + "self_attn.o_proj.weight");
    L.bq = take_if(config_.attention_bias, p + "self_attn.q_proj.bias");
    L.bk = take_if(config_.attention_bias, p + "self_attn.k_proj.bias");
    L.bv = take_if(config_.attention_bias, p + "self_attn.v_proj.bias");
    L.bo = take_if(config_.attention_out_bias, p + "self_attn.o_proj.bias");
    L.w_gate = take(p + "mlp.gate_proj.weight");
    L.w_up = take(p + "mlp.up_proj.weight");
    L.w_down = take(p + "mlp.down_proj.weight");
    L.b_gate = take_if(config_.mlp_bias, p + "mlp.gate_proj.bias");
    L.b_up = take_if(config_.mlp_bias, p + "mlp.up_proj.bias");
    L.b_down = take_if(config_.mlp_bias, p + "mlp.down_proj.bias");
  }
}

std::unique_ptr<SequenceState> Model::new_sequence(attention::AttentionMode mode,
                                                   const attention::WaveIndexParams& params) const {
  auto seq = std::make_unique<SequenceState>();
  seq->mode_ = mode;
  attention::AttentionShape shape{config_.num_heads, config_.num_kv_heads, config_.head_dim};
  for (int l = 0; l < config_.num_layers; ++l)
    seq->layers_.push_back(std::make_unique<attention::SequenceKv>(shape, mode, params, host_));
  return seq;
}

void Model::forward(SequenceState& seq, const int32_t* tokens, int64_t n, bool decode_step, float* last_logits,
                    float* all_logits) const {
  const int64_t h = config_.hidden_size, d = config_.head_dim, nq = config_.num_heads, nkv = config_.num_kv_heads,
                f = config_.intermediate_size, v = config_.vocab_size;
  RETRO_CHECK(n > 0, "forward of zero tokens");
  RETRO_CHECK(!decode_step || n == 1, "a decode step takes one token, got {}", n);

  // Activations for this step (accounted, freed at return).
  auto act = [&](int64_t elems) { return TensorBuffer(host_, DType::kFP32, {elems}, MemoryPurpose::kActivations); };
  TensorBuffer x = act(n * h), xn = act(n * h), q = act(n * nq * d), k = act(n * nkv * d), vv = act(n * nkv * d),
               attn = act(n * nq * d), gate = act(n * f), up = act(n * f);
  float* X = x.data_as<float>();
  float* XN = xn.data_as<float>();
  ops::embedding(embed_.data_as<float>(), v, h, tokens, n, X);
  std::vector<int64_t> positions(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = seq.length_ + t;

  for (int l = 0; l < config_.num_layers; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l)];
    attention::SequenceKv& kv = *seq.layers_[static_cast<size_t>(l)];
    rms_norm(X, n, h, L.input_norm.data_as<float>(), config_.rms_norm_eps, XN);
    auto bias = [](const TensorBuffer& b) { return b.data() ? b.data_as<float>() : nullptr; };
    linear(XN, n, h, L.wq.data_as<float>(), nq * d, bias(L.bq), q.data_as<float>());
    linear(XN, n, h, L.wk.data_as<float>(), nkv * d, bias(L.bk), k.data_as<float>());
    linear(XN, n, h, L.wv.data_as<float>(), nkv * d, bias(L.bv), vv.data_as<float>());
    rope_.apply(q.data_as<float>(), n, static_cast<int>(nq), static_cast<int>(d), positions.data());
    rope_.apply(k.data_as<float>(), n, static_cast<int>(nkv), static_cast<int>(d), positions.data());
    kv.append(k.data_as<float>(), vv.data_as<float>(), n);
    if (decode_step) {
      kv.attend_decode(q.data_as<float>(), attn.data_as<float>());
    } else {
      kv.attend_causal_dense(q.data_as<float>(), n, attn.data_as<float>());
    }
    linear(attn.data_as<float>(), n, nq * d, L.wo.data_as<float>(), h, bias(L.bo), X, /*beta=*/1.0f);  // x += o
    rms_norm(X, n, h, L.post_norm.data_as<float>(), config_.rms_norm_eps, XN);
    float* G = gate.data_as<float>();
    float* U = up.data_as<float>();
    linear(XN, n, h, L.w_gate.data_as<float>(), f, bias(L.b_gate), G);
    linear(XN, n, h, L.w_up.data_as<float>(), f, bias(L.b_up), U);
    ops::silu_mul(G, U, n * f);
    linear(G, n, f, L.w_down.data_as<float>(), h, bias(L.b_down), X, /*beta=*/1.0f);  // x += mlp
  }
  seq.length_ += n;

  const float* head = config_.tie_word_embeddings ? embed_.data_as<float>() : lm_head_.data_as<float>();
  if (all_logits != nullptr) {
    rms_norm(X, n, h, final_norm_.data_as<float>(), config_.rms_norm_eps, XN);
    linear(XN, n, h, head, v, nullptr, all_logits);
  }
  if (last_logits != nullptr) {
    rms_norm(X + (n - 1) * h, 1, h, final_norm_.data_as<float>(), config_.rms_norm_eps, XN);
    linear(XN, 1, h, head, v, nullptr, last_logits);
  }
}

void Model::prefill(SequenceState& seq, std::span<const int32_t> tokens, float* logits,
                    const ForwardOptions& options) const {
  RETRO_CHECK(!tokens.empty(), "empty prompt");
  RETRO_CHECK(options.prefill_chunk > 0, "prefill chunk must be positive, got {}", options.prefill_chunk);
  RETRO_CHECK(!seq.indexed_, "prefill after the wave index was built; use decode");
  const int64_t total = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start < total; start += options.prefill_chunk) {
    int64_t n = std::min(options.prefill_chunk, total - start);
    bool last = start + n == total;
    forward(seq, tokens.data() + start, n, false, last ? logits : nullptr, nullptr);
  }
  if (seq.mode_ == attention::AttentionMode::kWave) {
    for (auto& kv : seq.layers_) kv->build_index();
    seq.indexed_ = true;
  }
}

void Model::decode(SequenceState& seq, int32_t token, float* logits) const {
  forward(seq, &token, 1, true, logits, nullptr);
}

void Model::score(SequenceState& seq, std::span<const int32_t> tokens, int64_t dense_prefix,
                  const std::function<void(int64_t position, std::span<const float> logits)>& consume,
                  const ForwardOptions& options) const {
  const int64_t total = static_cast<int64_t>(tokens.size());
  RETRO_CHECK(dense_prefix > 0 && dense_prefix <= total, "dense prefix {} must lie in [1, {}]", dense_prefix, total);
  RETRO_CHECK(options.prefill_chunk > 0, "prefill chunk must be positive, got {}", options.prefill_chunk);
  RETRO_CHECK(!seq.indexed_, "score on a sequence whose wave index is already built");
  const int64_t v = config_.vocab_size;
  const int64_t chunk = std::min(options.prefill_chunk, dense_prefix);
  TensorBuffer logits(host_, DType::kFP32, {chunk, v}, MemoryPurpose::kActivations);
  float* L = logits.data_as<float>();
  for (int64_t start = 0; start < dense_prefix; start += chunk) {
    const int64_t n = std::min(chunk, dense_prefix - start);
    forward(seq, tokens.data() + start, n, false, nullptr, L);
    for (int64_t t = 0; t < n; ++t) consume(seq.length_ - n + t, {L + t * v, static_cast<size_t>(v)});
  }
  if (seq.mode_ == attention::AttentionMode::kWave) {
    for (auto& kv : seq.layers_) kv->build_index();
    seq.indexed_ = true;
  }
  for (int64_t t = dense_prefix; t < total; ++t) {
    forward(seq, tokens.data() + t, 1, true, L, nullptr);
    consume(t, {L, static_cast<size_t>(v)});
  }
}

}  // namespace retro::runtime
