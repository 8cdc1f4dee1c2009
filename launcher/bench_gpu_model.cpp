// `retroinfer bench model --backend cuda`: end-to-end single-sequence prefill and decode speed of the
// GPU forward pass with dense attention, on a checkpoint or a synthetic preset.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "launcher/bench_util.h"
#include "launcher/commands.h"
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
};

#ifdef RETRO_WITH_CUDA
void run_gpu_model_bench(const GpuModelBenchOptions& o) {
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench model --backend cuda needs a GPU: {}",
                   query_cuda_runtime().error);
  std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  std::vector<int64_t> batches = parse_size_list(o.batches, "--batch");
  const int64_t max_context = *std::max_element(contexts.begin(), contexts.end());
  const int max_batch = static_cast<int>(*std::max_element(batches.begin(), batches.end()));
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  runtime::ModelConfig config;
  auto weights = runtime::open_model(o.model, &config);
  runtime::cuda::GpuModel model(config, *weights, 0, max_context + o.decode_tokens, o.chunk, /*use_cuda_graph=*/!o.eager,
                                max_batch);
  fmt::print("model {} on {}: {} layers, hidden {}, {} q / {} kv heads (loaded in {:.1f} s); decode step {}\n\n",
             o.model, gpus[0].name, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
             std::chrono::duration<double>(Clock::now() - t0).count(), o.eager ? "launched eagerly" : "a CUDA graph");
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
  fmt::print("| context | batch | prefill s | prefill tokens/s | decode ms/step | decode tokens/s |\n");
  fmt::print("|---|---|---|---|---|---|\n");
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, config.vocab_size - 1);
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  std::vector<float> logits(vocab * size_t(max_batch));
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
      auto b = Clock::now();
      for (int i = 0; i < o.decode_tokens; ++i) {
        model.decode(next, logits.data());
        for (int s = 0; s < bs; ++s)
          next[size_t(s)] = runtime::argmax(std::span<const float>(logits.data() + size_t(s) * vocab, vocab));
      }
      const double step_ms = std::chrono::duration<double, std::milli>(Clock::now() - b).count() / o.decode_tokens;
      const double prefill_tps = double(ctx * bs) / prefill_s, decode_tps = double(bs) * 1e3 / step_ms;
      fmt::print("| {} | {} | {:.3f} | {:.0f} | {:.2f} | {:.1f} |\n", ctx, bs, prefill_s, prefill_tps, step_ms, decode_tps);
      std::fflush(stdout);
      if (json) {
        *json << nlohmann::ordered_json{{"bench", "model"},          {"backend", "cuda"},
                                        {"model", o.model},           {"device", gpus[0].name},
                                        {"context", ctx},             {"batch", bs},
                                        {"prefill_s", prefill_s},     {"prefill_tokens_per_s", prefill_tps},
                                        {"decode_ms_per_step", step_ms}, {"decode_tokens_per_s", decode_tps},
                                        {"cuda_graph", !o.eager}}
                     .dump()
              << "\n";
      }
    }
  }
}
#endif

}  // namespace

void register_gpu_model_bench(CLI::App& bench) {
  auto o = std::make_shared<GpuModelBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "model", "End-to-end prefill and batched decode speed with dense attention on the GPU (alias: decode)");
  cmd->alias("decode");
  cmd->add_option("--model", o->model, "Model: directory, .gguf file or preset:NAME")->capture_default_str();
  cmd->add_option("--backend", o->backend, "Backend (cuda)")->check(CLI::IsMember({"cuda"}))->capture_default_str();
  cmd->add_option("--context", o->contexts, "Prompt lengths, e.g. 8k,32k")->capture_default_str();
  cmd->add_option("--batch", o->batches, "Sequences decoded together, e.g. 1,4,8")->capture_default_str();
  cmd->add_option("--decode-tokens", o->decode_tokens, "Greedy decode steps timed after the prompts")->capture_default_str();
  cmd->add_option("--chunk", o->chunk, "Prefill chunk (tokens per step)")->capture_default_str();
  cmd->add_flag("--eager", o->eager, "Launch the decode step's kernels one by one instead of replaying a CUDA graph");
  cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
  cmd->callback([o] {
#ifdef RETRO_WITH_CUDA
    run_gpu_model_bench(*o);
#else
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench model --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
  });
}

}  // namespace retro::launcher
