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
    : Model(config, weights, host_allocator, ModelShard::whole(config), nullptr) {}

Model::Model(const ModelConfig& config, const WeightSource& weights, Allocator& host_allocator,
             const ModelShard& shard, ShardCollectives* collectives)
    : config_(config), shard_(shard), collectives_(collectives), host_(host_allocator), rope_(config) {
  config_.validate();
  shard_.validate(config_);
  RETRO_CHECK(shard_.is_whole() || collectives_ != nullptr, "a shard of a {}-rank group needs collectives",
              shard_.tp);
  // A whole model is checked up front against the config, listing every problem; a shard's source
  // checked the full tensors before slicing, and take() below checks each slice.
  if (shard_.is_whole()) validate_weights(config_, weights);
  // Every expected tensor lands in an fp32 host buffer, then moves to its slot below.
  std::unordered_map<std::string, TensorBuffer> loaded;
  std::vector<std::string> names;
  for (const WeightInfo& w : expected_weights(config_)) names.push_back(w.name);
  read_weights(weights, names, [&](const WeightInfo& info) -> Tensor {
    auto [it, inserted] =
        loaded.emplace(info.name, TensorBuffer(host_, DType::kFP32, info.shape, MemoryPurpose::kWeights));
    return it->second.view();
  });
  auto take = [&](const std::string& name, Shape shape) {
    auto it = loaded.find(name);
    RETRO_ASSERT(it != loaded.end());
    RETRO_CHECK_INPUT(it->second.view().shape() == shape,
                      "tensor '{}' has shape {}, rank {} of {} computes with {}", name,
                      it->second.view().shape().str(), shard_.rank, shard_.tp, shape.str());
    TensorBuffer b = std::move(it->second);
    loaded.erase(it);
    return b;
  };
  auto take_if = [&](bool present, const std::string& name, Shape shape) {
    return present ? take(name, shape) : TensorBuffer();
  };
  const int64_t h = config_.hidden_size, d = config_.head_dim, v = config_.vocab_size;
  const int64_t q = shard_.q_heads.size() * d, kv = shard_.kv_heads.size() * d, f = shard_.intermediate.size();
  embed_ = take("model.embed_tokens.weight", {v, h});
  final_norm_ = take("model.norm.weight", {h});
  if (!config_.tie_word_embeddings) lm_head_ = take("lm_head.weight", {shard_.vocab.size(), h});
  layers_.resize(static_cast<size_t>(config_.num_layers));
  for (int l = 0; l < config_.num_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    L.input_norm = take(p + "input_layernorm.weight", {h});
    L.post_norm = take(p + "post_attention_layernorm.weight", {h});
    L.wq = take(p + "self_attn.q_proj.weight", {q, h});
    L.wk = take(p + "self_attn.k_proj.weight", {kv, h});
    L.wv = take(p + "self_attn.v_proj.weight", {kv, h});
    L.wo = take(p + "self_attn.o_proj.weight", {h, q});
    L.bq = take_if(config_.attention_bias, p + "self_attn.q_proj.bias", {q});
    L.bk = take_if(config_.attention_bias, p + "self_attn.k_proj.bias", {kv});
    L.bv = take_if(config_.attention_bias, p + "self_attn.v_proj.bias", {kv});
    L.bo = take_if(config_.attention_out_bias, p + "self_attn.o_proj.bias", {h});
    L.w_gate = take(p + "mlp.gate_proj.weight", {f, h});
    L.w_up = take(p + "mlp.up_proj.weight", {f, h});
    L.w_down = take(p + "mlp.down_proj.weight", {h, f});
    L.b_gate = take_if(config_.mlp_bias, p + "mlp.gate_proj.bias", {f});
    L.b_up = take_if(config_.mlp_bias, p + "mlp.up_proj.bias", {f});
    L.b_down = take_if(config_.mlp_bias, p + "mlp.down_proj.bias", {h});
  }
}

std::unique_ptr<SequenceState> Model::new_sequence(attention::AttentionMode mode,
                                                   const attention::WaveIndexParams& params,
                                                   Allocator* kv_allocator) const {
  auto seq = std::make_unique<SequenceState>();
  seq->mode_ = mode;
  attention::AttentionShape shape{static_cast<int>(shard_.q_heads.size()), static_cast<int>(shard_.kv_heads.size()),
                                  config_.head_dim};
  Allocator& kv = kv_allocator != nullptr ? *kv_allocator : host_;
  for (int l = 0; l < config_.num_layers; ++l)
    seq->layers_.push_back(std::make_unique<attention::SequenceKv>(shape, mode, params, kv));
  return seq;
}

void Model::forward(SequenceState& seq, const int32_t* tokens, int64_t n, bool decode_step, float* last_logits,
                    float* all_logits) const {
  // Head and channel counts of this shard (the whole model's when not sharded).
  const int64_t h = config_.hidden_size, d = config_.head_dim, nq = shard_.q_heads.size(),
                nkv = shard_.kv_heads.size(), f = shard_.intermediate.size(), v = config_.vocab_size;
  // Row-parallel O and down projections: rank 0 adds its partial product (and the bias) to the
  // residual stream, the other ranks overwrite it with theirs, and the all-reduce leaves residual +
  // the full product on every rank. Unsharded, this is the plain residual add.
  const bool lead = shard_.rank == 0;
  const float residual = lead ? 1.0f : 0.0f;
  auto reduce = [&](float* data, int64_t count) {
    if (collectives_ != nullptr) collectives_->all_reduce_sum(data, count);
  };
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
    linear(attn.data_as<float>(), n, nq * d, L.wo.data_as<float>(), h, lead ? bias(L.bo) : nullptr, X, residual);
    reduce(X, n * h);  // x += o
    rms_norm(X, n, h, L.post_norm.data_as<float>(), config_.rms_norm_eps, XN);
    float* G = gate.data_as<float>();
    float* U = up.data_as<float>();
    linear(XN, n, h, L.w_gate.data_as<float>(), f, bias(L.b_gate), G);
    linear(XN, n, h, L.w_up.data_as<float>(), f, bias(L.b_up), U);
    ops::silu_mul(G, U, n * f);
    linear(G, n, f, L.w_down.data_as<float>(), h, lead ? bias(L.b_down) : nullptr, X, residual);
    reduce(X, n * h);  // x += mlp
  }
  seq.length_ += n;

  if (all_logits != nullptr) {
    rms_norm(X, n, h, final_norm_.data_as<float>(), config_.rms_norm_eps, XN);
    lm_head(XN, n, all_logits);
  }
  if (last_logits != nullptr) {
    rms_norm(X + (n - 1) * h, 1, h, final_norm_.data_as<float>(), config_.rms_norm_eps, XN);
    lm_head(XN, 1, last_logits);
  }
}

void Model::lm_head(const float* xn, int64_t n, float* logits) const {
  const int64_t h = config_.hidden_size, v = config_.vocab_size;
  // Tied embeddings: this shard's LM head is its block of rows of the (replicated) embedding.
  const float* head = config_.tie_word_embeddings ? embed_.data_as<float>() + shard_.vocab.begin * h
                                                  : lm_head_.data_as<float>();
  if (collectives_ == nullptr) {
    linear(xn, n, h, head, shard_.vocab.size(), nullptr, logits);
    return;
  }
  // Every rank sends vocab_chunk values per token (its [n, rows] block, zero-padded) and rebuilds
  // the full logits, so every rank samples the same token and no token broadcast is needed.
  const int64_t chunk = shard_.vocab_chunk, block = n * chunk;
  TensorBuffer mine(host_, DType::kFP32, {block}, MemoryPurpose::kActivations);
  TensorBuffer all(host_, DType::kFP32, {shard_.tp * block}, MemoryPurpose::kActivations);
  float* M = mine.data_as<float>();
  const int64_t rows = shard_.vocab.size();
  linear(xn, n, h, head, rows, nullptr, M);
  std::fill(M + n * rows, M + block, 0.0f);
  collectives_->all_gather(M, block, all.data_as<float>());
  for (int r = 0; r < shard_.tp; ++r) {
    const IndexRange range = shard_.vocab_of(r, v);
    const float* src = all.data_as<float>() + r * block;  // [n, range.size()]
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(src + t * range.size(), range.size(), logits + t * v + range.begin);
  }
}

void Model::prefill(SequenceState& seq, std::span<const int32_t> tokens, float* logits,
                    const ForwardOptions& options) const {
  RETRO_CHECK(!tokens.empty(), "empty prompt");
  RETRO_CHECK(options.prefill_chunk > 0, "prefill chunk must be positive, got {}", options.prefill_chunk);
  const size_t chunk = static_cast<size_t>(options.prefill_chunk);
  for (size_t start = 0; start < tokens.size(); start += chunk) {
    const size_t n = std::min(chunk, tokens.size() - start);
    prefill_chunk(seq, tokens.subspan(start, n), start + n == tokens.size(), logits);
  }
}

void Model::prefill_chunk(SequenceState& seq, std::span<const int32_t> tokens, bool ends_prompt, float* logits) const {
  RETRO_CHECK(!tokens.empty(), "empty prompt chunk");
  RETRO_CHECK(!seq.indexed_, "prefill after the wave index was built; use decode");
  forward(seq, tokens.data(), static_cast<int64_t>(tokens.size()), false, ends_prompt ? logits : nullptr, nullptr);
  if (ends_prompt && seq.mode_ == attention::AttentionMode::kWave) {
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
