#pragma once
// The slice of a Llama-family model that one tensor-parallel rank computes, and the collectives that
// join the slices. runtime/ only declares them: parallel/sharding.h plans the slices and parallel/
// implements the collectives over MPI or NCCL, so the model never depends on how ranks talk.
//
// A shard owns whole KV heads and the query heads that read them (attention needs no cross-rank
// traffic), a contiguous block of MLP channels, and a block of vocabulary rows of the LM head. The
// O and down projections produce partial sums (one all-reduce each per layer); the LM head produces
// a block of logits (one all-gather per step).

#include <cstddef>
#include <cstdint>

#include "runtime/model_config.h"

struct CUstream_st;  // cudaStream_t, without the CUDA headers

namespace retro::runtime {

// [begin, end) of some index (heads, channels, vocabulary rows).
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;

  int64_t size() const { return end - begin; }
  bool operator==(const IndexRange&) const = default;
};

struct ModelShard {
  int tp = 1;    // ranks of the tensor-parallel group
  int rank = 0;  // this rank in the group, [0, tp)
  IndexRange q_heads;       // query heads: kv_heads scaled by the GQA group size
  IndexRange kv_heads;      // KV heads
  IndexRange intermediate;  // MLP channels (rows of gate/up, columns of down)
  IndexRange vocab;         // LM head rows: [rank * vocab_chunk, min((rank + 1) * vocab_chunk, vocab))
  int64_t vocab_chunk = 0;  // ceil(vocab / tp): the logits each rank adds to the gather (the last may hold fewer)

  // The whole model on one rank.
  static ModelShard whole(const ModelConfig& config);
  bool is_whole() const { return tp == 1; }
  // Vocabulary rows of group rank r under the rule above.
  IndexRange vocab_of(int r, int64_t vocab_size) const;
  // Throws retro::Error (kInvalidArgument) naming the field when the ranges do not fit `config`:
  // out of bounds, query heads not those of the KV heads, or a vocabulary block off the rule above.
  void validate(const ModelConfig& config) const;
};

// Collectives over the host fp32 activations of the forward pass, across the ranks of one tensor-
// parallel group. Every rank calls each one in the same order with the same count.
class ShardCollectives {
 public:
  virtual ~ShardCollectives() = default;
  // data [count]: replaced by its element-wise sum over the group.
  virtual void all_reduce_sum(float* data, int64_t count) = 0;
  // send [count] of every rank -> recv [group size * count], in group-rank order.
  virtual void all_gather(const float* send, int64_t count, float* recv) = 0;
};

// The same two collectives over device memory for the GPU model (runtime/cuda/gpu_model.h), enqueued
// on stream() with no host wait, so a captured decode step replays them. The model runs every kernel
// on that stream.
class DeviceShardCollectives {
 public:
  virtual ~DeviceShardCollectives() = default;
  // bf16 data [count] (device): replaced by its element-wise sum over the group.
  virtual void all_reduce_sum_bf16(void* data, int64_t count) = 0;
  // fp32 send [count] of every rank (device) -> recv [group size * count], in group-rank order.
  virtual void all_gather_fp32(const float* send, int64_t count, float* recv) = 0;
  virtual CUstream_st* stream() const = 0;
  // Device memory of at least `bytes` in which all_reduce_sum_bf16 runs faster (registered with the
  // group), owned by the collectives; null when there is none. Every rank asks at the same point.
  virtual void* symmetric_buffer(size_t bytes) {
    (void)bytes;
    return nullptr;
  }
};

// `config` with the head and channel counts of `shard` (num_heads, num_kv_heads and
// intermediate_size); the vocabulary and everything else stay the whole model's.
ModelConfig shard_config(const ModelConfig& config, const ModelShard& shard);

}  // namespace retro::runtime
