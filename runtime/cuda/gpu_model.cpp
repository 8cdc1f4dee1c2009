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
#include "runtime/core/allocator.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"
#include "runtime/cuda/ops.h"
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

struct Layer {
  Buffer input_norm, post_norm, wq, wk, wv, wo, bq, bk, bv, bo, w_gate, w_up, w_down, b_gate, b_up, b_down;
  Buffer k_cache, v_cache;  // [max_tokens, kv_heads, head_dim] bf16
};

}  // namespace

struct GpuModel::Impl {
  ModelConfig config;
  int device = 0;
  int64_t max_tokens = 0, max_chunk = 0;
  int max_batch = 1;
  std::vector<int64_t> lengths;  // per slot
  int64_t slot_elems = 0;        // max_tokens * kv_heads * head_dim: one slot's cache per layer
  std::unique_ptr<Allocator> allocator;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  Buffer embed, final_norm, lm_head;
  std::vector<Layer> layers;
  // Workspaces for max_chunk tokens.
  Buffer x, xn, q, attn, gate, up, logits, ids, positions, seq_len, inv_freq, k_new, v_new, cublas_ws;
  // Pinned host staging of a decode step: read and written by copies inside the captured graph.
  int32_t* h_tokens = nullptr;  // [max_batch]
  int64_t* h_pos = nullptr;     // [max_batch]
  int32_t* h_lens = nullptr;    // [max_batch]
  float* h_logits = nullptr;    // [max(max_batch, 1), vocab]
  bool use_graph = true;
  // Per decode batch size: its plan, workspace and captured step.
  struct DecodeStep {
    attention::cuda::DecodeAttentionPlan plan;
    Buffer workspace;
    cudaGraphExec_t graph = nullptr;
  };
  std::vector<DecodeStep> steps;  // index: batch size
  float attention_scaling = 1.0f;

  Buffer upload_weight(const WeightSource& w, const std::string& name) {
    WeightInfo info = w.info(name);
    std::vector<bf16> host(static_cast<size_t>(info.shape.numel()));
    w.read(name, Tensor(host.data(), DType::kBF16, info.shape));
    Buffer b = allocator->allocate(host.size() * 2, MemoryPurpose::kWeights);
    RETRO_CUDA_CHECK(cudaMemcpy(b.data(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    return b;
  }

  // y[n, out] (bf16) = x[n, in] (bf16) @ w[out, in]^T, + beta * y; fp32 accumulation.
  void gemm(const void* xp, int64_t n, int64_t in, const void* w, int64_t out, void* y, float beta,
            cudaDataType_t y_type = CUDA_R_16BF) {
    const float alpha = 1.0f;
    RETRO_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(n), int(in), &alpha, w, CUDA_R_16BF,
                                    int(in), xp, CUDA_R_16BF, int(in), &beta, y, y_type, int(out),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void check_slot(int slot) const {
    RETRO_CHECK(slot >= 0 && slot < max_batch, "sequence slot {} outside [0, {})", slot, max_batch);
  }
  void check_step(int slot, const int32_t* tokens, int64_t n) const {
    check_slot(slot);
    RETRO_CHECK_KIND(lengths[size_t(slot)] + n <= max_tokens, ErrorKind::kOutOfMemory,
                     "sequence of {} tokens does not fit the KV cache planned for {} tokens", lengths[size_t(slot)] + n,
                     max_tokens);
    for (int64_t i = 0; i < n; ++i)
      RETRO_CHECK(tokens[i] >= 0 && tokens[i] < config.vocab_size, "token id {} is outside the vocabulary [0, {})",
                  tokens[i], config.vocab_size);
  }

  // Every launch of one step over n tokens whose ids, positions and total length are already in
  // device memory. decode_step (n == 1): K/V go through scratch rows and append_kv, attention is the
  // split-KV decode kernel, and nothing depends on host values — the step can be captured in a graph.
  // Prefill: K/V land straight in their cache rows and attention is the tensor-core prefill kernel.
  void run_layers(int64_t n, bool decode_step, bool want_logits, int slot = 0, DecodeStep* step = nullptr) {
    const ModelConfig& c = config;
    const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads, f = c.intermediate_size;
    auto bf = [](const Buffer& b) { return static_cast<char*>(b.data()); };
    RETRO_CUDA_CHECK(embedding(embed.data(), static_cast<const int32_t*>(ids.data()), x.data(), n, h, c.vocab_size,
                               nullptr, stream));
    const auto* pos = static_cast<const int64_t*>(positions.data());
    const auto* inv = static_cast<const float*>(inv_freq.data());
    for (Layer& L : layers) {
      RETRO_CUDA_CHECK(rms_norm(x.data(), L.input_norm.data(), xn.data(), n, h, c.rms_norm_eps, stream));
      const int64_t length = decode_step ? 0 : lengths[size_t(slot)];
      char* k_slot = bf(L.k_cache) + size_t(slot) * slot_elems * 2;
      char* v_slot = bf(L.v_cache) + size_t(slot) * slot_elems * 2;
      void* k_rows = decode_step ? k_new.data() : k_slot + length * nkv * d * 2;
      void* v_rows = decode_step ? v_new.data() : v_slot + length * nkv * d * 2;
      gemm(xn.data(), n, h, L.wq.data(), nq * d, q.data(), 0.0f);
      gemm(xn.data(), n, h, L.wk.data(), nkv * d, k_rows, 0.0f);
      gemm(xn.data(), n, h, L.wv.data(), nkv * d, v_rows, 0.0f);
      if (L.bq) {
        RETRO_CUDA_CHECK(add_bias(q.data(), L.bq.data(), n, nq * d, stream));
        RETRO_CUDA_CHECK(add_bias(k_rows, L.bk.data(), n, nkv * d, stream));
        RETRO_CUDA_CHECK(add_bias(v_rows, L.bv.data(), n, nkv * d, stream));
      }
      RETRO_CUDA_CHECK(rope(q.data(), pos, inv, attention_scaling, n, int(nq), int(d), int(d), stream));
      RETRO_CUDA_CHECK(rope(k_rows, pos, inv, attention_scaling, n, int(nkv), int(d), int(d), stream));
      if (decode_step) {
        RETRO_CUDA_CHECK(
            append_kv(k_rows, v_rows, L.k_cache.data(), L.v_cache.data(), pos, n, nkv * d, slot_elems, stream));
        attention::cuda::DecodeAttentionParams a;
        a.q = q.data();
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
        a.sm_scale = 1.0f / std::sqrt(float(d));
        attention::cuda::run_decode_attention(a, step->plan, step->workspace.data(), stream);
      } else {
        attention::cuda::PrefillAttentionParams a;
        a.q = q.data();
        a.q_stride_token = nq * d;
        a.k = k_slot;
        a.v = v_slot;
        a.kv_stride_token = nkv * d;
        a.kv_stride_head = d;
        a.out = attn.data();
        a.n_q = n;
        a.n_kv = length + n;
        a.num_q_heads = int(nq);
        a.num_kv_heads = int(nkv);
        a.head_dim = int(d);
        a.sm_scale = 1.0f / std::sqrt(float(d));
        attention::cuda::run_prefill_attention(a, stream);
      }
      gemm(attn.data(), n, nq * d, L.wo.data(), h, x.data(), 1.0f);  // x += o
      if (L.bo) RETRO_CUDA_CHECK(add_bias(x.data(), L.bo.data(), n, h, stream));
      RETRO_CUDA_CHECK(rms_norm(x.data(), L.post_norm.data(), xn.data(), n, h, c.rms_norm_eps, stream));
      gemm(xn.data(), n, h, L.w_gate.data(), f, gate.data(), 0.0f);
      gemm(xn.data(), n, h, L.w_up.data(), f, up.data(), 0.0f);
      if (L.b_gate) {
        RETRO_CUDA_CHECK(add_bias(gate.data(), L.b_gate.data(), n, f, stream));
        RETRO_CUDA_CHECK(add_bias(up.data(), L.b_up.data(), n, f, stream));
      }
      RETRO_CUDA_CHECK(silu_mul(gate.data(), up.data(), gate.data(), n * f, stream));
      gemm(gate.data(), n, f, L.w_down.data(), h, x.data(), 1.0f);  // x += mlp
      if (L.b_down) RETRO_CUDA_CHECK(add_bias(x.data(), L.b_down.data(), n, h, stream));
    }
    if (want_logits) {
      // Prefill: the last token only. Decode: every row is a sequence's newest token.
      const int64_t rows = decode_step ? n : 1;
      const char* first = bf(x) + (decode_step ? 0 : (n - 1) * h * 2);
      RETRO_CUDA_CHECK(rms_norm(first, final_norm.data(), xn.data(), rows, h, c.rms_norm_eps, stream));
      const Buffer& head = c.tie_word_embeddings ? embed : lm_head;
      gemm(xn.data(), rows, h, head.data(), c.vocab_size, logits.data(), 0.0f, CUDA_R_32F);
      RETRO_CUDA_CHECK(cudaMemcpyAsync(h_logits, logits.data(), size_t(rows * c.vocab_size) * 4,
                                       cudaMemcpyDeviceToHost, stream));
    }
  }

  void prefill_chunk(int slot, const int32_t* tokens, int64_t n, float* host_logits) {
    check_step(slot, tokens, n);
    RETRO_CHECK(n > 0 && n <= max_chunk, "GPU prefill of {} tokens (1..{} per step)", n, max_chunk);
    int64_t& length = lengths[size_t(slot)];
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = length + i;
    RETRO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), tokens, size_t(n) * 4, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(positions.data(), pos.data(), size_t(n) * 8, cudaMemcpyHostToDevice, stream));
    run_layers(n, /*decode_step=*/false, host_logits != nullptr, slot);
    RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    length += n;
    if (host_logits != nullptr) std::copy_n(h_logits, config.vocab_size, host_logits);
  }

  // The decode step's inputs travel from pinned host memory inside the step, so a captured graph
  // reads this step's values on every replay.
  void decode_body(int batch, DecodeStep& step) {
    RETRO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), h_tokens, size_t(batch) * 4, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(positions.data(), h_pos, size_t(batch) * 8, cudaMemcpyHostToDevice, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(seq_len.data(), h_lens, size_t(batch) * 4, cudaMemcpyHostToDevice, stream));
    run_layers(batch, /*decode_step=*/true, /*want_logits=*/true, 0, &step);
  }

  void decode_tokens(std::span<const int32_t> tokens, float* host_logits) {
    const int batch = static_cast<int>(tokens.size());
    RETRO_CHECK(batch >= 1 && batch <= max_batch, "decode batch of {} sequences (1..{})", batch, max_batch);
    for (int b = 0; b < batch; ++b) {
      check_step(b, &tokens[size_t(b)], 1);
      h_tokens[b] = tokens[size_t(b)];
      h_pos[b] = lengths[size_t(b)];
      h_lens[b] = static_cast<int32_t>(lengths[size_t(b)] + 1);
    }
    DecodeStep& step = steps[size_t(batch)];
    if (step.plan.tokens_per_split == 0) {
      const ModelConfig& c = config;
      step.plan = attention::cuda::plan_decode_attention(batch, c.num_heads, c.num_kv_heads, c.head_dim, max_tokens);
      if (step.plan.workspace_bytes) step.workspace = allocator->allocate(step.plan.workspace_bytes, MemoryPurpose::kWorkspace);
    }
    if (!use_graph) {
      decode_body(batch, step);
    } else {
      if (step.graph == nullptr) {
        cudaGraph_t g = nullptr;
        RETRO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
          decode_body(batch, step);
        } catch (...) {
          cudaStreamEndCapture(stream, &g);
          if (g) cudaGraphDestroy(g);
          throw;
        }
        RETRO_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
        cudaError_t st = cudaGraphInstantiate(&step.graph, g, 0);
        cudaGraphDestroy(g);
        RETRO_CUDA_CHECK(st);
      }
      RETRO_CUDA_CHECK(cudaGraphLaunch(step.graph, stream));
    }
    RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int b = 0; b < batch; ++b) lengths[size_t(b)] += 1;
    std::copy_n(h_logits, size_t(batch) * size_t(config.vocab_size), host_logits);
  }
};

GpuModelMemoryPlan plan_gpu_model_memory(const ModelConfig& c, int64_t max_tokens, int64_t max_chunk, int max_batch) {
  GpuModelMemoryPlan p;
  for (const WeightInfo& w : expected_weights(c)) p.weights += size_t(w.shape.numel()) * 2;
  p.kv_cache = 2 * size_t(c.num_layers) * size_t(max_batch) * size_t(max_tokens) * size_t(c.kv_size()) * 2;
  const size_t rows = size_t(std::max<int64_t>(std::min(max_chunk, max_tokens), max_batch));
  const size_t h = size_t(c.hidden_size), q = size_t(c.q_size()), f = size_t(c.intermediate_size);
  p.activations = rows * (2 * h + 2 * q + 2 * f) * 2 + size_t(max_batch) * size_t(c.vocab_size) * 4 + rows * 12 +
                  (size_t(32) << 20);  // + cuBLAS workspace
  return p;
}

GpuModel::GpuModel(const ModelConfig& config, const WeightSource& weights, int device, int64_t max_tokens,
                   int64_t max_chunk, bool use_cuda_graph, int max_batch)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.use_graph = use_cuda_graph;
  RETRO_CHECK(max_batch >= 1, "GPU model needs max_batch >= 1, got {}", max_batch);
  m.max_batch = max_batch;
  m.lengths.assign(size_t(max_batch), 0);
  m.steps.resize(size_t(max_batch) + 1);
  m.config = config;
  m.config.validate();
  validate_weights(m.config, weights);
  RETRO_CHECK(max_tokens > 0 && max_chunk > 0, "GPU model needs positive max_tokens and max_chunk");
  m.device = device;
  m.max_tokens = max_tokens;
  m.max_chunk = std::min(max_chunk, max_tokens);
  m.allocator = make_device_allocator(device);
  RETRO_CUDA_CHECK(cudaSetDevice(device));
  {
    const GpuModelMemoryPlan plan = plan_gpu_model_memory(m.config, max_tokens, max_chunk, max_batch);
    size_t free_b = 0, total_b = 0;
    RETRO_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    RETRO_CHECK_KIND(plan.total() <= free_b, ErrorKind::kOutOfMemory,
                     "the model needs {} on cuda:{} ({} weights, {} KV cache for {} x {} tokens, {} activations) "
                     "but {} of {} is free",
                     format_bytes(plan.total()), device, format_bytes(plan.weights), format_bytes(plan.kv_cache),
                     max_batch, max_tokens, format_bytes(plan.activations), format_bytes(free_b),
                     format_bytes(total_b));
  }
  RETRO_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  RETRO_CUBLAS_CHECK(cublasCreate(&m.cublas));
  RETRO_CUBLAS_CHECK(cublasSetStream(m.cublas, m.stream));
  const ModelConfig& c = m.config;
  const int64_t h = c.hidden_size, d = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads, f = c.intermediate_size;
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
    L.wq = up("self_attn.q_proj.weight");
    L.wk = up("self_attn.k_proj.weight");
    L.wv = up("self_attn.v_proj.weight");
    L.wo = up("self_attn.o_proj.weight");
    if (c.attention_bias) {
      L.bq = up("self_attn.q_proj.bias");
      L.bk = up("self_attn.k_proj.bias");
      L.bv = up("self_attn.v_proj.bias");
    }
    if (c.attention_out_bias) L.bo = up("self_attn.o_proj.bias");
    L.w_gate = up("mlp.gate_proj.weight");
    L.w_up = up("mlp.up_proj.weight");
    L.w_down = up("mlp.down_proj.weight");
    if (c.mlp_bias) {
      L.b_gate = up("mlp.gate_proj.bias");
      L.b_up = up("mlp.up_proj.bias");
      L.b_down = up("mlp.down_proj.bias");
    }
    m.slot_elems = max_tokens * nkv * d;
    const size_t cache_bytes = size_t(max_batch) * size_t(m.slot_elems) * 2;
    L.k_cache = m.allocator->allocate(cache_bytes, MemoryPurpose::kKvCache);
    L.v_cache = m.allocator->allocate(cache_bytes, MemoryPurpose::kKvCache);
  }
  const int64_t chunk = std::max<int64_t>(m.max_chunk, max_batch);  // rows of a prefill chunk or a decode batch
  auto act = [&](size_t bytes) { return m.allocator->allocate(bytes, MemoryPurpose::kActivations); };
  m.x = act(size_t(chunk * h) * 2);
  m.xn = act(size_t(chunk * h) * 2);
  m.q = act(size_t(chunk * nq * d) * 2);
  m.attn = act(size_t(chunk * nq * d) * 2);
  m.gate = act(size_t(chunk * f) * 2);
  m.up = act(size_t(chunk * f) * 2);
  m.logits = act(size_t(max_batch) * size_t(c.vocab_size) * 4);
  m.ids = act(size_t(chunk) * 4);
  m.positions = act(size_t(chunk) * 8);
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
  RETRO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&m.h_logits), size_t(max_batch) * size_t(c.vocab_size) * 4,
                                 cudaHostAllocDefault));
  RopeTable rope(c);
  m.attention_scaling = rope.attention_scaling();
  m.inv_freq = act(rope.inv_freq().size() * 4);
  RETRO_CUDA_CHECK(cudaMemcpy(m.inv_freq.data(), rope.inv_freq().data(), rope.inv_freq().size() * 4,
                              cudaMemcpyHostToDevice));
}

GpuModel::~GpuModel() {
  if (!impl_) return;
  for (auto& step : impl_->steps)
    if (step.graph) cudaGraphExecDestroy(step.graph);
  if (impl_->cublas) cublasDestroy(impl_->cublas);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  for (void* p : {static_cast<void*>(impl_->h_tokens), static_cast<void*>(impl_->h_pos), static_cast<void*>(impl_->h_lens),
                  static_cast<void*>(impl_->h_logits)})
    if (p) cudaFreeHost(p);
}

const ModelConfig& GpuModel::config() const { return impl_->config; }
int GpuModel::max_batch() const { return impl_->max_batch; }
int64_t GpuModel::length(int slot) const {
  impl_->check_slot(slot);
  return impl_->lengths[size_t(slot)];
}
void GpuModel::reset(int slot) {
  impl_->check_slot(slot);
  impl_->lengths[size_t(slot)] = 0;
}

void GpuModel::prefill(int slot, std::span<const int32_t> tokens, float* logits) {
  RETRO_CHECK(!tokens.empty(), "empty prompt");
  const int64_t total = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start < total; start += impl_->max_chunk) {
    const int64_t n = std::min(impl_->max_chunk, total - start);
    impl_->prefill_chunk(slot, tokens.data() + start, n, start + n == total ? logits : nullptr);
  }
}

void GpuModel::decode(std::span<const int32_t> tokens, float* logits) { impl_->decode_tokens(tokens, logits); }

}  // namespace retro::runtime::cuda
