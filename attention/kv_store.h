#pragma once
// SequenceKv: the KV of one sequence in one layer (all KV heads), the object the model appends to
// and attends with. Dense mode keeps every token in position order; wave mode, once build_index()
// has run, keeps the steady zone (sink + window + new tokens) in position order and every other
// token in a WaveIndex per KV head, clustering each update segment of new tokens as it fills.
//
// Layout per KV head: sink store (the first sink_tokens positions), tail store (positions
// [tail_begin, size), in pages of host_page_tokens rows), and the wave index. K/V are fp32 (see
// wave_index.h for why); every byte comes from the host allocator (kKvHost for K/V, kIndex for the
// meta index).

#include <cstdint>
#include <memory>
#include <vector>

#include "attention/attention_shape.h"
#include "attention/wave_attention.h"
#include "attention/wave_index.h"
#include "runtime/core/allocator.h"

namespace retro::attention {

enum class AttentionMode { kDense, kWave };

const char* attention_mode_name(AttentionMode mode);  // "dense", "wave"

class SequenceKv {
 public:
  SequenceKv(AttentionShape shape, AttentionMode mode, const WaveIndexParams& params, Allocator& host_allocator);
  ~SequenceKv();
  SequenceKv(SequenceKv&&) noexcept;
  SequenceKv& operator=(SequenceKv&&) noexcept;

  const AttentionShape& shape() const { return shape_; }
  AttentionMode mode() const { return mode_; }
  const WaveIndexParams& params() const { return params_; }
  int64_t size() const { return size_; }  // tokens stored

  // k, v [n_tokens, num_kv_heads, head_dim] fp32, after RoPE. In wave mode with the index built, every
  // update segment of tokens past the window is clustered here.
  void append(const float* k, const float* v, int64_t n_tokens);

  // Exact causal attention: the n query tokens are the LAST n tokens stored (append first).
  // q [n, num_q_heads, head_dim] -> out [n, num_q_heads, head_dim]; lse [n, num_q_heads] optional.
  // After build_index() the queries must still be in the steady zone (n <= steady tokens).
  void attend_causal_dense(const float* q, int64_t n, float* out, float* lse = nullptr) const;

  // Wave mode: clusters every token outside the steady zone, per KV head (no-op in dense mode and
  // when already built; tokens appended later are clustered by growth).
  void build_index();
  bool index_built() const { return built_; }

  // One decode query (the last token stored): wave attention if the index is built, otherwise
  // dense. q [num_q_heads, head_dim] -> out [num_q_heads, head_dim]; lse [num_q_heads] optional.
  void attend_decode(const float* q, float* out, float* lse = nullptr);
  // Exact attention of one decode query over every stored token, whatever the mode (the reference
  // for measuring wave attention).
  void attend_decode_dense(const float* q, float* out, float* lse = nullptr) const;

  WaveStepStats last_stats() const { return last_stats_; }
  // Records the positions of every zone of each KV head in attend_decode (for recall measurements
  // and tests; it costs a pass over the clustered positions).
  void set_record_zones(bool on) { record_zones_ = on; }
  const std::vector<DecodeZones>& last_zones() const { return last_zones_; }  // [num_kv_heads]

  // Changes the decode budgets (validated like WaveIndexParams).
  void set_budgets(double retrieval_budget, double estimation_budget);

  const WaveIndex* index(int kv_head) const;  // nullptr before build_index()
  int64_t steady_tokens() const;              // tokens attended exactly without the index, per head
  size_t host_bytes() const;                  // all K/V and index bytes held

 private:
  struct Head;
  void steady_runs(const Head& head, std::vector<KvRun>& runs) const;
  void grow();

  AttentionShape shape_;
  AttentionMode mode_;
  WaveIndexParams params_;
  Allocator* allocator_;
  int64_t size_ = 0;
  int64_t tail_begin_ = 0;  // position of the first tail row
  bool built_ = false;
  bool record_zones_ = false;
  std::vector<std::unique_ptr<Head>> heads_;  // [num_kv_heads]
  WaveStepStats last_stats_;
  std::vector<DecodeZones> last_zones_;
};

}  // namespace retro::attention
