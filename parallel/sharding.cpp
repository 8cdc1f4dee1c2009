#include "parallel/sharding.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <string_view>

#include "runtime/core/error.h"

namespace retro::parallel {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Every rank must get vocabulary rows: the first tp - 1 chunks may not already cover the vocabulary.
bool vocab_fits(int64_t vocab, int tp) { return (tp - 1) * ceil_div(vocab, tp) < vocab; }

bool fits(const runtime::ModelConfig& c, int tp) {
  return c.num_kv_heads % tp == 0 && c.intermediate_size % tp == 0 && vocab_fits(c.vocab_size, tp);
}

}  // namespace

Shape WeightSlice::local_shape(const Shape& full) const {
  if (axis == Axis::kWhole) return full;
  const int dim = axis == Axis::kRows ? 0 : 1;
  RETRO_CHECK(full.size() > dim && begin >= 0 && begin < end && end <= full[dim],
              "slice [{}, {}) of dimension {} does not fit shape {}", begin, end, dim, full.str());
  Shape s = full;
  s[dim] = end - begin;
  return s;
}

WeightSlice ShardingPlan::slice(const std::string& name) const {
  using Axis = WeightSlice::Axis;
  const std::string_view n(name);
  auto is = [&](std::string_view suffix) { return n.starts_with("model.layers.") && n.ends_with(suffix); };
  const runtime::IndexRange q{shard.q_heads.begin * head_dim, shard.q_heads.end * head_dim};
  const runtime::IndexRange kv{shard.kv_heads.begin * head_dim, shard.kv_heads.end * head_dim};
  const runtime::IndexRange& f = shard.intermediate;
  if (is(".self_attn.q_proj.weight") || is(".self_attn.q_proj.bias")) return {Axis::kRows, q.begin, q.end};
  if (is(".self_attn.k_proj.weight") || is(".self_attn.k_proj.bias") || is(".self_attn.v_proj.weight") ||
      is(".self_attn.v_proj.bias"))
    return {Axis::kRows, kv.begin, kv.end};
  if (is(".self_attn.o_proj.weight")) return {Axis::kColumns, q.begin, q.end};
  if (is(".mlp.gate_proj.weight") || is(".mlp.gate_proj.bias") || is(".mlp.up_proj.weight") ||
      is(".mlp.up_proj.bias"))
    return {Axis::kRows, f.begin, f.end};
  if (is(".mlp.down_proj.weight")) return {Axis::kColumns, f.begin, f.end};
  if (n == "lm_head.weight") return {Axis::kRows, shard.vocab.begin, shard.vocab.end};
  return {};
}

std::string ShardingPlan::describe() const {
  const runtime::ModelShard& s = shard;
  return fmt::format("tp_rank {}/{}: KV heads [{}, {}), query heads [{}, {}), MLP channels [{}, {}), "
                     "vocabulary [{}, {})",
                     s.rank, s.tp, s.kv_heads.begin, s.kv_heads.end, s.q_heads.begin, s.q_heads.end,
                     s.intermediate.begin, s.intermediate.end, s.vocab.begin, s.vocab.end);
}

ShardingPlan plan_sharding(const runtime::ModelConfig& config, int tp, int tp_rank) {
  config.validate();
  RETRO_CHECK(tp >= 1, "tensor parallelism must be at least 1, got {}", tp);
  RETRO_CHECK(tp_rank >= 0 && tp_rank < tp, "tp_rank {} is not a rank of a group of {}", tp_rank, tp);
  const std::string fitting = fmt::format("{}", fmt::join(valid_tp_sizes(config), ", "));
  RETRO_CHECK(config.num_kv_heads % tp == 0,
              "tensor parallelism {} does not divide the {} KV heads of this {} model: each rank owns whole KV "
              "heads (tp that fit: {})",
              tp, config.num_kv_heads, config.architecture, fitting);
  RETRO_CHECK(config.intermediate_size % tp == 0,
              "tensor parallelism {} does not divide the MLP intermediate size {} of this {} model (tp that fit: {})",
              tp, config.intermediate_size, config.architecture, fitting);
  RETRO_CHECK(vocab_fits(config.vocab_size, tp),
              "a vocabulary of {} rows cannot give each of {} ranks a block of ceil({} / {}) rows (tp that fit: {})",
              config.vocab_size, tp, config.vocab_size, tp, fitting);
  ShardingPlan plan;
  plan.head_dim = config.head_dim;
  runtime::ModelShard& s = plan.shard;
  s.tp = tp;
  s.rank = tp_rank;
  const int64_t kv_per_rank = config.num_kv_heads / tp, g = config.group_size();
  s.kv_heads = {tp_rank * kv_per_rank, (tp_rank + 1) * kv_per_rank};
  s.q_heads = {s.kv_heads.begin * g, s.kv_heads.end * g};
  const int64_t f_per_rank = config.intermediate_size / tp;
  s.intermediate = {tp_rank * f_per_rank, (tp_rank + 1) * f_per_rank};
  s.vocab_chunk = ceil_div(config.vocab_size, tp);
  s.vocab = s.vocab_of(tp_rank, config.vocab_size);
  s.validate(config);
  return plan;
}

std::vector<int> valid_tp_sizes(const runtime::ModelConfig& config) {
  std::vector<int> sizes;
  for (int tp = 1; tp <= config.num_kv_heads; ++tp)
    if (fits(config, tp)) sizes.push_back(tp);
  return sizes;
}

}  // namespace retro::parallel
