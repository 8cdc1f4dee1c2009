#pragma once
// The tensors a Llama-family model reads, by Hugging Face name, and the check that a WeightSource
// holds them with the right shapes before any byte is loaded.

#include <functional>
#include <string>
#include <vector>

#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::runtime {

// Every tensor the forward pass reads, in load order (embedding, layers 0..L-1, final norm, LM head):
//   model.embed_tokens.weight                         [vocab, hidden]
//   model.layers.N.input_layernorm.weight             [hidden]
//   model.layers.N.self_attn.q_proj.weight            [heads * head_dim, hidden]   (+ .bias with attention_bias)
//   model.layers.N.self_attn.{k,v}_proj.weight        [kv_heads * head_dim, hidden] (+ .bias with attention_bias)
//   model.layers.N.self_attn.o_proj.weight            [hidden, heads * head_dim]   (+ .bias with attention_out_bias)
//   model.layers.N.post_attention_layernorm.weight    [hidden]
//   model.layers.N.mlp.{gate,up}_proj.weight          [intermediate, hidden]       (+ .bias with mlp_bias)
//   model.layers.N.mlp.down_proj.weight               [hidden, intermediate]       (+ .bias with mlp_bias)
//   model.norm.weight                                 [hidden]
//   lm_head.weight                                    [vocab, hidden]  unless tie_word_embeddings
// dtype is config.dtype.
std::vector<WeightInfo> expected_weights(const ModelConfig& config);

// Throws retro::Error (kInvalidInput) listing every expected tensor that is missing, has another
// shape, or is not stored as bf16, fp16 or fp32 (the first few by name, and how many in all).
// Tensors the model does not read (rotary caches of old checkpoints) are ignored.
void validate_weights(const ModelConfig& config, const WeightSource& source);

// Reads `names` one after the other into the tensor `destination` returns for each (shape and dtype
// as WeightSource::read requires). Shows a progress bar on stderr when it is a terminal and the
// tensors add up to at least `progress_min_bytes` as stored.
void read_weights(const WeightSource& source, const std::vector<std::string>& names,
                  const std::function<Tensor(const WeightInfo&)>& destination,
                  size_t progress_min_bytes = size_t{256} << 20);

}  // namespace retro::runtime
