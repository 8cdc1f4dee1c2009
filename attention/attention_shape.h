#pragma once
// Head geometry of one attention layer: how many query heads share each KV head (GQA).

namespace retro::attention {

struct AttentionShape {
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;

  // Query heads per KV head; query head h reads KV head h / group_size().
  int group_size() const { return num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0; }
  // Throws retro::Error (kInvalidArgument) naming the field when a count is not positive or the
  // query heads do not split evenly over the KV heads.
  void validate() const;
};

}  // namespace retro::attention
