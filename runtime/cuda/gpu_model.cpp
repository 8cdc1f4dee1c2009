// Host orchestration of the GPU Llama forward pass (no kernels here: see ops.cu and attention/cuda).

#include "runtime/cuda/gpu_model.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>
#include <vector>

#include "attention/cuda/decode_attention.h"
#include "attention/cuda/prefill_attention.h"
#include "attention/cuda/wave_build.h"
#include "attention/cuda/wave_retrieve.h"
#include "attention/cuda/wave_select.h"
#include "attention/wave_growth.h"
#include "runtime/core/allocator.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/cuda/swap.h"
#include "runtime/core/env.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/sampling.h"
#include "runtime/model_weights.h"
#include "runtime/rope.h"

#define RETRO_CUBLAS_CHECK(expr)                                                                           \
  do {                                                                                                     \
    cublasStatus_t retro_cublas_status_ = (expr);                                                          \
    RETRO_CHECK_KIND(retro_cublas_status_ == CUBLAS_STATUS_SUCCESS, ::retro::ErrorKind::kCuda, "{} failed: {}", \
                     #expr, cublasGetStatusString(retro_cublas_status_));                                  \
  } while (0)

namespace retro::runtime::cuda {

namespace {

namespace wave = attention::cuda;

// Where a decode step's logits go: to the host, into a token per row sampled on the device, or (every
// row greedy) into a token per row picked from one candidate per row and rank.
enum class LogitsOut { kHost, kSampled, kGreedy };

struct Layer {
  // Q, K and V projections stacked into one [(q_heads + 2 kv_heads) head_dim, hidden] weight (and
  // bias), gate and up into one [2 intermediate, hidden]: one GEMM each.
  Buffer input_norm, post_norm, wqkv, wo, bqkv, bo, w_gate_up, w_down, b_gate_up, b_down;
  Buffer k_cache, v_cache;  // dense: [max_batch, max_tokens, kv_heads, head_dim] bf16
};

// Bytes of the host-store pages: page_rows rows of one KV head.
size_t host_page_bytes(const ModelConfig& c, const GpuModelOptions& o) {
  return size_t(o.host_store.page_rows) * size_t(c.head_dim) * 2;
}

// K and V bytes of every layer of every slot at max_tokens: what the host store may hold, and what
// the cluster cache's kv_fraction is a fraction of.
size_t offloaded_kv_bytes(const ModelConfig& c, int64_t max_tokens, int max_batch) {
  return 2 * size_t(c.num_layers) * size_t(max_batch) * size_t(max_tokens) * size_t(c.kv_size()) * 2;
}

// The cluster cache of the options. Sized by a fraction of the offloaded KV, a short context could
// give less than one set: it gets one set rather than an error. All sizes zero: no cache.
wave::WaveCacheLayout plan_cluster_cache(const ModelConfig& c, int64_t max_tokens, const GpuModelOptions& o) {
  wave::WaveBufferParams p = o.buffer;
  if (p.num_slots == 0 && p.cache_bytes == 0 && p.kv_fraction <= 0.0) return {};
  if (p.num_slots == 0) {
    const size_t slot_bytes = wave::wave_cache_slot_bytes(p, c.head_dim);
    const double bytes = p.cache_bytes > 0 ? double(p.cache_bytes)
                                           : p.kv_fraction * double(offloaded_kv_bytes(c, max_tokens, o.max_batch));
    p.num_slots = std::max<int64_t>(static_cast<int64_t>(bytes / double(slot_bytes)), p.ways);
  }
  return wave::plan_wave_cache(p, c.head_dim);
}

GpuModelOptions dense_options(int64_t max_chunk, bool use_cuda_graph, int max_batch) {
  GpuModelOptions o;
  o.max_chunk = max_chunk;
  o.use_cuda_graph = use_cuda_graph;
  o.max_batch = max_batch;
  return o;
}

}  // namespace

struct GpuModel::Impl {
  ModelConfig full_config;  // the whole model
  ModelConfig config;       // this shard's heads and MLP channels (shard_config); the whole model unsharded
  ModelShard shard;
  DeviceShardCollectives* collectives = nullptr;  // null: whole
  bool own_stream = true;                         // false: the collectives' stream
  GpuModelOptions options;
  GpuModelMemoryPlan plan;
  int device = 0;
  int64_t max_tokens = 0, max_chunk = 0;
  int max_batch = 1;
  bool wave_mode = false;
  std::vector<int64_t> lengths;  // per slot
  // Per slot: the admission order of the slot's sequence (wave growth breaks ties by it, so a
  // sequence's growth steps do not depend on its slot).
  std::vector<uint64_t> sequence;
  uint64_t next_sequence = 0;
  int64_t slot_elems = 0;        // dense: max_tokens * kv_heads * head_dim, one slot's cache per layer
  std::unique_ptr<Allocator> allocator;
  std::unique_ptr<Allocator> pinned;            // wave: host store pages
  std::unique_ptr<wave::HostPagePool> pool;     // wave: shared by every layer's host store
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  Buffer embed, final_norm, lm_head;
  std::vector<Layer> layers;
  // Workspaces for max_chunk tokens (ids and positions: wave mode, a whole prompt).
  // logits: [max_batch, vocab_chunk] fp32, this shard's vocabulary rows; gathered: [tp, max_batch,
  // vocab_chunk], every rank's (tp > 1).
  Buffer x, xn, q, attn, qkv, gate_up, mlp, logits, gathered, ids, positions, seq_len, inv_freq, k_new, v_new, cublas_ws;
  // The residual stream of a chunk or decode batch: x, or (x left empty) the collectives' symmetric
  // buffer, where the all-reduces after O and down run faster.
  void* residual = nullptr;
  // Wave prefill, layer-major.
  Buffer hidden;              // [max_tokens, hidden] bf16: the residual stream of every prompt token
  // [max_tokens, kv_heads, head_dim] bf16: one layer's K/V of the prompt, two layers' in turn: layer l
  // writes buffer l % 2 while layer l - 1's index is built from the other on build_stream.
  Buffer prompt_k[2], prompt_v[2];
  cudaStream_t build_stream = nullptr;
  cudaEvent_t kv_written[2] = {nullptr, nullptr};  // on stream: a layer's K/V are in buffer i
  cudaEvent_t kv_built[2] = {nullptr, nullptr};    // on build_stream: buffer i's index is built (free again)
  cudaEvent_t prompt_done = nullptr;               // on stream: a wave prompt's last logits are on the host
  Buffer cache_memory;        // the cluster cache (wave_cache.h layout)
  wave::WaveCacheView cache;  // num_sets == 0: no cache
  std::vector<std::unique_ptr<wave::WaveLayerKv>> wave_kv;  // [num_layers]
  std::unique_ptr<wave::WaveKvScratch> kv_scratch;          // build and growth scratch the layers share
  // Pinned host staging of a decode step: read and written by copies inside the captured graph.
  int32_t* h_tokens = nullptr;  // [max_batch]
  int64_t* h_pos = nullptr;     // [max_batch]
  int32_t* h_lens = nullptr;    // [max_batch]
  float* h_logits = nullptr;    // [tp, max_batch, vocab_chunk]
  // Sampling on the device (decode_sample): per-row parameters staged in pinned memory and copied
  // inside the step, like the tokens. One block each on the host and the device, laid out as
  // SamplingLayout says; logits_full gathers a shard group's blocks into [max_batch, vocab].
  struct SamplingLayout {
    size_t uniform = 0, temperature = 0, top_p = 0, top_k = 0, next = 0, bytes = 0;
    explicit SamplingLayout(int rows = 0) {
      const size_t n = size_t(rows);
      temperature = uniform + n * 8;
      top_p = temperature + n * 4;
      top_k = top_p + n * 4;
      next = top_k + n * 4;
      bytes = next + n * 4;
    }
  };
  SamplingLayout sampling_layout;
  char* h_sampling = nullptr;
  Buffer d_sampling, logits_full;
  Buffer candidates, gathered_candidates;  // greedy: [max_batch] this shard's, [tp, max_batch] the group's
  bool use_graph = true;
  // Per decode batch size: its plan, workspace and captured step.
  struct DecodeStep {
    attention::cuda::DecodeAttentionPlan plan;
    Buffer workspace;
    cudaGraphExec_t graph = nullptr;          // the step with its logits copied to the host
    cudaGraphExec_t sampled_graph = nullptr;  // the step with its tokens sampled on the device
    cudaGraphExec_t greedy_graph = nullptr;   // the step with greedy tokens picked on the device
  };
  std::vector<DecodeStep> steps;  // index: batch size
  float attention_scaling = 1.0f;
  // Benchmarking: attention inputs in place of the projections' (all null: off).
  AttentionInputOverride inputs_override;
  int64_t segments_grown = 0;  // wave: (layer, slot) update segments clustered by decode steps so far

  // The decode step's attention inputs: the projections' scratch rows, or the override's rows.
  const void* decode_q() const { return inputs_override.decode_q ? inputs_override.decode_q : q.data(); }
  const void* decode_k() const { return inputs_override.decode_k ? inputs_override.decode_k : k_new.data(); }
  const void* decode_v() const { return inputs_override.decode_v ? inputs_override.decode_v : v_new.data(); }

  // A prompt of `end` positions must lie inside the override's prompt K/V.
  void check_prompt_override(int64_t end) const {
    if (!inputs_override.prompt_k) return;
    RETRO_CHECK(end <= inputs_override.prompt_tokens,
                "the attention input override holds prompt K/V of {} tokens, the prompt reaches position {}",
                inputs_override.prompt_tokens, end);
  }

  // The shapes this model (or shard) expects of each weight, by name.
  std::unordered_map<std::string, Shape> weight_shapes;

  // Reads the named tensor (checked against the shape this model expects) into dst on the device.
  void upload_weight_to(const WeightSource& w, const std::string& name, void* dst) {
    WeightInfo info = w.info(name);
    const Shape& want = weight_shapes.at(name);
    RETRO_CHECK_KIND(info.shape == want, ErrorKind::kInvalidInput,
                     "tensor '{}' has shape {}, rank {} of {} expects {}", name, info.shape.str(), shard.rank, shard.tp,
                     want.str());
    std::vector<bf16> host(static_cast<size_t>(info.shape.numel()));
    w.read(name, Tensor(host.data(), DType::kBF16, info.shape));
    RETRO_CUDA_CHECK(cudaMemcpy(dst, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  }

  Buffer upload_weight(const WeightSource& w, const std::string& name) { return upload_stacked(w, {name}); }

  // The named tensors stacked along their first dimension into one device buffer (in order).
  Buffer upload_stacked(const WeightSource& w, std::initializer_list<std::string> names) {
    size_t total = 0;
    for (const std::string& name : names) total += size_t(weight_shapes.at(name).numel());
    Buffer b = allocator->allocate(total * 2, MemoryPurpose::kWeights);
    size_t at = 0;
    for (const std::string& name : names) {
      upload_weight_to(w, name, static_cast<char*>(b.data()) + at);
      at += size_t(weight_shapes.at(name).numel()) * 2;
    }
    return b;
  }

  // y[n, out] (bf16) = x[n, in] (bf16) @ w[out, in]^T, + beta * y; fp32 accumulation. Rows of y
  // are ldy elements apart (0: out).
  void gemm(const void* xp, int64_t n, int64_t in, const void* w, int64_t out, void* y, float beta,
            cudaDataType_t y_type = CUDA_R_16BF, int64_t ldy = 0) {
    const float alpha = 1.0f;
    RETRO_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(n), int(in), &alpha, w, CUDA_R_16BF,
                                    int(in), xp, CUDA_R_16BF, int(in), &beta, y, y_type, int(ldy ? ldy : out),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // Row-parallel projections (O, down) of a shard produce partial sums: the group's first rank adds
  // them to the residual stream, the others overwrite it, and one all-reduce leaves the sum on every
  // rank. Whole: the plain residual add.
  float residual_beta() const { return collectives == nullptr || shard.rank == 0 ? 1.0f : 0.0f; }
  void reduce_residual(void* xp, int64_t n) {
    if (collectives != nullptr) collectives->all_reduce_sum_bf16(xp, n * config.hidden_size);
  }

  void check_slot(int slot) const {
    RETRO_CHECK(slot >= 0 && slot < max_batch, "sequence slot {} outside [0, {})", slot, max_batch);
  }
  // tokens may be null (a context filled without tokens): then only the slot and the room are checked.
  void check_step(int slot, const int32_t* tokens, int64_t n) const {
    check_slot(slot);
    RETRO_CHECK_KIND(lengths[size_t(slot)] + n <= max_tokens, ErrorKind::kOutOfMemory,
                     "sequence of {} tokens does not fit the KV cache planned for {} tokens", lengths[size_t(slot)] + n,
                     max_tokens);
    for (int64_t i = 0; tokens != nullptr && i < n; ++i)
      RETRO_CHECK(tokens[i] >= 0 && tokens[i] < config.vocab_size, "token id {} is outside the vocabulary [0, {})",
                  tokens[i], config.vocab_size);
  }

  float sm_scale() const { return 1.0f / std::sqrt(float(config.head_dim)); }

  // Causal attention of a prompt chunk: the n_q query rows in `q` are the last n_q of the n_kv
  // token-major K/V rows at k, v ([n_kv, kv_heads, head_dim] bf16) -> attn.
  void chunk_attention(const void* k, const void* v, int64_t n_q, int64_t n_kv) {
    const ModelConfig& c = config;
    attention::cuda::PrefillAttentionParams a;
    a.q = q.data();
    a.q_stride_token = int64_t(c.num_heads) * c.head_dim;
    a.k = k;
    a.v = v;
    a.kv_stride_token = int64_t(c.num_kv_heads) * c.head_dim;
    a.kv_stride_head = c.head_dim;
    a.out = attn.data();
    a.n_q = n_q;
    a.n_kv = n_kv;
    a.num_q_heads = c.num_heads;
    a.num_kv_heads = c.num_kv_heads;
    a.head_dim = c.head_dim;
    a.sm_scale = sm_scale();
    attention::cuda::run_prefill_attention(a, stream);
  }

  // RMSNorm -> Q, K, V projections (+ biases) -> RoPE for n tokens. xp [n, hidden] bf16 -> q
  // [n, q_heads, head_dim]; K/V rows [n, kv_heads, head_dim] bf16 at k_rows, v_rows; pos [n] (device).
  void attention_inputs(const Layer& L, const void* xp, int64_t n, const int64_t* pos, void* k_rows, void* v_rows) {
    const ModelConfig& c = config;
    const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads;
    const auto* inv = static_cast<const float*>(inv_freq.data());
    RETRO_CUDA_CHECK(rms_norm(xp, L.input_norm.data(), xn.data(), n, h, c.rms_norm_eps, stream));
    gemm(xn.data(), n, h, L.wqkv.data(), (nq + 2 * nkv) * d, qkv.data(), 0.0f);
    RETRO_CUDA_CHECK(qkv_split_rope(qkv.data(), L.bqkv ? L.bqkv.data() : nullptr, q.data(), k_rows, v_rows, pos, inv,
                                    attention_scaling, n, int(nq), int(nkv), int(d), int(d), stream));
  }

  // The rest of a layer after attention wrote attn [n, q_heads, head_dim]: xp [n, hidden] += O
  // projection, then += MLP(RMSNorm(xp)).
  void attention_output_and_mlp(const Layer& L, void* xp, int64_t n) {
    const ModelConfig& c = config;
    const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, f = c.intermediate_size;
    gemm(attn.data(), n, nq * d, L.wo.data(), h, xp, residual_beta());  // x += o
    reduce_residual(xp, n);
    if (L.bo) RETRO_CUDA_CHECK(add_bias(xp, L.bo.data(), n, h, stream));
    RETRO_CUDA_CHECK(rms_norm(xp, L.post_norm.data(), xn.data(), n, h, c.rms_norm_eps, stream));
    gemm(xn.data(), n, h, L.w_gate_up.data(), 2 * f, gate_up.data(), 0.0f);
    if (L.b_gate_up) RETRO_CUDA_CHECK(add_bias(gate_up.data(), L.b_gate_up.data(), n, 2 * f, stream));
    RETRO_CUDA_CHECK(silu_mul_fused(gate_up.data(), mlp.data(), n, f, stream));
    gemm(mlp.data(), n, f, L.w_down.data(), h, xp, residual_beta());  // x += mlp
    reduce_residual(xp, n);
    if (L.b_down) RETRO_CUDA_CHECK(add_bias(xp, L.b_down.data(), n, h, stream));
  }

  // Final norm and LM head of `rows` consecutive hidden rows xp [rows, hidden] -> h_logits, copied in
  // stream order: [rows, vocab] fp32, or for a shard the gathered blocks [tp, rows, vocab_chunk] of
  // every rank's vocabulary rows (copy_logits puts them in place).
  void project_logits(const void* xp, int64_t rows, LogitsOut to = LogitsOut::kHost) {
    const ModelConfig& c = config;
    RETRO_CUDA_CHECK(rms_norm(xp, final_norm.data(), xn.data(), rows, c.hidden_size, c.rms_norm_eps, stream));
    // Tied: this shard's head is its block of rows of the (replicated) embedding.
    const char* head = c.tie_word_embeddings ? static_cast<const char*>(embed.data()) + shard.vocab.begin * c.hidden_size * 2
                                             : static_cast<const char*>(lm_head.data());
    const int64_t chunk = shard.vocab_chunk;
    gemm(xn.data(), rows, c.hidden_size, head, shard.vocab.size(), logits.data(), 0.0f, CUDA_R_32F, chunk);
    if (to == LogitsOut::kGreedy) {
      pick_greedy_tokens(rows);
      return;
    }
    const void* out = logits.data();
    if (collectives != nullptr) {
      collectives->all_gather_fp32(static_cast<const float*>(logits.data()), rows * chunk,
                                   static_cast<float*>(gathered.data()));
      out = gathered.data();
    }
    if (to == LogitsOut::kSampled) {
      sample_next_tokens(out, rows);
      return;
    }
    RETRO_CUDA_CHECK(cudaMemcpyAsync(h_logits, out, size_t(shard.tp * rows * chunk) * 4, cudaMemcpyDeviceToHost, stream));
  }

  // Greedy rows from this shard's logits block: its best logit per row (a candidate of 8 bytes), the
  // group's candidates gathered (not the logits), the best of them -> h_sampling's next.
  void pick_greedy_tokens(int64_t rows) {
    const SamplingLayout& L = sampling_layout;
    char* d = static_cast<char*>(d_sampling.data());
    auto* mine = static_cast<ArgmaxCandidate*>(candidates.data());
    RETRO_CUDA_CHECK(argmax_rows(static_cast<const float*>(logits.data()), rows, shard.vocab.size(), shard.vocab_chunk,
                                 shard.vocab.begin, mine, stream));
    const ArgmaxCandidate* all = mine;
    if (collectives != nullptr) {
      // A candidate is two 4-byte words; the gather moves bytes.
      collectives->all_gather_fp32(reinterpret_cast<const float*>(mine), rows * 2,
                                   reinterpret_cast<float*>(gathered_candidates.data()));
      all = static_cast<const ArgmaxCandidate*>(gathered_candidates.data());
    }
    RETRO_CUDA_CHECK(pick_best_candidates(all, shard.tp, rows, reinterpret_cast<int32_t*>(d + L.next), stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(h_sampling + L.next, d + L.next, size_t(rows) * 4, cudaMemcpyDeviceToHost, stream));
  }

  // The step's logits (this shard's block, or the gathered blocks [tp, rows, vocab_chunk]) -> one
  // token per row sampled on the device with the staged parameters -> h_sampling's next, in stream
  // order. Every rank of a group samples the same tokens from the same logits and uniforms.
  void sample_next_tokens(const void* blocks, int64_t rows) {
    const int64_t vocab = config.vocab_size, chunk = shard.vocab_chunk;
    const float* rows_logits = static_cast<const float*>(blocks);
    if (!shard.is_whole()) {
      // [tp, rows, chunk] -> [rows, vocab]: each rank's block lands in its vocabulary columns.
      for (int r = 0; r < shard.tp; ++r) {
        const IndexRange range = shard.vocab_of(r, vocab);
        RETRO_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<float*>(logits_full.data()) + range.begin, size_t(vocab) * 4,
                                           rows_logits + r * rows * chunk, size_t(chunk) * 4, size_t(range.size()) * 4,
                                           size_t(rows), cudaMemcpyDeviceToDevice, stream));
      }
      rows_logits = static_cast<const float*>(logits_full.data());
    }
    const SamplingLayout& L = sampling_layout;
    char* d = static_cast<char*>(d_sampling.data());
    RETRO_CUDA_CHECK(cudaMemcpyAsync(d, h_sampling, L.next, cudaMemcpyHostToDevice, stream));
    SamplingRows params;
    params.uniform = reinterpret_cast<const double*>(d + L.uniform);
    params.temperature = reinterpret_cast<const float*>(d + L.temperature);
    params.top_p = reinterpret_cast<const float*>(d + L.top_p);
    params.top_k = reinterpret_cast<const int32_t*>(d + L.top_k);
    RETRO_CUDA_CHECK(sample_rows(rows_logits, rows, vocab, params, reinterpret_cast<int32_t*>(d + L.next), stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(h_sampling + L.next, d + L.next, size_t(rows) * 4, cudaMemcpyDeviceToHost, stream));
  }

  // After the stream is synchronised: h_logits of `rows` rows -> out [rows, vocab].
  void copy_logits(int64_t rows, float* out) const {
    const int64_t vocab = config.vocab_size, chunk = shard.vocab_chunk;
    if (shard.is_whole()) {
      std::copy_n(h_logits, size_t(rows * vocab), out);
      return;
    }
    for (int r = 0; r < shard.tp; ++r) {
      const IndexRange range = shard.vocab_of(r, vocab);
      for (int64_t i = 0; i < rows; ++i)
        std::copy_n(h_logits + (r * rows + i) * chunk, size_t(range.size()), out + i * vocab + range.begin);
    }
  }

  // Every launch of one step over n tokens whose ids, positions and total length are already in
  // device memory. decode_step (n == 1 per sequence): K/V go through scratch rows, attention is the
  // split-KV decode kernel over the dense cache (dense) or WaveLayerKv append + attend (wave), and
  // nothing depends on host values — the step can be captured in a graph. Dense prefill: K/V land
  // straight in their cache rows and attention is the tensor-core prefill kernel.
  void run_layers(int64_t n, bool decode_step, bool want_logits, int slot = 0, DecodeStep* step = nullptr,
                  LogitsOut to = LogitsOut::kHost) {
    const ModelConfig& c = config;
    const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads;
    auto bf = [](const Buffer& b) { return static_cast<char*>(b.data()); };
    RETRO_CUDA_CHECK(embedding(embed.data(), static_cast<const int32_t*>(ids.data()), residual, n, h, c.vocab_size,
                               nullptr, stream));
    const auto* pos = static_cast<const int64_t*>(positions.data());
    for (size_t l = 0; l < layers.size(); ++l) {
      Layer& L = layers[l];
      if (decode_step) {
        // With an override the projections still run (their time is real) but attention reads the
        // override's rows: the pointers are fixed when the step is captured.
        attention_inputs(L, residual, n, pos, k_new.data(), v_new.data());
        if (wave_mode) {
          wave_kv[l]->append(decode_k(), decode_v(), int(n), stream);
          wave_kv[l]->attend(decode_q(), attn.data(), nullptr, int(n), sm_scale(), cache, stream);
        } else {
          RETRO_CUDA_CHECK(append_kv(decode_k(), decode_v(), L.k_cache.data(), L.v_cache.data(), pos, n, nkv * d,
                                     slot_elems, stream));
          attention::cuda::DecodeAttentionParams a;
          a.q = decode_q();
          a.q_stride_batch = nq * d;
          a.k = L.k_cache.data();
          a.v = L.v_cache.data();
          a.kv_stride_batch = slot_elems;
          a.kv_stride_head = d;
          a.kv_stride_token = nkv * d;
          a.seq_lens = static_cast<const int32_t*>(seq_len.data());
          a.out = attn.data();
          a.batch = int(n);
          a.num_q_heads = int(nq);
          a.num_kv_heads = int(nkv);
          a.head_dim = int(d);
          a.sm_scale = sm_scale();
          attention::cuda::run_decode_attention(a, step->plan, step->workspace.data(), stream);
        }
      } else {
        const int64_t length = lengths[size_t(slot)];
        char* k_slot = bf(L.k_cache) + size_t(slot) * slot_elems * 2;
        char* v_slot = bf(L.v_cache) + size_t(slot) * slot_elems * 2;
        attention_inputs(L, residual, n, pos, k_slot + length * nkv * d * 2, v_slot + length * nkv * d * 2);
        if (inputs_override.prompt_k) {
          // The cache keeps the rows for decode, so the override's rows are copied over the projected ones.
          const size_t offset = size_t(length * nkv * d) * 2, bytes = size_t(n * nkv * d) * 2;
          RETRO_CUDA_CHECK(cudaMemcpyAsync(k_slot + offset, static_cast<const char*>(inputs_override.prompt_k) + offset,
                                           bytes, cudaMemcpyDeviceToDevice, stream));
          RETRO_CUDA_CHECK(cudaMemcpyAsync(v_slot + offset, static_cast<const char*>(inputs_override.prompt_v) + offset,
                                           bytes, cudaMemcpyDeviceToDevice, stream));
        }
        chunk_attention(k_slot, v_slot, n, length + n);
      }
      attention_output_and_mlp(L, residual, n);
    }
    // Prefill: the last token only. Decode: every row is a sequence's newest token.
    if (want_logits)
      project_logits(static_cast<char*>(residual) + (decode_step ? 0 : (n - 1) * h * 2), decode_step ? n : 1, to);
  }

  void prefill_chunk(int slot, const int32_t* tokens, int64_t n, float* host_logits) {
    check_step(slot, tokens, n);
    RETRO_CHECK(n > 0 && n <= max_chunk, "GPU prefill of {} tokens (1..{} per step)", n, max_chunk);
    int64_t& length = lengths[size_t(slot)];
    check_prompt_override(length + n);
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = length + i;
    RETRO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), tokens, size_t(n) * 4, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(positions.data(), pos.data(), size_t(n) * 8, cudaMemcpyHostToDevice, stream));
    run_layers(n, /*decode_step=*/false, host_logits != nullptr, slot);
    RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    length += n;
    if (host_logits != nullptr) copy_logits(1, host_logits);
  }

  // Wave prefill, layer-major: for each layer, every chunk of the prompt runs through it (its K/V
  // land in prompt_k/prompt_v[l % 2] and its queries attend over the prompt's rows so far), then the
  // layer's K/V of the whole prompt are clustered into its WaveLayerKv on build_stream, beside the
  // next layer's chunks, which write the other buffer. Chunk by chunk the arithmetic is the one of
  // the dense prefill.
  void prefill_wave(int slot, std::span<const int32_t> tokens, float* host_logits) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    check_step(slot, tokens.data(), n);
    RETRO_CHECK(lengths[size_t(slot)] == 0,
                "wave attention builds a slot's index from its whole prompt: slot {} already holds {} tokens "
                "(reset it first)",
                slot, lengths[size_t(slot)]);
    check_prompt_override(n);
    const ModelConfig& c = config;
    const int64_t h = c.hidden_size, d = c.head_dim, nkv = c.num_kv_heads, row = nkv * d;
    auto bf = [](const Buffer& b) { return static_cast<char*>(b.data()); };
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = i;
    try {
      RETRO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), tokens.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream));
      RETRO_CUDA_CHECK(cudaMemcpyAsync(positions.data(), pos.data(), size_t(n) * 8, cudaMemcpyHostToDevice, stream));
      RETRO_CUDA_CHECK(embedding(embed.data(), static_cast<const int32_t*>(ids.data()), hidden.data(), n, h,
                                 c.vocab_size, nullptr, stream));
      const auto* dpos = static_cast<const int64_t*>(positions.data());
      for (size_t l = 0; l < layers.size(); ++l) {
        const Layer& L = layers[l];
        const int buf = int(l % 2);
        // With an override the projections still fill the buffer (their time is real), but the chunks
        // attend over, and the index is built from, the override's rows.
        const void* attend_k = inputs_override.prompt_k ? inputs_override.prompt_k : prompt_k[buf].data();
        const void* attend_v = inputs_override.prompt_v ? inputs_override.prompt_v : prompt_v[buf].data();
        // Layer l - 2's build has read this buffer.
        if (l >= 2) RETRO_CUDA_CHECK(cudaStreamWaitEvent(stream, kv_built[buf], 0));
        for (int64_t start = 0; start < n; start += max_chunk) {
          const int64_t m = std::min(max_chunk, n - start);
          char* xs = bf(hidden) + start * h * 2;
          attention_inputs(L, xs, m, dpos + start, bf(prompt_k[buf]) + start * row * 2,
                           bf(prompt_v[buf]) + start * row * 2);
          chunk_attention(attend_k, attend_v, m, start + m);
          attention_output_and_mlp(L, xs, m);
        }
        // The index build and offload of layer l (k-means, writes over PCIe) run beside layer l + 1.
        RETRO_CUDA_CHECK(cudaEventRecord(kv_written[buf], stream));
        RETRO_CUDA_CHECK(cudaStreamWaitEvent(build_stream, kv_written[buf], 0));
        wave_kv[l]->build(slot, attend_k, attend_v, n, row, build_stream);
        RETRO_CUDA_CHECK(cudaEventRecord(kv_built[buf], build_stream));
      }
      // The first token needs the last layer's output, not its index: the logits go out while the
      // last build still runs. Whatever comes next on stream (a decode step reads every layer's
      // index, another prompt reuses the K/V buffers) waits for it.
      if (host_logits != nullptr) project_logits(bf(hidden) + (n - 1) * h * 2, 1);
      RETRO_CUDA_CHECK(cudaEventRecord(prompt_done, stream));
      RETRO_CUDA_CHECK(cudaStreamWaitEvent(stream, kv_built[(layers.size() - 1) % 2], 0));
      RETRO_CUDA_CHECK(cudaEventSynchronize(prompt_done));
    } catch (...) {
      // Layers built before the failure would otherwise keep the slot and refuse its next prompt.
      cudaStreamSynchronize(build_stream);
      release_wave_slot(slot);
      throw;
    }
    lengths[size_t(slot)] = n;
    sequence[size_t(slot)] = next_sequence++;
    if (host_logits != nullptr) copy_logits(1, host_logits);
  }

  // The override's prompt rows [0, n) become the empty slot's context without the model running
  // over them: dense copies them into every layer's cache, wave builds every layer's index.
  void fill_from_override(int slot, int64_t n) {
    RETRO_CHECK(inputs_override.prompt_k != nullptr,
                "filling a slot from the attention input override needs its prompt K/V (none is set)");
    RETRO_CHECK(n > 0, "filling slot {} with {} tokens", slot, n);
    check_slot(slot);
    RETRO_CHECK(lengths[size_t(slot)] == 0, "slot {} already holds {} tokens (reset it first)", slot,
                lengths[size_t(slot)]);
    check_step(slot, nullptr, n);
    check_prompt_override(n);
    const int64_t row = int64_t(config.num_kv_heads) * config.head_dim;
    const void* k = inputs_override.prompt_k;
    const void* v = inputs_override.prompt_v;
    try {
      for (size_t l = 0; l < layers.size(); ++l) {
        if (wave_mode) {
          wave_kv[l]->build(slot, k, v, n, row, stream);
          continue;
        }
        const size_t offset = size_t(slot) * size_t(slot_elems) * 2, bytes = size_t(n * row) * 2;
        RETRO_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(layers[l].k_cache.data()) + offset, k, bytes,
                                         cudaMemcpyDeviceToDevice, stream));
        RETRO_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(layers[l].v_cache.data()) + offset, v, bytes,
                                         cudaMemcpyDeviceToDevice, stream));
      }
      RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      if (wave_mode) release_wave_slot(slot);
      throw;
    }
    lengths[size_t(slot)] = n;
    sequence[size_t(slot)] = next_sequence++;
  }

  // Best effort (after an error the stream may be broken too): every layer forgets the slot.
  void release_wave_slot(int slot) noexcept {
    for (auto& kv : wave_kv) {
      try {
        kv->release(slot, stream);
      } catch (...) {
      }
    }
  }

  // The decode step's inputs travel from pinned host memory inside the step, so a captured graph
  // reads this step's values on every replay.
  void decode_body(int batch, DecodeStep& step, LogitsOut to) {
    RETRO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), h_tokens, size_t(batch) * 4, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(positions.data(), h_pos, size_t(batch) * 8, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(seq_len.data(), h_lens, size_t(batch) * 4, cudaMemcpyHostToDevice, stream));
    run_layers(batch, /*decode_step=*/true, /*want_logits=*/true, 0, &step, to);
  }

  // Update segments are clustered between steps: grow() plans, may allocate and moves rows to the
  // host store, none of which a captured step may do. A due segment may wait its slack, so the
  // segments a batch fills together are spread over the following steps (pick_growth); the slots
  // of a layer picked together grow in one build.
  void grow_due_segments(int batch) {
    std::vector<attention::DueSegment> due;
    for (size_t l = 0; l < wave_kv.size(); ++l)
      for (int b = 0; b < batch; ++b)
        if (wave_kv[l]->growth_due(b))
          due.push_back({int(l), b, wave_kv[l]->growth_steps_left(b), sequence[size_t(b)]});
    if (due.empty()) return;
    // RETRO_WAVE_GROWTH=eager: every due segment at once (no spreading).
    static const bool eager = env_is("RETRO_WAVE_GROWTH", "eager");
    std::vector<attention::DueSegment> picked = eager ? std::move(due) : attention::pick_growth(std::move(due));
    std::sort(picked.begin(), picked.end(), [](const attention::DueSegment& a, const attention::DueSegment& b) {
      return a.layer != b.layer ? a.layer < b.layer : a.slot < b.slot;
    });
    std::vector<int> slots;
    for (size_t i = 0; i < picked.size();) {
      const int layer = picked[i].layer;
      slots.clear();
      for (; i < picked.size() && picked[i].layer == layer; ++i) slots.push_back(picked[i].slot);
      wave_kv[size_t(layer)]->grow(slots, stream);
      segments_grown += int64_t(slots.size());
    }
  }

  // WaveLayerKv advances the host copy of its steady-zone counts (which decide when grow() is due)
  // in append(); a replayed graph runs append()'s kernel but not its host code, so the counts
  // advance here.
  void advance_wave_counts(int batch) {
    for (auto& kv : wave_kv) kv->advance(batch);
  }

  // One decode step of slots [0, tokens.size()): logits -> host_logits, or (sampling != null) the
  // next token of each slot sampled on the device -> next.
  void decode_tokens(std::span<const int32_t> tokens, float* host_logits, const SamplingParams* sampling = nullptr,
                     const double* uniforms = nullptr, int32_t* next = nullptr) {
    const int batch = static_cast<int>(tokens.size());
    RETRO_CHECK(batch >= 1 && batch <= max_batch, "decode batch of {} sequences (1..{})", batch, max_batch);
    for (int b = 0; b < batch; ++b) {
      check_step(b, &tokens[size_t(b)], 1);
      RETRO_CHECK(!wave_mode || lengths[size_t(b)] > 0, "wave decode of slot {} before its prompt (prefill it first)",
                  b);
      h_tokens[b] = tokens[size_t(b)];
      h_pos[b] = lengths[size_t(b)];
      h_lens[b] = static_cast<int32_t>(lengths[size_t(b)] + 1);
    }
    const bool sampled = sampling != nullptr;
    if (sampled) stage_sampling(batch, sampling, uniforms);
    const bool all_greedy = sampled && std::all_of(sampling, sampling + batch, [](const SamplingParams& p) { return p.greedy(); });
    const LogitsOut to = !sampled ? LogitsOut::kHost : all_greedy ? LogitsOut::kGreedy : LogitsOut::kSampled;
    if (wave_mode) grow_due_segments(batch);
    DecodeStep& step = steps[size_t(batch)];
    if (!wave_mode && step.plan.tokens_per_split == 0) {
      const ModelConfig& c = config;
      step.plan = attention::cuda::plan_decode_attention(batch, c.num_heads, c.num_kv_heads, c.head_dim, max_tokens);
      if (step.plan.workspace_bytes) step.workspace = allocator->allocate(step.plan.workspace_bytes, MemoryPurpose::kWorkspace);
    }
    if (!use_graph) {
      decode_body(batch, step, to);
    } else {
      cudaGraphExec_t& graph = to == LogitsOut::kHost ? step.graph
                               : to == LogitsOut::kSampled ? step.sampled_graph
                                                           : step.greedy_graph;
      const bool replay = graph != nullptr;
      if (!replay) {
        cudaGraph_t g = nullptr;
        RETRO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
          decode_body(batch, step, to);
        } catch (...) {
          cudaStreamEndCapture(stream, &g);
          if (g) cudaGraphDestroy(g);
          throw;
        }
        RETRO_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
        cudaError_t st = cudaGraphInstantiate(&graph, g, 0);
        cudaGraphDestroy(g);
        RETRO_CUDA_CHECK(st);
      }
      RETRO_CUDA_CHECK(cudaGraphLaunch(graph, stream));
      // The capture ran append()'s host code already; a replay did not.
      if (wave_mode && replay) advance_wave_counts(batch);
    }
    RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int b = 0; b < batch; ++b) lengths[size_t(b)] += 1;
    if (!sampled) {
      copy_logits(batch, host_logits);
      return;
    }
    const int32_t* sampled_tokens = reinterpret_cast<const int32_t*>(h_sampling + sampling_layout.next);
    for (int b = 0; b < batch; ++b) {
      RETRO_CHECK_KIND(sampled_tokens[b] >= 0, ErrorKind::kInternal,
                       "the logits of slot {} hold a NaN: the forward pass broke", b);
      next[b] = sampled_tokens[b];
    }
  }

  // Rows [0, batch) of the pinned sampling block (copied to the device inside the step).
  void stage_sampling(int batch, const SamplingParams* sampling, const double* uniforms) {
    const SamplingLayout& L = sampling_layout;
    for (int b = 0; b < batch; ++b) {
      const SamplingParams& p = sampling[b];
      p.validate();
      RETRO_CHECK(uniforms[b] >= 0.0 && uniforms[b] < 1.0, "the uniform of slot {} is {}, outside [0, 1)", b,
                  uniforms[b]);
      reinterpret_cast<double*>(h_sampling + L.uniform)[b] = uniforms[b];
      reinterpret_cast<float*>(h_sampling + L.temperature)[b] = p.temperature;
      reinterpret_cast<float*>(h_sampling + L.top_p)[b] = p.top_p;
      reinterpret_cast<int32_t*>(h_sampling + L.top_k)[b] = p.top_k;
    }
  }

  void set_attention_override(const AttentionInputOverride& o) {
    const bool prompt = o.prompt_k || o.prompt_v;
    RETRO_CHECK(!prompt || (o.prompt_k && o.prompt_v && o.prompt_tokens > 0),
                "attention input override: prompt_k and prompt_v go together, with prompt_tokens > 0 (got {})",
                o.prompt_tokens);
    const bool decode = o.decode_q || o.decode_k || o.decode_v;
    RETRO_CHECK(!decode || (o.decode_q && o.decode_k && o.decode_v),
                "attention input override: decode_q, decode_k and decode_v go together");
    const AttentionInputOverride& old = inputs_override;
    if (o.decode_q != old.decode_q || o.decode_k != old.decode_k || o.decode_v != old.decode_v) {
      // Captured steps hold the old addresses; each batch size is captured again on its next step.
      RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
      for (DecodeStep& step : steps) {
        for (cudaGraphExec_t* g : {&step.graph, &step.sampled_graph, &step.greedy_graph}) {
          if (*g) RETRO_CUDA_CHECK(cudaGraphExecDestroy(*g));
          *g = nullptr;
        }
      }
    }
    inputs_override = o;
    if (!prompt) {
      inputs_override.prompt_k = inputs_override.prompt_v = nullptr;
      inputs_override.prompt_tokens = 0;
    }
  }

  void check_wave(const char* what) const {
    RETRO_CHECK(wave_mode, "{} needs a model in wave attention mode (this one is dense)", what);
  }
};

GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& c, int64_t max_tokens, int64_t max_chunk, int max_batch) {
  return plan_gpu_model_memory(c, max_tokens, dense_options(max_chunk, true, max_batch));
}

GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& c, int64_t max_tokens, const GpuModelOptions& o) {
  return plan_gpu_model_memory(c, max_tokens, o, ModelShard::whole(c));
}

GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& full, int64_t max_tokens, const GpuModelOptions& o,
                                         const ModelShard& shard) {
  const ModelConfig c = shard_config(full, shard);
  const int64_t max_chunk = o.max_chunk;
  const int max_batch = o.max_batch;
  GpuModelMemoryPlan p;
  for (const WeightInfo& w : expected_weights(c)) p.weights += size_t(w.shape.numel()) * 2;
  // A shard's LM head holds only its vocabulary rows (the embedding is whole on every rank).
  if (!c.tie_word_embeddings) p.weights -= size_t(c.vocab_size - shard.vocab.size()) * size_t(c.hidden_size) * 2;
  const size_t rows = size_t(std::max<int64_t>(std::min(max_chunk, max_tokens), max_batch));
  const size_t h = size_t(c.hidden_size), q = size_t(c.q_size()), f = size_t(c.intermediate_size);
  // Own block (+ the gathered ones and their [max_batch, vocab] arrangement for device sampling).
  const size_t logit_blocks = shard.is_whole() ? 1 : size_t(shard.tp) + 2;
  const size_t qkv = q + 2 * size_t(c.kv_size());  // the fused Q/K/V projection's row
  p.activations = rows * (2 * h + 2 * q + qkv + 3 * f) * 2 + logit_blocks * size_t(max_batch) * size_t(shard.vocab_chunk) * 4 +
                  rows * 12 + (size_t(32) << 20);  // + cuBLAS workspace
  if (o.attention == attention::AttentionMode::kDense) {
    p.kv_cache = 2 * size_t(c.num_layers) * size_t(max_batch) * size_t(max_tokens) * size_t(c.kv_size()) * 2;
    return p;
  }
  const wave::WaveKvShape shape{max_batch, c.num_heads, c.num_kv_heads, c.head_dim, max_tokens};
  // Every layer's own buffers, and one build and growth scratch all layers share (they build and grow
  // one after another).
  const wave::WaveLayerKvSizes z =
      wave::plan_wave_layer_kv(shape, o.wave, o.buffer, host_page_bytes(c, o), c.num_layers);
  p.wave_kv = size_t(c.num_layers) * (z.total() - z.build) + z.build +
              (max_batch > 1 ? wave::wave_growth_scratch_bytes(shape, o.wave) : 0);
  p.cluster_cache = plan_cluster_cache(c, max_tokens, o).bytes;
  // Residual stream, ids and positions of a max_tokens prompt; K and V of two layers (one being
  // projected while the other's index is built).
  p.prefill = size_t(max_tokens) * (h * 2 + 12) + 4 * size_t(max_tokens) * size_t(c.kv_size()) * 2;
  return p;
}

GpuModel::GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
                   int64_t max_chunk, bool use_cuda_graph, int max_batch)
    : GpuModel(config, weights, device, max_tokens, dense_options(max_chunk, use_cuda_graph, max_batch)) {}

GpuModel::GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
                   const GpuModelOptions& options)
    : GpuModel(config, weights, device, max_tokens, options, ModelShard::whole(config), nullptr) {}

GpuModel::GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
                   const GpuModelOptions& options, const ModelShard& shard, DeviceShardCollectives* collectives)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  const int64_t max_chunk = options.max_chunk;
  const int max_batch = options.max_batch;
  m.options = options;
  m.use_graph = options.use_cuda_graph;
  m.wave_mode = options.attention == attention::AttentionMode::kWave;
  RETRO_CHECK(max_batch >= 1, "GPU model needs max_batch >= 1, got {}", max_batch);
  m.max_batch = max_batch;
  m.lengths.assign(size_t(max_batch), 0);
  m.sequence.assign(size_t(max_batch), 0);
  m.steps.resize(size_t(max_batch) + 1);
  m.full_config = config;
  m.full_config.validate();
  shard.validate(m.full_config);
  RETRO_CHECK(shard.is_whole() == (collectives == nullptr),
              "a GPU model shard of a {}-rank group needs device collectives (and a whole model none)", shard.tp);
  m.shard = shard;
  m.collectives = collectives;
  m.config = shard_config(m.full_config, shard);
  // A whole model is checked up front, listing every problem; a shard's source (ShardedWeightSource)
  // checked the whole checkpoint, and each slice's shape is checked as it is read.
  if (shard.is_whole()) validate_weights(m.config, weights);
  RETRO_CHECK(max_tokens > 0 && max_chunk > 0, "GPU model needs positive max_tokens and max_chunk");
  if (m.wave_mode) {
    options.wave.validate();
    options.host_store.validate(host_page_bytes(m.config, options));
  }
  m.device = device;
  m.max_tokens = max_tokens;
  m.max_chunk = std::min(max_chunk, max_tokens);
  m.allocator = make_device_allocator(device);
  RETRO_CUDA_CHECK(cudaSetDevice(device));
  {
    m.plan = plan_gpu_model_memory(m.full_config, max_tokens, options, shard);
    const GpuModelMemoryPlan& plan = m.plan;
    size_t free_b = 0, total_b = 0;
    RETRO_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (!m.wave_mode) {
      RETRO_CHECK_KIND(plan.total() <= free_b, ErrorKind::kOutOfMemory,
                       "the model needs {} on cuda:{} ({} weights, {} KV cache for {} x {} tokens, {} activations) "
                       "but {} of {} is free",
                       format_bytes(plan.total()), device, format_bytes(plan.weights), format_bytes(plan.kv_cache),
                       max_batch, max_tokens, format_bytes(plan.activations), format_bytes(free_b),
                       format_bytes(total_b));
    } else {
      RETRO_CHECK_KIND(plan.total() <= free_b, ErrorKind::kOutOfMemory,
                       "the model with wave attention needs {} on cuda:{} ({} weights, {} wave KV for {} x {} tokens "
                       "(steady zones, meta index, workspaces of {} layers), {} cluster cache, {} prefill buffers, "
                       "{} activations) but {} of {} is free",
                       format_bytes(plan.total()), device, format_bytes(plan.weights), format_bytes(plan.wave_kv),
                       max_batch, max_tokens, m.config.num_layers, format_bytes(plan.cluster_cache),
                       format_bytes(plan.prefill), format_bytes(plan.activations), format_bytes(free_b),
                       format_bytes(total_b));
    }
  }
  if (collectives != nullptr) {
    m.stream = collectives->stream();
    m.own_stream = false;
  } else {
    RETRO_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  }
  RETRO_CUBLAS_CHECK(cublasCreate(&m.cublas));
  RETRO_CUBLAS_CHECK(cublasSetStream(m.cublas, m.stream));
  const ModelConfig& c = m.config;
  const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads, f = c.intermediate_size;
  for (const WeightInfo& w : expected_weights(c)) m.weight_shapes[w.name] = w.shape;
  m.weight_shapes["lm_head.weight"] = Shape{shard.vocab.size(), h};
  m.embed = m.upload_weight(weights, "model.embed_tokens.weight");
  m.final_norm = m.upload_weight(weights, "model.norm.weight");
  if (!c.tie_word_embeddings) m.lm_head = m.upload_weight(weights, "lm_head.weight");
  m.layers.resize(size_t(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& L = m.layers[size_t(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    auto up = [&](const std::string& n) { return m.upload_weight(weights, p + n); };
    L.input_norm = up("input_layernorm.weight");
    L.post_norm = up("post_attention_layernorm.weight");
    auto stacked = [&](const char* a, const char* b, const char* c3) {
      return c3 ? m.upload_stacked(weights, {p + a, p + b, p + c3}) : m.upload_stacked(weights, {p + a, p + b});
    };
    L.wqkv = stacked("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight");
    L.wo = up("self_attn.o_proj.weight");
    if (c.attention_bias) L.bqkv = stacked("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias");
    if (c.attention_out_bias) L.bo = up("self_attn.o_proj.bias");
    L.w_gate_up = stacked("mlp.gate_proj.weight", "mlp.up_proj.weight", nullptr);
    L.w_down = up("mlp.down_proj.weight");
    if (c.mlp_bias) {
      L.b_gate_up = stacked("mlp.gate_proj.bias", "mlp.up_proj.bias", nullptr);
      L.b_down = up("mlp.down_proj.bias");
    }
    if (!m.wave_mode) {
      m.slot_elems = max_tokens * nkv * d;
      const size_t cache_bytes = size_t(max_batch) * size_t(m.slot_elems) * 2;
      L.k_cache = m.allocator->allocate(cache_bytes, MemoryPurpose::kKvCache);
      L.v_cache = m.allocator->allocate(cache_bytes, MemoryPurpose::kKvCache);
    }
  }
  const int64_t chunk = std::max<int64_t>(m.max_chunk, max_batch);  // rows of a prefill chunk or a decode batch
  // Wave prefill embeds and rotates the whole prompt at once.
  const int64_t id_rows = m.wave_mode ? std::max(chunk, max_tokens) : chunk;
  auto act = [&](size_t bytes) { return m.allocator->allocate(bytes, MemoryPurpose::kActivations); };
  const size_t residual_bytes = size_t(chunk * h) * 2;
  if (m.collectives != nullptr) m.residual = m.collectives->symmetric_buffer(residual_bytes);
  if (m.residual == nullptr) {
    m.x = act(residual_bytes);
    m.residual = m.x.data();
  }
  m.xn = act(size_t(chunk * h) * 2);
  m.q = act(size_t(chunk * nq * d) * 2);
  m.attn = act(size_t(chunk * nq * d) * 2);
  m.qkv = act(size_t(chunk * (nq + 2 * nkv) * d) * 2);
  m.gate_up = act(size_t(chunk * 2 * f) * 2);
  m.mlp = act(size_t(chunk * f) * 2);
  m.logits = act(size_t(max_batch) * size_t(shard.vocab_chunk) * 4);
  if (!shard.is_whole()) {
    m.gathered = act(size_t(shard.tp) * size_t(max_batch) * size_t(shard.vocab_chunk) * 4);
    m.logits_full = act(size_t(max_batch) * size_t(c.vocab_size) * 4);
  }
  m.sampling_layout = Impl::SamplingLayout(max_batch);
  m.d_sampling = act(m.sampling_layout.bytes);
  m.candidates = act(size_t(max_batch) * sizeof(ArgmaxCandidate));
  if (!shard.is_whole()) m.gathered_candidates = act(size_t(shard.tp) * size_t(max_batch) * sizeof(ArgmaxCandidate));
  m.ids = act(size_t(id_rows) * 4);
  m.positions = act(size_t(id_rows) * 8);
  m.seq_len = act(size_t(max_batch) * 4);
  m.k_new = act(size_t(max_batch * nkv * d) * 2);
  m.v_new = act(size_t(max_batch * nkv * d) * 2);
  // A fixed cuBLAS workspace: graph capture must not see cuBLAS allocate.
  constexpr size_t kCublasWorkspace = size_t(32) << 20;
  m.cublas_ws = m.allocator->allocate(kCublasWorkspace, MemoryPurpose::kWorkspace);
  RETRO_CUBLAS_CHECK(cublasSetWorkspace(m.cublas, m.cublas_ws.data(), kCublasWorkspace));
  RETRO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&m.h_tokens), size_t(max_batch) * 4, cudaHostAllocDefault));
  RETRO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&m.h_pos), size_t(max_batch) * 8, cudaHostAllocDefault));
  RETRO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&m.h_lens), size_t(max_batch) * 4, cudaHostAllocDefault));
  RETRO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&m.h_logits),
                                 size_t(shard.tp) * size_t(max_batch) * size_t(shard.vocab_chunk) * 4, cudaHostAllocDefault));
  RETRO_CUDA_CHECK(
      cudaHostAlloc(reinterpret_cast<void**>(&m.h_sampling), m.sampling_layout.bytes, cudaHostAllocDefault));
  RopeTable rope(c);
  m.attention_scaling = rope.attention_scaling();
  m.inv_freq = act(rope.inv_freq().size() * 4);
  RETRO_CUDA_CHECK(cudaMemcpy(m.inv_freq.data(), rope.inv_freq().data(), rope.inv_freq().size() * 4,
                              cudaMemcpyHostToDevice));
  if (m.wave_mode) {
    m.hidden = act(size_t(max_tokens) * size_t(h) * 2);
    for (int i = 0; i < 2; ++i) {
      m.prompt_k[i] = act(size_t(max_tokens) * size_t(nkv * d) * 2);
      m.prompt_v[i] = act(size_t(max_tokens) * size_t(nkv * d) * 2);
      RETRO_CUDA_CHECK(cudaEventCreateWithFlags(&m.kv_written[i], cudaEventDisableTiming));
      RETRO_CUDA_CHECK(cudaEventCreateWithFlags(&m.kv_built[i], cudaEventDisableTiming));
    }
    RETRO_CUDA_CHECK(cudaEventCreateWithFlags(&m.prompt_done, cudaEventDisableTiming));
    RETRO_CUDA_CHECK(cudaStreamCreateWithFlags(&m.build_stream, cudaStreamNonBlocking));
    m.pinned = make_pinned_host_allocator(options.host_capacity_bytes);
    m.pool = std::make_unique<wave::HostPagePool>(host_page_bytes(c, options), options.host_store.chunk_bytes, *m.pinned);
    const wave::WaveCacheLayout layout = plan_cluster_cache(c, max_tokens, options);
    if (layout.bytes > 0) {
      m.cache_memory = m.allocator->allocate(layout.bytes, MemoryPurpose::kKvCache);
      m.cache = wave::init_wave_cache(layout, m.cache_memory.data(), m.stream);
    }
    const wave::WaveKvShape shape{max_batch, c.num_heads, c.num_kv_heads, c.head_dim, max_tokens};
    m.kv_scratch = std::make_unique<wave::WaveKvScratch>();
    for (int l = 0; l < c.num_layers; ++l)
      m.wave_kv.push_back(std::make_unique<wave::WaveLayerKv>(shape, options.wave, options.buffer, *m.pool,
                                                              *m.allocator, l, c.num_layers, m.kv_scratch.get()));
    // The plan counts WaveLayerKv's allocations (plan_wave_layer_kv) and its build workspace before
    // first use: say so if they ever drift apart.
    size_t allocated = 0;
    for (const auto& kv : m.wave_kv) allocated += kv->device_bytes();
    if (allocated > m.plan.wave_kv)
      RETRO_LOG_WARN("wave KV allocated {} on cuda:{}, more than the {} the memory plan counted", format_bytes(allocated),
                     device, format_bytes(m.plan.wave_kv));
    // WaveLayerKv initialises its state on the legacy default stream, which the model's
    // non-blocking stream does not wait for.
    RETRO_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

GpuModel::~GpuModel() {
  if (!impl_) return;
  // Pinned pages and device buffers are freed below: no queued kernel may still read them.
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  if (impl_->build_stream) {
    cudaStreamSynchronize(impl_->build_stream);
    cudaStreamDestroy(impl_->build_stream);
  }
  for (cudaEvent_t e :
       {impl_->kv_written[0], impl_->kv_written[1], impl_->kv_built[0], impl_->kv_built[1], impl_->prompt_done})
    if (e) cudaEventDestroy(e);
  for (auto& step : impl_->steps)
    for (cudaGraphExec_t g : {step.graph, step.sampled_graph, step.greedy_graph})
      if (g) cudaGraphExecDestroy(g);
  impl_->wave_kv.clear();
  if (impl_->cublas) cublasDestroy(impl_->cublas);
  if (impl_->stream && impl_->own_stream) cudaStreamDestroy(impl_->stream);
  for (void* p : {static_cast<void*>(impl_->h_tokens), static_cast<void*>(impl_->h_pos), static_cast<void*>(impl_->h_lens),
                  static_cast<void*>(impl_->h_logits), static_cast<void*>(impl_->h_sampling)})
    if (p) cudaFreeHost(p);
}

const ModelConfig& GpuModel::config() const { return impl_->full_config; }
const ModelShard& GpuModel::shard() const { return impl_->shard; }
int GpuModel::max_batch() const { return impl_->max_batch; }
int64_t GpuModel::max_tokens() const { return impl_->max_tokens; }
const GpuModelOptions& GpuModel::options() const { return impl_->options; }
attention::AttentionMode GpuModel::attention_mode() const { return impl_->options.attention; }
const GpuModelMemoryPlan& GpuModel::memory_plan() const { return impl_->plan; }
int64_t GpuModel::length(int slot) const {
  impl_->check_slot(slot);
  return impl_->lengths[size_t(slot)];
}
void GpuModel::synchronize() {
  Impl& m = *impl_;
  RETRO_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  if (m.build_stream != nullptr) RETRO_CUDA_CHECK(cudaStreamSynchronize(m.build_stream));
}

void GpuModel::reset(int slot) {
  Impl& m = *impl_;
  m.check_slot(slot);
  for (auto& kv : m.wave_kv) kv->release(slot, m.stream);
  m.lengths[size_t(slot)] = 0;
}

void GpuModel::swap_slots(int a, int b) {
  Impl& m = *impl_;
  m.check_slot(a);
  m.check_slot(b);
  if (a == b) return;
  if (m.wave_mode) {
    for (auto& kv : m.wave_kv) kv->swap_slots(a, b, m.stream);
  } else {
    const ModelConfig& c = m.config;
    // Only the rows either slot holds; the rest of both regions is unused.
    const int64_t rows = std::max(m.lengths[size_t(a)], m.lengths[size_t(b)]);
    const size_t bytes = size_t(rows) * size_t(c.num_kv_heads) * size_t(c.head_dim) * 2;
    const size_t slot_bytes = size_t(m.slot_elems) * 2;
    for (Layer& L : m.layers)
      for (Buffer* cache : {&L.k_cache, &L.v_cache}) {
        char* base = static_cast<char*>(cache->data());
        RETRO_CUDA_CHECK(retro::cuda::swap_device_bytes(base + size_t(a) * slot_bytes, base + size_t(b) * slot_bytes,
                                                        bytes, m.stream));
      }
  }
  std::swap(m.lengths[size_t(a)], m.lengths[size_t(b)]);
  std::swap(m.sequence[size_t(a)], m.sequence[size_t(b)]);
}

void GpuModel::prefill(int slot, std::span<const int32_t> tokens, float* logits) {
  RETRO_CHECK(!tokens.empty(), "empty prompt");
  if (impl_->wave_mode) {
    impl_->prefill_wave(slot, tokens, logits);
    return;
  }
  const int64_t total = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start < total; start += impl_->max_chunk) {
    const int64_t n = std::min(impl_->max_chunk, total - start);
    impl_->prefill_chunk(slot, tokens.data() + start, n, start + n == total ? logits : nullptr);
  }
}

void GpuModel::decode(std::span<const int32_t> tokens, float* logits) { impl_->decode_tokens(tokens, logits); }

void GpuModel::decode_sample(std::span<const int32_t> tokens, std::span<const SamplingParams> sampling,
                             std::span<const double> uniforms, std::span<int32_t> next) {
  RETRO_CHECK(sampling.size() == tokens.size() && uniforms.size() == tokens.size() && next.size() == tokens.size(),
              "decode_sample of {} slots with {} sampling parameters, {} uniforms and room for {} tokens", tokens.size(),
              sampling.size(), uniforms.size(), next.size());
  impl_->decode_tokens(tokens, nullptr, sampling.data(), uniforms.data(), next.data());
}

void GpuModel::set_attention_override(const AttentionInputOverride& inputs) { impl_->set_attention_override(inputs); }
void GpuModel::fill_from_override(int slot, int64_t tokens) { impl_->fill_from_override(slot, tokens); }
const AttentionInputOverride& GpuModel::attention_override() const { return impl_->inputs_override; }

attention::cuda::WaveKvStats GpuModel::wave_stats(int batch) const {
  const Impl& m = *impl_;
  m.check_wave("wave_stats");
  RETRO_CHECK(batch >= 1 && batch <= m.max_batch, "wave_stats of {} slots (1..{})", batch, m.max_batch);
  attention::cuda::WaveKvStats total;
  for (const auto& kv : m.wave_kv) {
    const attention::cuda::WaveKvStats s = kv->stats(batch, m.stream);
    total.groups += s.groups;
    total.clusters += s.clusters;
    total.non_empty_clusters += s.non_empty_clusters;
    total.retrieved_clusters += s.retrieved_clusters;
    total.estimated_clusters += s.estimated_clusters;
    total.retrieved_tokens += s.retrieved_tokens;
    total.estimated_tokens += s.estimated_tokens;
    total.clustered_tokens += s.clustered_tokens;
  }
  return total;
}

attention::cuda::WaveCacheCounters GpuModel::wave_cache_counters() const {
  const Impl& m = *impl_;
  m.check_wave("wave_cache_counters");
  if (m.cache.num_sets == 0) return {};
  return attention::cuda::read_wave_cache_counters(m.cache, m.stream);
}

size_t GpuModel::host_kv_bytes() const {
  const Impl& m = *impl_;
  m.check_wave("host_kv_bytes");
  return m.pool->pages_in_use() * m.pool->page_bytes();
}

int64_t GpuModel::wave_segments_grown() const { return impl_->segments_grown; }

size_t GpuModel::host_pinned_bytes() const {
  const Impl& m = *impl_;
  m.check_wave("host_pinned_bytes");
  return m.pool->pinned_bytes();
}

void GpuModel::reserve_host_kv(int sequences, int64_t tokens) {
  Impl& m = *impl_;
  m.check_wave("reserve_host_kv");
  RETRO_CHECK(sequences >= 0 && tokens >= 0, "reserve_host_kv of {} sequences of {} tokens", sequences, tokens);
  const ModelConfig& c = m.config;
  const size_t row_bytes = size_t(c.head_dim) * wave::wave_kv_elem_bytes(m.options.buffer.kv_dtype);
  const size_t page_rows = m.pool->page_bytes() / row_bytes;
  const size_t pages_per_group = (size_t(tokens) + page_rows - 1) / page_rows;
  // K and V of every layer and KV head of this shard.
  m.pool->reserve(2 * size_t(c.num_layers) * size_t(c.num_kv_heads) * size_t(sequences) * pages_per_group);
}

}  // namespace retro::runtime::cuda
