// `retroinfer bench model --backend cuda`: end-to-end prefill and batched decode speed of the GPU
// forward pass with dense or wave attention, on a checkpoint or a synthetic preset. With wave
// attention each row also gives the cluster cache's hit ratio and the host bytes read per decode
// step (cache counters read between steps) and the zone counts of the last step.
//
// Attention inputs (--workload): with random weights the model's own queries are random every step,
// so a cluster cache never hits and wave decode speed says nothing about real use. `synthetic` (the
// default) replaces them (GpuModel::set_attention_override) with the synthetic workload generator's
// (attention/synthetic.h) while every other op runs as usual: the prompt's K/V of every layer and slot
// are one generated sequence, and each decode step takes one generated K/V row (shared by the slots,
// so its RoPE position is theirs) and, per slot, a query of the slot's own AR(1) stream, the same in
// every layer. `random` keeps the model's own attention inputs (random prompt tokens).
//
// Decode steps pick their greedy tokens on the GPU (GpuModel::decode_sample), so only tokens come
// back; --host-logits copies every step's [batch, vocab] logits to the host and picks there instead.
//
// Tensor parallelism: `mpirun -np N retroinfer bench model --tp N` shards the model over N GPUs
// (parallel/gpu_tensor_parallel.h); each rank generates the synthetic inputs of its own heads, world
// rank 0 prints, and each row adds the time of one all-reduce of the step's hidden rows (measured
// alone, on the model's stream) and the share of the step that the model's two all-reduces per layer
// take at that time.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "attention/kv_store.h"
#include "attention/synthetic.h"
#include "attention/wave_index.h"
#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "launcher/model_options.h"
#include "runtime/core/allocator.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/open_model.h"
#include "runtime/sampler.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/system_info.h"
#include "parallel/gpu_tensor_parallel.h"
#include "parallel/mpi_world.h"
#include "parallel/watchdog.h"
#include "runtime/cuda/gpu_model.h"
#endif

namespace retro::launcher {

namespace {

// Decode steps run untimed before each measured run: the first captures the batch size's graph.
constexpr int kWarmupSteps = 1;

struct GpuModelBenchOptions {
  std::string model = "preset:llama3-8b";
  std::string backend = "cuda";
  std::string contexts = "8k,32k";
  std::string batches = "1";
  int decode_tokens = 32;
  int64_t chunk = 2048;
  bool eager = false;
  std::string json_out;
  // Wave attention.
  std::string attention = "dense";
  double retrieval_budget = attention::WaveIndexParams{}.retrieval_budget;
  double estimation_budget = attention::WaveIndexParams{}.estimation_budget;
  int min_retrieve_clusters = attention::WaveIndexParams{}.min_retrieve_clusters;
  double cache_fraction = 0.05;  // of the K/V offloaded at the largest context (WaveBufferParams)
  double cache_gib = 0.0;
  double host_gib = 0.0;
  std::string host_kv = "bf16";  // offloaded K/V format: bf16 or fp8 (e4m3, per-cluster scales)
  // Attention inputs: synthetic (the workload generator's) or random (the model's own).
  std::string workload = "synthetic";
  uint64_t seed = 1;
  int tp = 0;  // tensor-parallel ranks; 0: every process of the mpirun launch
  bool host_logits = false;  // decode: logits to the host and argmax there, instead of sampling on the GPU
  // How each sequence's context is made: prefill (the model runs over a random prompt) or synthetic
  // (the synthetic prompt K/V go straight into the cache or index, GpuModel::fill_from_override).
  std::string fill = "prefill";
  int layers = 0;  // run the model's first N layers only (0: all): a large shape on fewer GPUs
};

// What the options ask for, checked: a bad command line is refused before any device is touched
// (in builds without CUDA too).
struct ModelBenchRun {
  std::vector<int64_t> contexts, batches;
  int64_t max_context = 0;
  int max_batch = 0;
  bool wave = false, synthetic = false, fill_synthetic = false;
  bool decode = false;      // false: prefill only (bench prefill, --decode-tokens 0)
  int64_t decode_rows = 0;  // positions a sequence reaches past its prompt: warm-up and timed steps
};

ModelBenchRun plan_model_bench(const GpuModelBenchOptions& o) {
  ModelBenchRun r;
  r.contexts = parse_size_list(o.contexts, "--context");
  r.batches = parse_size_list(o.batches, "--batch");
  r.max_context = *std::max_element(r.contexts.begin(), r.contexts.end());
  r.max_batch = static_cast<int>(*std::max_element(r.batches.begin(), r.batches.end()));
  r.wave = o.attention == "wave";
  r.synthetic = o.workload == "synthetic";
  RETRO_CHECK(o.decode_tokens >= 0, "--decode-tokens must be >= 0, got {}", o.decode_tokens);
  r.decode = o.decode_tokens > 0;
  r.decode_rows = r.decode ? kWarmupSteps + o.decode_tokens : 0;
  r.fill_synthetic = o.fill == "synthetic";
  RETRO_CHECK(!r.fill_synthetic || r.synthetic, "--fill synthetic takes the synthetic workload's prompt K/V: it needs "
              "--workload synthetic");
  return r;
}

#ifdef RETRO_WITH_CUDA
runtime::cuda::GpuModelOptions gpu_options(const GpuModelBenchOptions& o, int max_batch) {
  runtime::cuda::GpuModelOptions g;
  g.max_chunk = o.chunk;
  g.use_cuda_graph = !o.eager;
  g.max_batch = max_batch;
  if (o.attention == "wave") {
    g.attention = attention::AttentionMode::kWave;
    g.wave.retrieval_budget = o.retrieval_budget;
    g.wave.estimation_budget = o.estimation_budget;
    g.wave.min_retrieve_clusters = o.min_retrieve_clusters;
    g.wave.validate();
    RETRO_CHECK(o.cache_fraction >= 0.0 && o.cache_gib >= 0.0 && o.host_gib >= 0.0,
                "--cache-fraction, --cache-gib and --host-gib must be >= 0");
    g.buffer.kv_fraction = o.cache_fraction;
    g.buffer.kv_dtype = host_kv_dtype(o.host_kv);
    g.buffer.cache_bytes = static_cast<size_t>(o.cache_gib * double(size_t(1) << 30));
    g.host_capacity_bytes = static_cast<size_t>(o.host_gib * double(size_t(1) << 30));
  }
  return g;
}

// The synthetic workload's attention inputs on the device, in the shapes GpuModel reads them
// (AttentionInputOverride). One generator per context: its prompt K/V serve every slot and layer; the
// decode inputs of a batch row are generated before the row from the generator's state after the
// prompt, so every row of a context (and a dense and a wave run of the same seed) sees the same ones.
class SyntheticAttentionInputs {
 public:
  SyntheticAttentionInputs(const runtime::ModelConfig& c, int64_t max_context, int max_batch, uint64_t seed,
                           Allocator& device)
      : row_(c.kv_size()), q_row_(c.q_size()), max_context_(max_context), max_batch_(max_batch) {
    // The generator's shape and RoPE are the model's, so its keys are what the model's RoPE would
    // give (plain rope_theta: a rope_scaling of the config is not applied).
    params_.shape = attention::AttentionShape{c.num_heads, c.num_kv_heads, c.head_dim};
    params_.rope_theta = c.rope_theta;
    params_.seed = seed;
    const size_t kv_bytes = size_t(max_context) * size_t(row_) * 2;
    prompt_k_ = device.allocate(kv_bytes, MemoryPurpose::kWorkspace);
    prompt_v_ = device.allocate(kv_bytes, MemoryPurpose::kWorkspace);
    q_ = device.allocate(size_t(max_batch) * size_t(q_row_) * 2, MemoryPurpose::kWorkspace);
    k_ = device.allocate(size_t(max_batch) * size_t(row_) * 2, MemoryPurpose::kWorkspace);
    v_ = device.allocate(size_t(max_batch) * size_t(row_) * 2, MemoryPurpose::kWorkspace);
  }

  const attention::SyntheticParams& params() const { return params_; }
  size_t device_bytes() const { return prompt_k_.size() + prompt_v_.size() + q_.size() + k_.size() + v_.size(); }

  // A fresh generator for a context of ctx tokens (its needles lie in the prompt): generates and
  // uploads the prompt's K/V; the override that reads them and the decode rows.
  runtime::cuda::AttentionInputOverride start_context(int64_t ctx) {
    RETRO_CHECK(ctx > 0 && ctx <= max_context_, "synthetic prompt of {} tokens (1..{})", ctx, max_context_);
    params_.context_tokens = ctx;
    attention::SyntheticWorkload workload(params_);
    // In chunks: a long context's fp32 K/V would take gigabytes of host memory at once.
    constexpr int64_t kChunk = 4096;
    std::vector<float> kf(size_t(kChunk * row_)), vf(size_t(kChunk * row_));
    std::vector<bf16> kb(kf.size()), vb(vf.size());
    for (int64_t start = 0; start < ctx; start += kChunk) {
      const int64_t n = std::min(kChunk, ctx - start);
      const size_t elems = size_t(n * row_), offset = size_t(start * row_) * 2;
      workload.next_kv(n, kf.data(), vf.data());
      for (size_t i = 0; i < elems; ++i) {
        kb[i] = float_to_bf16(kf[i]);
        vb[i] = float_to_bf16(vf[i]);
      }
      RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(prompt_k_.data()) + offset, kb.data(), elems * 2,
                                  cudaMemcpyHostToDevice));
      RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(prompt_v_.data()) + offset, vb.data(), elems * 2,
                                  cudaMemcpyHostToDevice));
    }
    // The model's stream does not wait for the default stream's copies.
    RETRO_CUDA_CHECK(cudaDeviceSynchronize());
    after_prompt_ = std::make_unique<attention::SyntheticWorkload>(workload);
    runtime::cuda::AttentionInputOverride inputs;
    inputs.prompt_k = prompt_k_.data();
    inputs.prompt_v = prompt_v_.data();
    inputs.prompt_tokens = ctx;
    inputs.decode_q = q_.data();
    inputs.decode_k = k_.data();
    inputs.decode_v = v_.data();
    return inputs;
  }

  // The decode inputs of `steps` steps of `batch` slots. Slot b's queries are draws [b * steps,
  // (b + 1) * steps) of the generator's query stream, so each slot's query drifts step to step with
  // the generator's correlation (interleaving the slots would give rho^batch). One K/V row per step,
  // at the position every slot has then.
  void plan_decode(int batch, int steps) {
    RETRO_CHECK(after_prompt_ != nullptr, "synthetic decode inputs before a prompt");
    RETRO_CHECK(batch >= 1 && batch <= max_batch_, "synthetic decode inputs of {} slots (1..{})", batch, max_batch_);
    attention::SyntheticWorkload workload = *after_prompt_;
    batch_ = batch;
    steps_ = steps;
    step_q_.assign(size_t(steps) * size_t(batch) * size_t(q_row_), bf16{});
    step_k_.assign(size_t(steps) * size_t(row_), bf16{});
    step_v_.assign(size_t(steps) * size_t(row_), bf16{});
    std::vector<float> qf(static_cast<size_t>(q_row_)), kf(static_cast<size_t>(row_)), vf(static_cast<size_t>(row_));
    for (int b = 0; b < batch; ++b) {
      for (int s = 0; s < steps; ++s) {
        workload.next_query(qf.data());
        bf16* out = step_q_.data() + (size_t(s) * size_t(batch) + size_t(b)) * size_t(q_row_);
        for (size_t i = 0; i < qf.size(); ++i) out[i] = float_to_bf16(qf[i]);
      }
    }
    for (int s = 0; s < steps; ++s) {
      workload.next_kv(1, kf.data(), vf.data());
      for (size_t i = 0; i < kf.size(); ++i) {
        step_k_[size_t(s) * size_t(row_) + i] = float_to_bf16(kf[i]);
        step_v_[size_t(s) * size_t(row_) + i] = float_to_bf16(vf[i]);
      }
    }
  }

  // Fills the decode buffers with step s's rows, complete when this returns.
  void upload_step(int s) {
    RETRO_CHECK(s >= 0 && s < steps_, "synthetic decode step {} of {}", s, steps_);
    const size_t q_bytes = size_t(batch_) * size_t(q_row_) * 2, row_bytes = size_t(row_) * 2;
    RETRO_CUDA_CHECK(cudaMemcpy(q_.data(), step_q_.data() + size_t(s) * size_t(batch_) * size_t(q_row_), q_bytes,
                                cudaMemcpyHostToDevice));
    for (int b = 0; b < batch_; ++b) {
      RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(k_.data()) + size_t(b) * row_bytes,
                                  step_k_.data() + size_t(s) * size_t(row_), row_bytes, cudaMemcpyHostToDevice));
      RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(v_.data()) + size_t(b) * row_bytes,
                                  step_v_.data() + size_t(s) * size_t(row_), row_bytes, cudaMemcpyHostToDevice));
    }
    RETRO_CUDA_CHECK(cudaDeviceSynchronize());
  }

 private:
  int64_t row_, q_row_, max_context_;
  int max_batch_;
  attention::SyntheticParams params_;
  std::unique_ptr<attention::SyntheticWorkload> after_prompt_;
  Buffer prompt_k_, prompt_v_;  // [max_context, kv_heads, head_dim] bf16
  Buffer q_, k_, v_;            // one step: [max_batch, q_heads | kv_heads, head_dim] bf16
  int batch_ = 0, steps_ = 0;
  std::vector<bf16> step_q_;          // [steps, batch, q_heads, head_dim]
  std::vector<bf16> step_k_, step_v_;  // [steps, kv_heads, head_dim]
};

// Mean time of one bf16 all-reduce of `rows` hidden rows over the model's group, on its stream, in
// microseconds (0 for a whole model): 64 in a replayed graph after 8 untimed, in `symmetric` (the
// group's symmetric buffer, as the model's residual stream uses) where there is one.
double all_reduce_us(parallel::GpuModelShard& shard, Allocator& device, int64_t rows, void* symmetric) {
  if (shard.plan().shard.is_whole()) return 0.0;
  parallel::Communicator& comm = shard.device_group();
  const int64_t count = rows * shard.model().config().hidden_size;
  std::optional<TensorBuffer> plain;
  void* data = symmetric;
  if (data == nullptr) {
    plain.emplace(device, DType::kBF16, Shape{count}, MemoryPurpose::kWorkspace);
    data = plain->data();
  }
  const Tensor view(data, DType::kBF16, {count}, comm.device());
  RETRO_CUDA_CHECK(cudaMemset(data, 0, size_t(count) * 2));
  RETRO_CUDA_CHECK(cudaDeviceSynchronize());
  constexpr int kWarmup = 8, kReps = 64;
  for (int i = 0; i < kWarmup; ++i) comm.all_reduce_sum(view);
  comm.barrier();
  // As the decode step runs them: captured in a graph and replayed, so host launch times stay out;
  // timed on the stream between events. The ranks start together (barrier), and the first one
  // waits for the slowest once in 64.
  cudaStream_t stream = shard.stream();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  RETRO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kReps; ++i) comm.all_reduce_sum(view);
  RETRO_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  RETRO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start = nullptr, stop = nullptr;
  RETRO_CUDA_CHECK(cudaEventCreate(&start));
  RETRO_CUDA_CHECK(cudaEventCreate(&stop));
  RETRO_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // first replay uploads the graph
  comm.barrier();
  RETRO_CUDA_CHECK(cudaEventRecord(start, stream));
  RETRO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  RETRO_CUDA_CHECK(cudaEventRecord(stop, stream));
  comm.barrier();
  float ms = 0.0f;
  RETRO_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return double(ms) * 1e3 / kReps;
}

// fmt::print on world rank 0 only.
template <typename... T>
void say(bool leader, fmt::format_string<T...> format, T&&... args) {
  if (leader) fmt::print(format, std::forward<T>(args)...);
}

void run_gpu_model_bench(const GpuModelBenchOptions& o, const ModelBenchRun& r) {
  const std::vector<int64_t>& contexts = r.contexts;
  const std::vector<int64_t>& batches = r.batches;
  const int64_t max_context = r.max_context, decode_rows = r.decode_rows;
  const int max_batch = r.max_batch;
  const bool wave = r.wave, synthetic = r.synthetic, decode = r.decode, fill_synthetic = r.fill_synthetic;
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench model --backend cuda needs a GPU: {}",
                   query_cuda_runtime().error);
  const parallel::WorldConfig world = parallel::make_world_config(parallel::mpi_world(), o.tp);
  RETRO_CHECK_KIND(world.local_device >= 0 && world.local_device < int(gpus.size()), ErrorKind::kUnsupported,
                   "rank {} has no GPU of its own ({} visible to {} ranks of this node)", world.rank, gpus.size(),
                   world.local_size);
  const int device = world.local_device;
  RETRO_CUDA_CHECK(cudaSetDevice(device));
  const bool leader = world.is_world_leader();  // prints; every rank runs the same steps
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  runtime::ModelConfig config;
  auto weights = runtime::open_model(o.model, &config);
  RETRO_CHECK(o.layers >= 0 && o.layers <= config.num_layers, "--layers {}: the model has {} layers", o.layers,
              config.num_layers);
  if (o.layers > 0) config.num_layers = o.layers;  // the same shape, its first o.layers layers
  // Planned before any collective, so a tp that does not fit the model fails on every rank alike.
  const runtime::ModelShard shard_plan = parallel::plan_sharding(config, world.tp, world.tp_rank).shard;
  // Allocated before the model, so that the model's check of free device memory counts them.
  std::unique_ptr<Allocator> input_memory = make_device_allocator(device);
  std::unique_ptr<SyntheticAttentionInputs> inputs;
  if (synthetic)
    inputs = std::make_unique<SyntheticAttentionInputs>(runtime::shard_config(config, shard_plan), max_context,
                                                        max_batch, o.seed, *input_memory);
  std::unique_ptr<parallel::Communicator> host_group = parallel::make_tp_host_communicator(world);
  parallel::GpuModelShard shard(world, *host_group, config, *weights, max_context + decode_rows,
                                gpu_options(o, max_batch));
  runtime::cuda::GpuModel& model = shard.model();
  // For the all-reduce timing: every rank asks at the same point.
  void* all_reduce_buffer = shard.plan().shard.is_whole() ? nullptr
                                                          : shard.device_group().symmetric_buffer(
                                                                size_t(max_batch * config.hidden_size) * 2);
  say(leader, "model {} on {}: {} layers, hidden {}, {} q / {} kv heads (loaded in {:.1f} s); {} attention; decode "
             "step {}\n",
             o.model, gpus[size_t(device)].name, config.num_layers, config.hidden_size, config.num_heads,
             config.num_kv_heads, std::chrono::duration<double>(Clock::now() - t0).count(), o.attention,
             o.eager ? "launched eagerly" : "a CUDA graph");
  if (world.tp > 1)
    say(leader, "tensor parallel over {} GPUs (NCCL), per rank: {} q / {} kv heads, {} MLP channels, {} vocabulary rows\n",
        world.tp, shard_plan.q_heads.size(), shard_plan.kv_heads.size(), shard_plan.intermediate.size(),
        shard_plan.vocab.size());
  const runtime::cuda::GpuModelMemoryPlan& plan = model.memory_plan();
  if (wave) {
    say(leader, "device memory: {} weights, {} wave KV, {} cluster cache, {} prefill buffers, {} activations; budgets "
               "{} retrieved (at least {} clusters), {} estimated\n",
               format_bytes(plan.weights), format_bytes(plan.wave_kv), format_bytes(plan.cluster_cache),
               format_bytes(plan.prefill), format_bytes(plan.activations), o.retrieval_budget, o.min_retrieve_clusters,
               o.estimation_budget);
  } else {
    say(leader, "device memory: {} weights, {} KV cache, {} activations\n", format_bytes(plan.weights),
               format_bytes(plan.kv_cache), format_bytes(plan.activations));
  }
  if (synthetic) {
    const attention::SyntheticParams& sp = inputs->params();
    say(leader, "attention inputs: synthetic workload, seed {} (rope_theta {}, {} needles per KV head at logit {}, "
               "queries AR(1) with rho {}); per context one prompt K/V for every slot and layer, per step one new K/V "
               "row for every slot and one query per slot, the same in every layer ({} of device memory)\n",
               sp.seed, sp.rope_theta, sp.num_needles, sp.needle_logit, sp.query_correlation,
               format_bytes(inputs->device_bytes()));
  } else {
    say(leader, "attention inputs: the model's own, on random prompt tokens\n");
  }
  say(leader, "\n");
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, config.vocab_size - 1);
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  std::vector<float> logits(vocab * size_t(max_batch));
  if (wave) {
    // Steady state of a server: its pinned host pool has grown once, at start (cudaHostAlloc of new
    // chunks is a one-time cost, reported separately), and later prompts reuse the pages.
    auto a = Clock::now();
    model.reserve_host_kv(max_batch, max_context + decode_rows);
    say(leader, "(host pool pinned for {} sequences of {} tokens: {} in {:.1f} s, untimed)\n\n", max_batch,
        max_context, format_bytes(model.host_pinned_bytes()), std::chrono::duration<double>(Clock::now() - a).count());
  }
  if (fill_synthetic)
    say(leader, "(contexts filled from the synthetic prompt K/V without the model's prefill: the prefill columns time "
                "the fill{})\n", wave ? ", i.e. the index build and offload" : "");
  if (!decode) {
    say(leader, "| context | batch | prefill s | prefill tokens/s |\n");
    say(leader, "|---|---|---|---|\n");
  } else if (wave) {
    say(leader, "| context | batch | prefill s | prefill tokens/s | decode ms/step | decode tokens/s | cache hit ratio | "
               "host MB/step | retrieved clusters/group | estimated clusters/group | retrieved tokens/group | host KV "
               "GiB |\n");
    say(leader, "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    say(leader, "| context | batch | prefill s | prefill tokens/s | decode ms/step | decode tokens/s |\n");
    say(leader, "|---|---|---|---|---|---|\n");
  }
  for (int64_t ctx : contexts) {
    if (synthetic) {
      auto a = Clock::now();
      model.set_attention_override(inputs->start_context(ctx));
      say(leader, "(synthetic K/V of {} tokens generated in {:.1f} s, untimed)\n", ctx,
                 std::chrono::duration<double>(Clock::now() - a).count());
    }
    for (int64_t bs : batches) {
      // Every sequence of the batch gets its own random prompt of ctx tokens (with synthetic inputs,
      // the tokens still drive every op but attention).
      double prefill_s = 0, index_tail_s = 0;
      std::vector<int32_t> next(static_cast<size_t>(bs));
      for (int s = 0; s < bs; ++s) {
        model.reset(s);
        if (fill_synthetic) {
          auto a = Clock::now();
          model.fill_from_override(s, ctx);
          prefill_s += std::chrono::duration<double>(Clock::now() - a).count();
          parallel::watchdog_progress();
          next[size_t(s)] = tok(rng);  // no prompt logits: any first token
          continue;
        }
        std::vector<int32_t> prompt(static_cast<size_t>(ctx));
        for (auto& t : prompt) t = tok(rng);
        auto a = Clock::now();
        model.prefill(s, prompt, logits.data());
        const auto b = Clock::now();
        prefill_s += std::chrono::duration<double>(b - a).count();
        // Wave: the last layer's index build may still run after the first token; that tail is
        // timed apart (the next prompt would wait for it anyway).
        model.synchronize();
        index_tail_s += std::chrono::duration<double>(Clock::now() - b).count();
        parallel::watchdog_progress();
        next[size_t(s)] = runtime::argmax(std::span<const float>(logits.data(), vocab));
      }
      const double prefill_tps = double(ctx * bs) / prefill_s;
      // The row's fields of both benchmarks; decode adds its own below.
      nlohmann::ordered_json row{{"bench", decode ? "model" : "prefill"},
                                 {"backend", "cuda"},
                                 {"attention", o.attention},
                                 {"model", o.model},
                                 {"device", gpus[size_t(device)].name},
                                 {"context", ctx},
                                 {"batch", bs},
                                 {"prefill_s", prefill_s},
                                 {"prefill_tokens_per_s", prefill_tps},
                                 {"fill", o.fill},
                                 {"layers", config.num_layers},
                                 {"tp", world.tp},
                                 {"workload", o.workload}};
      if (synthetic) row["seed"] = o.seed;
      if (wave) row["host_kv"] = o.host_kv;
      if (wave && !fill_synthetic) {
        row["index_build_tail_s"] = index_tail_s;
        say(leader, "(prefill time is to the first token; the last layers' index builds ran {:.3f} s past it, "
                    "summed over the batch)\n", index_tail_s);
      }
      if (!decode) {
        say(leader, "| {} | {} | {:.3f} | {:.0f} |\n", ctx, bs, prefill_s, prefill_tps);
        std::fflush(stdout);
        if (json && leader) *json << row.dump() << "\n";
        continue;
      }
      const int warmup = kWarmupSteps, steps = warmup + o.decode_tokens;
      if (synthetic) inputs->plan_decode(int(bs), steps);
      // Cache counters are read before and after the timed steps, never inside one; synthetic inputs
      // are uploaded between steps, untimed.
      attention::cuda::WaveCacheCounters before{};
      std::vector<double> step_times;  // ms of each timed step
      std::vector<double> growth_times, plain_times;  // the same, split by whether index growth ran
      // Greedy tokens picked on the GPU: only the tokens come back to the host (GpuModel::decode_sample).
      const std::vector<runtime::SamplingParams> greedy(static_cast<size_t>(bs));
      const std::vector<double> uniforms(static_cast<size_t>(bs), 0.0);
      for (int i = 0; i < steps; ++i) {
        if (synthetic) inputs->upload_step(i);
        if (wave && i == warmup) before = model.wave_cache_counters();
        const int64_t grown_before = model.wave_segments_grown();
        auto b = Clock::now();
        if (o.host_logits) {
          model.decode(next, logits.data());
          for (int s = 0; s < bs; ++s)
            next[size_t(s)] = runtime::argmax(std::span<const float>(logits.data() + size_t(s) * vocab, vocab));
        } else {
          model.decode_sample(next, greedy, uniforms, next);
        }
        if (i >= warmup) {
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - b).count();
          step_times.push_back(ms);
          (model.wave_segments_grown() > grown_before ? growth_times : plain_times).push_back(ms);
        }
        parallel::watchdog_progress();  // the step's collectives ran inside a CUDA graph, unseen by the host
      }
      const StepTimes times = summarize_steps(step_times);
      const double decode_ms = times.total_ms, slowest_ms = times.slowest_ms;
      const double step_ms = decode_ms / o.decode_tokens;
      const double decode_tps = double(bs) * 1e3 / step_ms;
      row["decode_ms_per_step"] = step_ms;
      row["decode_tokens_per_s"] = decode_tps;
      row["cuda_graph"] = !o.eager;
      row["host_logits"] = o.host_logits;
      row["decode_ms_slowest_step"] = slowest_ms;
      row["decode_ms_median_step"] = times.median_ms;
      row["decode_ms_p99_step"] = times.p99_ms;
      row["decode_warmup_steps"] = warmup;
      const StepTimes growth = summarize_steps(growth_times), plain = summarize_steps(plain_times);
      if (wave) {
        row["decode_growth_steps"] = growth_times.size();
        row["decode_ms_growth_step_mean"] = growth.mean_ms;
        row["decode_ms_plain_step_mean"] = plain.mean_ms;
      }
      if (!wave) {
        say(leader, "| {} | {} | {:.3f} | {:.0f} | {:.2f} | {:.1f} |\n", ctx, bs, prefill_s, prefill_tps, step_ms,
                   decode_tps);
      } else {
        const attention::cuda::WaveCacheCounters after = model.wave_cache_counters();
        const double hits = double(after.hit_parts - before.hit_parts);
        const double misses = double(after.miss_parts - before.miss_parts);
        const double hit_ratio = hits + misses > 0 ? hits / (hits + misses) : 0.0;
        const double host_mb_per_step = double(after.host_bytes - before.host_bytes) / o.decode_tokens / 1e6;
        const attention::cuda::WaveKvStats st = model.wave_stats(int(bs));
        const double groups = double(std::max<int64_t>(st.groups, 1));
        const double host_gib = double(model.host_kv_bytes()) / double(size_t(1) << 30);
        say(leader, "| {} | {} | {:.3f} | {:.0f} | {:.2f} | {:.1f} | {:.3f} | {:.2f} | {:.1f} | {:.1f} | {:.0f} | {:.2f} |\n",
                   ctx, bs, prefill_s, prefill_tps, step_ms, decode_tps, hit_ratio, host_mb_per_step,
                   double(st.retrieved_clusters) / groups, double(st.estimated_clusters) / groups,
                   double(st.retrieved_tokens) / groups, host_gib);
        row["retrieval_budget"] = o.retrieval_budget;
        row["estimation_budget"] = o.estimation_budget;
        row["min_retrieve_clusters"] = o.min_retrieve_clusters;
        row["cache_bytes"] = plan.cluster_cache;
        row["cache_hit_ratio"] = hit_ratio;
        row["host_bytes_per_step"] = double(after.host_bytes - before.host_bytes) / o.decode_tokens;
        row["retrieved_clusters_per_group"] = double(st.retrieved_clusters) / groups;
        row["estimated_clusters_per_group"] = double(st.estimated_clusters) / groups;
        row["retrieved_tokens_per_group"] = double(st.retrieved_tokens) / groups;
        row["estimated_tokens_per_group"] = double(st.estimated_tokens) / groups;
        row["clusters_per_group"] = double(st.clusters) / groups;
        row["host_kv_bytes"] = model.host_kv_bytes();
      }
      say(leader, "(decode steps after {} untimed: median {:.2f} ms, p99 {:.2f} ms, slowest {:.2f} ms at step {})\n",
          warmup, times.median_ms, times.p99_ms, slowest_ms, warmup + times.slowest_step);
      if (!growth_times.empty())
        say(leader, "(index growth ran in {} of them: mean {:.2f} ms, slowest {:.2f} ms; the others {:.2f} ms)\n",
            growth_times.size(), growth.mean_ms, growth.slowest_ms, plain.mean_ms);
      if (world.tp > 1) {
        // Each layer all-reduces the step's hidden rows twice (after O and after down).
        const double us = all_reduce_us(shard, *input_memory, bs, all_reduce_buffer);
        const double share = 2.0 * config.num_layers * us / (step_ms * 1e3);
        say(leader, "(tp {}: one all-reduce of {} hidden rows takes {:.1f} us alone; {} per step = {:.1f}% of the step)\n",
            world.tp, bs, us, 2 * config.num_layers, 100.0 * share);
        row["all_reduce_us"] = us;
        row["all_reduce_share_of_step"] = share;
      }
      std::fflush(stdout);
      if (json && leader) *json << row.dump() << "\n";
    }
  }
}
#endif

}  // namespace

namespace {

// The options of `bench model` (and of `bench prefill`, which has no decode steps); the callback
// keeps `o`.
void add_model_bench_options(CLI::App* cmd, const std::shared_ptr<GpuModelBenchOptions>& o, bool decode) {
  cmd->add_option("--model", o->model, "Model: directory, .gguf file or preset:NAME")->capture_default_str();
  cmd->add_option("--backend", o->backend, "Backend (cuda)")->check(CLI::IsMember({"cuda"}))->capture_default_str();
  cmd->add_option("--context", o->contexts, "Prompt lengths, e.g. 8k,32k")->capture_default_str();
  cmd->add_option("--batch", o->batches, decode ? "Sequences decoded together, e.g. 1,4,8" : "Prompts per row, e.g. 1,4")
      ->capture_default_str();
  if (decode) {
    cmd->add_option("--decode-tokens", o->decode_tokens, "Greedy decode steps timed after the prompts (0: prefill only)")
        ->check(CLI::Range(0, 1 << 24))
        ->capture_default_str();
    cmd->add_flag("--eager", o->eager, "Launch the decode step's kernels one by one instead of replaying a CUDA graph");
    cmd->add_flag("--host-logits", o->host_logits,
                  "Decode: copy each step's logits to the host and pick the tokens there (default: on the GPU)");
  }
  cmd->add_option("--chunk", o->chunk, "Prefill chunk (tokens per step)")->capture_default_str();
  cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
  cmd->add_option("--attention", o->attention, "Attention: dense or wave")
      ->check(CLI::IsMember({"dense", "wave"}))
      ->capture_default_str();
  cmd->add_option("--budget", o->retrieval_budget, "Wave retrieval budget (fraction of clusters attended exactly)")
      ->capture_default_str();
  cmd->add_option("--estimation-budget", o->estimation_budget,
                  "Wave estimation budget (fraction of clusters estimated; >= 1 estimates all the rest)")
      ->capture_default_str();
  cmd->add_option("--min-retrieve", o->min_retrieve_clusters, "Wave retrieval floor in clusters")->capture_default_str();
  cmd->add_option("--cache-fraction", o->cache_fraction,
                  "Wave cluster cache as a fraction of the K/V offloaded at the largest context and batch")
      ->capture_default_str();
  cmd->add_option("--cache-gib", o->cache_gib, "Wave cluster cache size in GiB (overrides --cache-fraction)");
  cmd->add_option("--host-kv", o->host_kv, "Wave: offloaded K/V format, bf16 or fp8 (e4m3 with per-cluster scales)")
      ->check(CLI::IsMember({"bf16", "fp8"}))
      ->capture_default_str();
  cmd->add_option("--host-gib", o->host_gib, "Pinned host memory for offloaded K/V in GiB (0: bounded by the system)");
  cmd->add_option("--workload", o->workload,
                  "Attention inputs: synthetic (the synthetic workload generator's prompt K/V and drifting queries "
                  "in place of the model's own) or random (the model's own on random tokens)")
      ->check(CLI::IsMember({"synthetic", "random"}))
      ->capture_default_str();
  cmd->add_option("--layers", o->layers,
                  "Run only the model's first N layers (0: all), e.g. a 70B shape on fewer GPUs; per-layer costs "
                  "are the full model's")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--fill", o->fill,
                  "How each sequence's context is made: prefill (the model runs over a random prompt; timed) or "
                  "synthetic (the synthetic workload's prompt K/V go straight into the KV cache or wave index, "
                  "without the model's prefill; the prefill columns then time that fill)")
      ->check(CLI::IsMember({"prefill", "synthetic"}))
      ->capture_default_str();
  cmd->add_option("--tp", o->tp,
                  "Tensor-parallel GPUs per model, one mpirun rank each (default: every process of the mpirun "
                  "launch, 1 without mpirun)")
      ->check(CLI::Range(0, 1 << 16));
  cmd->add_option("--seed", o->seed, "Synthetic workload seed")->capture_default_str();
  cmd->callback([o] {
    const ModelBenchRun run = plan_model_bench(*o);
#ifdef RETRO_WITH_CUDA
    run_gpu_model_bench(*o, run);
#else
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench model --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
  });
}

}  // namespace

void register_gpu_model_bench(CLI::App& bench) {
  auto model = std::make_shared<GpuModelBenchOptions>();
  add_model_bench_options(
      bench.add_subcommand("model", "End-to-end prefill and batched decode speed with dense or wave attention on "
                                    "the GPU (alias: decode)")
          ->alias("decode"),
      model, /*decode=*/true);
  auto prefill = std::make_shared<GpuModelBenchOptions>();
  prefill->decode_tokens = 0;
  add_model_bench_options(bench.add_subcommand("prefill", "End-to-end prefill speed with dense or wave attention on "
                                                          "the GPU (bench model without decode steps)"),
                          prefill, /*decode=*/false);
}

}  // namespace retro::launcher
