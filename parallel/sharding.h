#pragma once
// Head sharding plan: which slice of a Llama-family model each tensor-parallel rank holds. Ranks
// own whole KV heads (so each keeps the wave index and wave buffer of its heads and attention needs
// no cross-rank traffic), contiguous blocks of MLP channels and of vocabulary rows:
//
//   q_proj, k_proj, v_proj (+ bias)   column-parallel: the rows of this rank's heads
//   o_proj                            row-parallel: the columns of this rank's query heads
//   gate_proj, up_proj (+ bias)       column-parallel: the rows of this rank's channels
//   down_proj                         row-parallel: the columns of this rank's channels
//   lm_head                           vocab-parallel: rows [tp_rank * chunk, +chunk), chunk = ceil(vocab / tp)
//   embedding, norms, o/down biases   whole on every rank (row-parallel biases are added once, by
//                                     group rank 0; a tied LM head is this rank's rows of the embedding)

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"
#include "runtime/model_config.h"
#include "runtime/model_shard.h"

namespace retro::parallel {

// The part of one weight a rank loads: [begin, end) of its rows (dimension 0) or of its columns
// (dimension 1, of a 2-D [out, in] weight), or all of it.
struct WeightSlice {
  enum class Axis { kWhole, kRows, kColumns };
  Axis axis = Axis::kWhole;
  int64_t begin = 0;
  int64_t end = 0;

  // The shape of the slice of a tensor of shape `full` (checked to contain it).
  Shape local_shape(const Shape& full) const;
  bool operator==(const WeightSlice&) const = default;
};

struct ShardingPlan {
  runtime::ModelShard shard;  // this rank's heads, channels and vocabulary rows
  int64_t head_dim = 0;

  // The slice of the tensor named `name` (Hugging Face naming, weight_source.h) this rank loads;
  // kWhole for tensors every rank holds whole (and for names the model does not read).
  WeightSlice slice(const std::string& name) const;
  // "tp_rank 1/2: KV heads [1, 2), query heads [4, 8), MLP channels [768, 1536), vocabulary [64, 128)"
  std::string describe() const;
};

// The plan of rank `tp_rank` in a group of `tp`. Throws retro::Error (kInvalidArgument) naming the
// model's numbers and the tensor-parallel sizes that fit it when tp does not divide the KV heads or
// the MLP channels, or the vocabulary is too small to give every rank rows.
ShardingPlan plan_sharding(const runtime::ModelConfig& config, int tp, int tp_rank);

// Every tensor-parallel size the model can be cut into (1 first).
std::vector<int> valid_tp_sizes(const runtime::ModelConfig& config);

}  // namespace retro::parallel
