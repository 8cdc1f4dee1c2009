// `retroinfer bench model --backend cuda`: end-to-end prefill and batched decode speed of the GPU
// forward pass with dense or wave attention, on a checkpoint or a synthetic preset. With wave
// attention each row also gives the cluster cache's hit ratio and the host bytes read per decode
// step (cache counters read between steps) and the zone counts of the last step.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attention/kv_store.h"
#include "attention/wave_index.h"
#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "runtime/core/allocator.h"
#include "runtime/core/error.h"
#include "runtime/open_model.h"
#include "runtime/sampler.h"

#ifdef RETRO_WITH_CUDA
#include "runtime/core/system_info.h"
#include "runtime/cuda/gpu_model.h"
#endif

namespace retro::launcher {

namespace {

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
};

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
    g.buffer.cache_bytes = static_cast<size_t>(o.cache_gib * double(size_t(1) << 30));
    g.host_capacity_bytes = static_cast<size_t>(o.host_gib * double(size_t(1) << 30));
  }
  return g;
}

void run_gpu_model_bench(const GpuModelBenchOptions& o) {
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench model --backend cuda needs a GPU: {}",
                   query_cuda_runtime().error);
  std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  std::vector<int64_t> batches = parse_size_list(o.batches, "--batch");
  const int64_t max_context = *std::max_element(contexts.begin(), contexts.end());
  const int max_batch = static_cast<int>(*std::max_element(batches.begin(), batches.end()));
  const bool wave = o.attention == "wave";
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  runtime::ModelConfig config;
  auto weights = runtime::open_model(o.model, &config);
  runtime::cuda::GpuModel model(config, *weights, 0, max_context + o.decode_tokens, gpu_options(o, max_batch));
  fmt::print("model {} on {}: {} layers, hidden {}, {} q / {} kv heads (loaded in {:.1f} s); {} attention; decode "
             "step {}\n",
             o.model, gpus[0].name, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
             std::chrono::duration<double>(Clock::now() - t0).count(), o.attention,
             o.eager ? "launched eagerly" : "a CUDA graph");
  const runtime::cuda::GpuModelMemoryPlan& plan = model.memory_plan();
  if (wave) {
    fmt::print("device memory: {} weights, {} wave KV, {} cluster cache, {} prefill buffers, {} activations; budgets "
               "{} retrieved (at least {} clusters), {} estimated\n",
               format_bytes(plan.weights), format_bytes(plan.wave_kv), format_bytes(plan.cluster_cache),
               format_bytes(plan.prefill), format_bytes(plan.activations), o.retrieval_budget, o.min_retrieve_clusters,
               o.estimation_budget);
  } else {
    fmt::print("device memory: {} weights, {} KV cache, {} activations\n", format_bytes(plan.weights),
               format_bytes(plan.kv_cache), format_bytes(plan.activations));
  }
  fmt::print("\n");
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, config.vocab_size - 1);
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  std::vector<float> logits(vocab * size_t(max_batch));
  if (wave) {
    // Steady state of a server: the pinned host pool has grown once (cudaHostAlloc of new chunks is
    // a one-time cost, reported separately), then pages are reused by every later prompt.
    auto a = Clock::now();
    std::vector<int32_t> prompt(static_cast<size_t>(max_context));
    for (auto& t : prompt) t = tok(rng);
    for (int s = 0; s < max_batch; ++s) {
      model.reset(s);
      model.prefill(s, prompt, logits.data());
    }
    for (int s = 0; s < max_batch; ++s) model.reset(s);
    fmt::print("(warm-up: {} prompts of {} tokens pinned {} of host memory in {:.1f} s, untimed)\n\n", max_batch,
               max_context, format_bytes(model.host_pinned_bytes()),
               std::chrono::duration<double>(Clock::now() - a).count());
  }
  if (wave) {
    fmt::print("| context | batch | prefill s | prefill tokens/s | decode ms/step | decode tokens/s | cache hit ratio | "
               "host MB/step | retrieved clusters/group | estimated clusters/group | retrieved tokens/group | host KV "
               "GiB |\n");
    fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  } else {
    fmt::print("| context | batch | prefill s | prefill tokens/s | decode ms/step | decode tokens/s |\n");
    fmt::print("|---|---|---|---|---|---|\n");
  }
  for (int64_t ctx : contexts) {
    for (int64_t bs : batches) {
      // Every sequence of the batch gets its own random prompt of ctx tokens.
      double prefill_s = 0;
      std::vector<int32_t> next(static_cast<size_t>(bs));
      for (int s = 0; s < bs; ++s) {
        std::vector<int32_t> prompt(static_cast<size_t>(ctx));
        for (auto& t : prompt) t = tok(rng);
        model.reset(s);
        auto a = Clock::now();
        model.prefill(s, prompt, logits.data());
        prefill_s += std::chrono::duration<double>(Clock::now() - a).count();
        next[size_t(s)] = runtime::argmax(std::span<const float>(logits.data(), vocab));
      }
      // Cache counters are read before and after the timed steps, never inside one.
      const attention::cuda::WaveCacheCounters before = wave ? model.wave_cache_counters() : attention::cuda::WaveCacheCounters{};
      auto b = Clock::now();
      for (int i = 0; i < o.decode_tokens; ++i) {
        model.decode(next, logits.data());
        for (int s = 0; s < bs; ++s)
          next[size_t(s)] = runtime::argmax(std::span<const float>(logits.data() + size_t(s) * vocab, vocab));
      }
      const double step_ms = std::chrono::duration<double, std::milli>(Clock::now() - b).count() / o.decode_tokens;
      const double prefill_tps = double(ctx * bs) / prefill_s, decode_tps = double(bs) * 1e3 / step_ms;
      nlohmann::ordered_json row{{"bench", "model"},          {"backend", "cuda"},
                                 {"attention", o.attention},    {"model", o.model},
                                 {"device", gpus[0].name},      {"context", ctx},
                                 {"batch", bs},                 {"prefill_s", prefill_s},
                                 {"prefill_tokens_per_s", prefill_tps}, {"decode_ms_per_step", step_ms},
                                 {"decode_tokens_per_s", decode_tps},   {"cuda_graph", !o.eager}};
      if (!wave) {
        fmt::print("| {} | {} | {:.3f} | {:.0f} | {:.2f} | {:.1f} |\n", ctx, bs, prefill_s, prefill_tps, step_ms,
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
        fmt::print("| {} | {} | {:.3f} | {:.0f} | {:.2f} | {:.1f} | {:.3f} | {:.2f} | {:.1f} | {:.1f} | {:.0f} | {:.2f} |\n",
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
      std::fflush(stdout);
      if (json) *json << row.dump() << "\n";
    }
  }
}
#endif

}  // namespace

void register_gpu_model_bench(CLI::App& bench) {
  auto o = std::make_shared<GpuModelBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "model", "End-to-end prefill and batched decode speed with dense or wave attention on the GPU (alias: decode)");
  cmd->alias("decode");
  cmd->add_option("--model", o->model, "Model: directory, .gguf file or preset:NAME")->capture_default_str();
  cmd->add_option("--backend", o->backend, "Backend (cuda)")->check(CLI::IsMember({"cuda"}))->capture_default_str();
  cmd->add_option("--context", o->contexts, "Prompt lengths, e.g. 8k,32k")->capture_default_str();
  cmd->add_option("--batch", o->batches, "Sequences decoded together, e.g. 1,4,8")->capture_default_str();
  cmd->add_option("--decode-tokens", o->decode_tokens, "Greedy decode steps timed after the prompts")->capture_default_str();
  cmd->add_option("--chunk", o->chunk, "Prefill chunk (tokens per step)")->capture_default_str();
  cmd->add_flag("--eager", o->eager, "Launch the decode step's kernels one by one instead of replaying a CUDA graph");
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
  cmd->add_option("--host-gib", o->host_gib, "Pinned host memory for offloaded K/V in GiB (0: bounded by the system)");
  cmd->callback([o] {
#ifdef RETRO_WITH_CUDA
    run_gpu_model_bench(*o);
#else
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench model --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
  });
}

}  // namespace retro::launcher
