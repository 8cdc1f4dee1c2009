#include "runtime/model_shard.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace retro::runtime {

ModelShard ModelShard::whole(const ModelConfig& config) {
  ModelShard s;
  s.q_heads = {0, config.num_heads};
  s.kv_heads = {0, config.num_kv_heads};
  s.intermediate = {0, config.intermediate_size};
  s.vocab = {0, config.vocab_size};
  s.vocab_chunk = config.vocab_size;
  return s;
}

IndexRange ModelShard::vocab_of(int r, int64_t vocab_size) const {
  const int64_t begin = std::min(vocab_size, r * vocab_chunk);
  return {begin, std::min(vocab_size, begin + vocab_chunk)};
}

void ModelShard::validate(const ModelConfig& config) const {
  RETRO_CHECK(tp >= 1 && rank >= 0 && rank < tp, "shard rank {} of a {}-rank group is out of range", rank, tp);
  auto inside = [](const IndexRange& r, int64_t n) { return r.begin >= 0 && r.begin < r.end && r.end <= n; };
  RETRO_CHECK(inside(kv_heads, config.num_kv_heads), "shard KV heads [{}, {}) are not a non-empty part of [0, {})",
              kv_heads.begin, kv_heads.end, config.num_kv_heads);
  const int64_t g = config.group_size();
  RETRO_CHECK(q_heads == (IndexRange{kv_heads.begin * g, kv_heads.end * g}),
              "shard query heads [{}, {}) are not those of its KV heads [{}, {}) (group size {})", q_heads.begin,
              q_heads.end, kv_heads.begin, kv_heads.end, g);
  RETRO_CHECK(inside(intermediate, config.intermediate_size),
              "shard MLP channels [{}, {}) are not a non-empty part of [0, {})", intermediate.begin,
              intermediate.end, config.intermediate_size);
  RETRO_CHECK(vocab_chunk > 0 && vocab_chunk * tp >= config.vocab_size && vocab == vocab_of(rank, config.vocab_size) &&
                  vocab.size() > 0,
              "shard vocabulary rows [{}, {}) (chunk {}) are not rank {}'s block of {} over {} ranks", vocab.begin,
              vocab.end, vocab_chunk, rank, config.vocab_size, tp);
}

ModelConfig shard_config(const ModelConfig& config, const ModelShard& shard) {
  ModelConfig local = config;
  local.num_heads = static_cast<int>(shard.q_heads.size());
  local.num_kv_heads = static_cast<int>(shard.kv_heads.size());
  local.intermediate_size = static_cast<int>(shard.intermediate.size());
  return local;
}

}  // namespace retro::runtime
