#pragma once
// Llama-family decoder (Llama 2/3/3.1, Qwen2/2.5, Mistral) on the CPU backend: embedding, RMSNorm,
// RoPE, GQA attention through attention/ (dense or wave), SwiGLU MLP, LM head. GEMMs go through
// OpenBLAS in fp32; weights are converted to fp32 once at load (accounted as kWeights).
//
// A Model is the whole model, or one tensor-parallel shard of it (runtime/model_shard.h): the shard
// holds only its slices of the weights and the KV of its heads, and joins the other ranks through
// ShardCollectives; every rank of the group then ends each step with the same full logits.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "attention/kv_store.h"
#include "runtime/core/allocator.h"
#include "runtime/core/tensor.h"
#include "runtime/model_config.h"
#include "runtime/model_shard.h"
#include "runtime/rope.h"
#include "runtime/weight_source.h"

namespace retro::runtime {

// One sequence's state: its KV (one SequenceKv per layer) and how many tokens it holds.
class SequenceState {
 public:
  int64_t length() const { return length_; }
  attention::AttentionMode mode() const { return mode_; }
  bool indexed() const { return indexed_; }
  const attention::SequenceKv& layer_kv(int layer) const { return *layers_[static_cast<size_t>(layer)]; }

 private:
  friend class Model;
  std::vector<std::unique_ptr<attention::SequenceKv>> layers_;
  attention::AttentionMode mode_ = attention::AttentionMode::kDense;
  int64_t length_ = 0;
  bool indexed_ = false;  // wave index built after the prompt
};

struct ForwardOptions {
  int64_t prefill_chunk = 512;  // prompt tokens processed per forward step (bounds activation memory)
};

class Model {
 public:
  // Reads and validates every weight the config needs from `weights` (converted to fp32).
  Model(const ModelConfig& config, const WeightSource& weights, Allocator& host_allocator);
  // One tensor-parallel shard. `weights` holds this shard's slices under the full model's names
  // (parallel/sharded_weights.h), each checked against the shape `shard` implies. `collectives`
  // joins the group and must outlive the model; it may be null only for a whole shard (tp 1).
  // Every rank of the group must run the same calls in the same order (they meet in collectives).
  Model(const ModelConfig& config, const WeightSource& weights, Allocator& host_allocator, const ModelShard& shard,
        ShardCollectives* collectives);

  const ModelConfig& config() const { return config_; }  // the full model's
  const ModelShard& shard() const { return shard_; }

  // A sequence over this shard's KV heads. Its K/V and wave index come from `kv_allocator` when given
  // (a pool of their own, which admission control reads: runtime/cpu_engine.h), else from the model's
  // host allocator; either must outlive the sequence.
  std::unique_ptr<SequenceState> new_sequence(attention::AttentionMode mode,
                                              const attention::WaveIndexParams& params = {},
                                              Allocator* kv_allocator = nullptr) const;

  // Runs the prompt in chunks (exact causal attention), builds the wave index when the sequence is in
  // wave mode, and writes the logits of the last prompt token. logits: [vocab] fp32.
  void prefill(SequenceState& seq, std::span<const int32_t> tokens, float* logits,
               const ForwardOptions& options = {}) const;
  // One chunk of a prompt, for callers that interleave prompts (runtime/engine.h): runs `tokens` at
  // the sequence's next positions with exact causal attention. When `ends_prompt`, writes the logits
  // of its last token (logits [vocab] fp32, unused otherwise) and builds the wave index (wave mode).
  // prefill() is this over chunks of options.prefill_chunk tokens, so the same chunks give the same
  // bytes.
  void prefill_chunk(SequenceState& seq, std::span<const int32_t> tokens, bool ends_prompt, float* logits) const;
  // Appends one token and writes its next-token logits (wave attention once indexed).
  void decode(SequenceState& seq, int32_t token, float* logits) const;
  // Teacher forcing, for perplexity: runs `tokens` and hands consume(position, logits [vocab]) the
  // next-token logits of every position in order. The first `dense_prefix` tokens are prefilled in
  // chunks (exact attention), the wave index is built (wave mode), and the rest are decoded one by
  // one, so in wave mode they see wave attention exactly as generation would.
  void score(SequenceState& seq, std::span<const int32_t> tokens, int64_t dense_prefix,
             const std::function<void(int64_t position, std::span<const float> logits)>& consume,
             const ForwardOptions& options = {}) const;

 private:
  struct Layer {
    TensorBuffer input_norm, post_norm;  // [hidden]
    TensorBuffer wq, wk, wv, wo;         // [out, in]; this shard's heads (rows of q/k/v, columns of o)
    TensorBuffer bq, bk, bv;             // [out] (attention_bias only)
    TensorBuffer bo;                     // [hidden] (attention_out_bias only)
    TensorBuffer w_gate, w_up, w_down;   // this shard's channels (rows of gate/up, columns of down)
    TensorBuffer b_gate, b_up, b_down;  // mlp_bias only
  };

  // Runs n tokens at positions [seq.length, seq.length + n) through every layer and appends their
  // K/V. Writes the logits of the last token (last_logits [vocab]) and/or of every token
  // (all_logits [n, vocab]) when given. decode_step: one token, wave attention once indexed.
  void forward(SequenceState& seq, const int32_t* tokens, int64_t n, bool decode_step, float* last_logits,
               float* all_logits) const;
  // logits [n, vocab] of the normed hidden states xn [n, hidden]: this shard's vocabulary rows,
  // gathered from the group when sharded.
  void lm_head(const float* xn, int64_t n, float* logits) const;

  ModelConfig config_;
  ModelShard shard_;
  ShardCollectives* collectives_ = nullptr;  // null for a whole model
  Allocator& host_;
  RopeTable rope_;
  TensorBuffer embed_;       // [vocab, hidden]
  TensorBuffer final_norm_;  // [hidden]
  TensorBuffer lm_head_;     // [shard vocab rows, hidden]; empty when tied to embed_
  std::vector<Layer> layers_;
};

}  // namespace retro::runtime
