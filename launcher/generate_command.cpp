// `retroinfer generate`: load a model (directory, GGUF file or preset), run a prompt with dense or
// wave attention on the CPU backend or on a GPU (--backend cuda), stream the tokens to stdout. With
// --requests FILE.jsonl, run many requests at once through the coordinator's continuous batching
// (CPU backend, one process or the ranks of one tensor-parallel group) and print one JSON line per
// finished request.

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "attention/kv_store.h"
#include "launcher/commands.h"
#include "launcher/model_options.h"
#include "launcher/request_file.h"
#include "parallel/coordinator.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/cpu_engine.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/open_model.h"
#include "runtime/open_tokenizer.h"
#include "runtime/sampler.h"

#ifdef RETRO_WITH_CUDA
#include "parallel/gpu_tensor_parallel.h"
#include "parallel/watchdog.h"
#include "runtime/cuda/gpu_engine.h"
#include "runtime/cuda/gpu_model.h"
#endif

namespace retro::launcher {

namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt;
  std::string prompt_file;
  int max_new_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool stats = false;
  std::string backend = "cpu";  // cpu | cuda
  int device = 0;               // --backend cuda
  bool eager = false;           // --backend cuda: no CUDA graph
  // --backend cuda --attention wave: the offloaded K/V's format and the GPU cluster cache's share of it.
  std::string host_kv = "bf16";
  double cache_fraction = 0.05;  // WaveBufferParams::kv_fraction's default
  // --requests: continuous batching of a request file.
  std::string requests;
  int max_slots = runtime::EngineParams{}.max_slots;
  int64_t max_batched_tokens = parallel::SchedulerParams{}.max_batched_tokens;
  size_t kv_memory_mib = 0;  // the KV pool of each rank; 0: unbounded
  int64_t max_tokens = 4096;  // --backend cuda: tokens one sequence may hold (sizes each slot)
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  RETRO_CHECK_KIND(f.good(), ErrorKind::kIo, "cannot open prompt file '{}'", path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

#ifdef RETRO_WITH_CUDA
// The GPU model's options from the command line, for `max_batch` sequence slots.
runtime::cuda::GpuModelOptions gpu_model_options(const GenerateOptions& o, int max_batch) {
  runtime::cuda::GpuModelOptions g;
  g.max_chunk = o.model.prefill_chunk;
  g.use_cuda_graph = !o.eager;
  g.max_batch = max_batch;
  g.attention = o.model.attention_mode();
  if (g.attention == attention::AttentionMode::kWave) {
    g.wave = o.model.wave_params();
    g.buffer.kv_dtype = host_kv_dtype(o.host_kv);
    g.buffer.kv_fraction = o.cache_fraction;
  }
  return g;
}

// This process's rank geometry; a single process drives --device.
parallel::WorldConfig gpu_world(const GenerateOptions& o) {
  parallel::WorldConfig world = parallel::make_world_config(parallel::mpi_world(), o.model.tp);
  if (world.world_size == 1) world.local_device = o.device;
  return world;
}
#endif

// The GPU model holds its own bf16 weights (no CPU model is built) and the host Sampler picks each
// token from the step's logits. Under `mpirun -np N ... --tp N` each rank holds its shard on its
// node-local GPU; every rank gets the same logits and samples the same tokens, and world rank 0 prints.
void run_generate_cuda(const GenerateOptions& o, const std::string& prompt) {
#ifdef RETRO_WITH_CUDA
  runtime::ModelConfig config;
  std::unique_ptr<runtime::WeightSource> weights = runtime::open_model(o.model.model, &config);
  std::optional<runtime::Tokenizer> tokenizer = runtime::open_tokenizer(o.model.model);
  const std::vector<int32_t> ids = encode_prompt(tokenizer, config.vocab_size, prompt);
  RETRO_CHECK(!ids.empty(), "empty prompt");
  RETRO_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  const std::vector<int32_t> stop_ids = stop_token_ids(tokenizer, config);
  const runtime::cuda::GpuModelOptions g = gpu_model_options(o, /*max_batch=*/1);
  const int64_t max_tokens = static_cast<int64_t>(ids.size()) + std::max(o.max_new_tokens, 1);
  const parallel::WorldConfig world = gpu_world(o);
  const bool leader = world.is_world_leader();
  std::unique_ptr<parallel::Communicator> host_group = parallel::make_tp_host_communicator(world);
  parallel::GpuModelShard shard(world, *host_group, config, *weights, max_tokens, g);
  runtime::cuda::GpuModel& model = shard.model();
  if (world.tp > 1) RETRO_LOG_INFO("{}; {}", world.describe(), shard.plan().describe());

  runtime::Sampler sampler({.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p, .seed = o.seed});
  std::unique_ptr<runtime::StreamingDecoder> stream;
  if (tokenizer) stream = std::make_unique<runtime::StreamingDecoder>(*tokenizer, /*skip_special_tokens=*/true);
  std::vector<float> logits(static_cast<size_t>(config.vocab_size));
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  model.prefill(ids, logits.data());
  const auto t1 = Clock::now();
  std::string finish_reason = "length";
  size_t generated = 0;
  // The first token comes from the prompt's logits (on the host); every later one is sampled on the
  // GPU inside the decode step, from the same uniform stream the host sampler would draw.
  int32_t token = o.max_new_tokens > 0 ? sampler.sample(logits) : -1;
  for (int i = 0; i < o.max_new_tokens; ++i) {
    ++generated;
    std::string piece = stream ? stream->push(token) : fmt::format("[{}]", token);
    if (leader) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
      finish_reason = "stop";
      break;
    }
    if (i + 1 < o.max_new_tokens) {
      const double u = sampler.params().greedy() ? 0.0 : sampler.next_uniform();
      int32_t next = -1;
      model.decode_sample(std::span<const int32_t>(&token, 1), std::span<const runtime::SamplingParams>(&sampler.params(), 1),
                          std::span<const double>(&u, 1), std::span<int32_t>(&next, 1));
      token = next;
    }
    parallel::watchdog_progress();  // the step's collectives ran inside a CUDA graph, unseen by the host
  }
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  if (!leader) return;
  if (stream) {
    std::string rest = stream->flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::fputc('\n', stdout);
  if (o.stats) {
    // The first token comes from the prefill's logits: decode time covers the others.
    const double decoded = generated > 1 ? double(generated - 1) : 0.0;
    fmt::print(stderr,
               "prompt {} tokens, prefill {:.3f} s ({:.1f} tokens/s); generated {} tokens ({}), {:.2f} tokens/s "
               "(cuda:{}, {} attention, tp {})\n",
               ids.size(), prefill_s, static_cast<double>(ids.size()) / prefill_s, generated, finish_reason,
               decode_s > 0.0 ? decoded / decode_s : 0.0, world.local_device, o.model.attention, world.tp);
  }
#else
  (void)o;
  (void)prompt;
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "generate --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
}

void run_generate(const GenerateOptions& o) {
  std::string prompt = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file);
  if (o.backend == "cuda") {
    run_generate_cuda(o, prompt);
    return;
  }
  LoadedModel m = load_model(o.model);
  runtime::GenerationRequest req;
  req.prompt = m.encode(prompt);
  req.max_new_tokens = o.max_new_tokens;
  req.sampling = {.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p, .seed = o.seed};
  req.stop_ids = m.stop_ids();
  req.forward.prefill_chunk = o.model.prefill_chunk;

  auto seq = m.model->new_sequence(o.model.attention_mode(), o.model.wave_params());
  std::unique_ptr<runtime::StreamingDecoder> stream;
  if (m.tokenizer) stream = std::make_unique<runtime::StreamingDecoder>(*m.tokenizer, /*skip_special_tokens=*/true);
  auto on_token = [&](int32_t id) {
    if (!m.leader()) return;  // every rank of a tensor-parallel group computes the same tokens
    std::string piece = stream ? stream->push(id) : fmt::format("[{}]", id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  runtime::GenerationResult r = runtime::generate(*m.model, *seq, req, on_token);
  if (!m.leader()) return;
  if (stream) {
    std::string rest = stream->flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::fputc('\n', stdout);
  if (o.stats) {
    fmt::print(stderr, "prompt {} tokens, prefill {:.3f} s ({:.1f} tokens/s); generated {} tokens ({}), {:.2f} tokens/s\n",
               req.prompt.size(), r.prefill_seconds, static_cast<double>(req.prompt.size()) / r.prefill_seconds,
               r.tokens.size(), r.finish_reason, r.decode_tokens_per_second());
  }
}

// Every request of the file through one coordinator: rank 0 of the group schedules, samples and
// prints; the other ranks run the plans it broadcasts.
// The request file through the coordinator over `engine`: world rank 0 plans and prints, every
// other rank of the group runs the plans (the plans travel on a communicator of their own, apart
// from the model's collectives).
void run_requests(runtime::Engine& engine, const parallel::WorldConfig& world, const GenerateOptions& o,
                  const std::function<std::vector<int32_t>(const std::string&)>& encode,
                  const std::vector<int32_t>& stop_ids, const std::optional<runtime::Tokenizer>& tokenizer) {
  std::unique_ptr<parallel::Communicator> control = parallel::make_tp_host_communicator(world);
  if (!world.is_world_leader()) {
    parallel::run_worker(engine, *control);
    return;
  }
  // From here on a failure on this rank still sends the workers the shutdown plan (~Coordinator).
  parallel::Coordinator coordinator(engine, *control,
                                    {.max_running = 0, .max_batched_tokens = o.max_batched_tokens});
  RequestLine defaults;
  defaults.max_new_tokens = o.max_new_tokens;
  defaults.sampling = {.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p, .seed = o.seed};
  const std::vector<RequestLine> lines = read_request_file(o.requests, defaults);
  // Every request is checked before any runs, so a bad one stops the run before its first step.
  std::vector<parallel::Request> requests;
  for (const RequestLine& line : lines) {
    parallel::Request r;
    r.prompt = encode(line.prompt);
    r.max_new_tokens = line.max_new_tokens;
    r.sampling = line.sampling;
    r.stop_ids = stop_ids;
    const std::string why = coordinator.refusal(r);
    RETRO_CHECK_INPUT(why.empty(), "{} line {}: {}", o.requests, line.line, why);
    requests.push_back(std::move(r));
  }
  for (parallel::Request& r : requests) coordinator.submit(std::move(r));  // ids 0, 1, ...: the lines' order
  coordinator.run([&](const parallel::RequestResult& r) {
    const RequestLine& line = lines[r.id];
    std::string text;
    if (tokenizer) {
      text = tokenizer->decode(r.tokens, /*skip_special_tokens=*/true);
    } else {
      for (int32_t t : r.tokens) text += fmt::format("[{}]", t);
    }
    nlohmann::ordered_json out = {
        {"id", line.id}, {"text", text}, {"tokens", r.tokens}, {"finish_reason", r.finish_reason}};
    const std::string s = out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  });
  coordinator.shutdown();
}

// --backend cuda: the GPU model (one rank's shard under mpirun --tp) behind GpuEngine, whose slots
// hold sequences of up to --max-tokens tokens.
void run_generate_requests_cuda(const GenerateOptions& o) {
#ifdef RETRO_WITH_CUDA
  runtime::ModelConfig config;
  std::unique_ptr<runtime::WeightSource> weights = runtime::open_model(o.model.model, &config);
  const std::optional<runtime::Tokenizer> tokenizer = runtime::open_tokenizer(o.model.model);
  const parallel::WorldConfig world = gpu_world(o);
  RETRO_CHECK(world.dp == 1, "generate --requests serves one model replica: --tp must span all {} processes, got tp {}",
              world.world_size, world.tp);
  runtime::cuda::GpuModelOptions g = gpu_model_options(o, o.max_slots);
  g.host_capacity_bytes = o.kv_memory_mib << 20;
  std::unique_ptr<parallel::Communicator> host_group = parallel::make_tp_host_communicator(world);
  parallel::GpuModelShard shard(world, *host_group, config, *weights, o.max_tokens, g);
  runtime::cuda::GpuEngine engine(shard.model());
  run_requests(
      engine, world, o, [&](const std::string& text) { return encode_prompt(tokenizer, config.vocab_size, text); },
      stop_token_ids(tokenizer, config), tokenizer);
#else
  (void)o;
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "generate --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
}

void run_generate_requests(const GenerateOptions& o) {
  if (o.backend == "cuda") {
    run_generate_requests_cuda(o);
    return;
  }
  LoadedModel m = load_model(o.model);
  RETRO_CHECK(m.world.dp == 1,
              "generate --requests serves one model replica: --tp must span all {} processes, got tp {}",
              m.world.world_size, m.world.tp);
  runtime::EngineParams ep;
  ep.max_slots = o.max_slots;
  ep.prefill_chunk = o.model.prefill_chunk;
  ep.kv_capacity_bytes = o.kv_memory_mib << 20;
  ep.attention = o.model.attention_mode();
  ep.wave = o.model.wave_params();
  runtime::CpuEngine engine(*m.model, ep);
  run_requests(engine, m.world, o, [&](const std::string& text) { return m.encode(text); }, m.stop_ids(), m.tokenizer);
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd =
      app.add_subcommand("generate", "Generate text from a prompt with dense or wave attention (CPU or CUDA backend)");
  add_model_options(*cmd, o->model);
  add_tp_option(*cmd, o->model);
  auto* p = cmd->add_option("--prompt", o->prompt, "Prompt text");
  auto* pf = cmd->add_option("--prompt-file", o->prompt_file, "Read the prompt from this file");
  p->excludes(pf);
  pf->excludes(p);
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "Keep the k most likely tokens (0: all)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--stats", o->stats, "Print prefill and decode speed to stderr");
  cmd->add_option("--backend", o->backend, "Backend: cpu (fp32) or cuda (bf16 on one GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--device", o->device, "CUDA device (--backend cuda)")->capture_default_str();
  cmd->add_option("--host-kv", o->host_kv,
                  "--backend cuda --attention wave: offloaded K/V format, bf16 or fp8 (e4m3 with per-cluster scales)")
      ->check(CLI::IsMember({"bf16", "fp8"}))
      ->capture_default_str();
  cmd->add_option("--cache-fraction", o->cache_fraction,
                  "--backend cuda --attention wave: GPU cluster cache as a fraction of the offloaded K/V")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_flag("--eager", o->eager, "--backend cuda: launch the decode step's kernels one by one instead of a CUDA graph");
  auto* rq = cmd->add_option("--requests", o->requests,
                             "Run every request of a JSONL file (one {\"prompt\": ...} object a line) with "
                             "continuous batching; prints one JSON line per finished request");
  p->excludes(rq);
  pf->excludes(rq);
  rq->excludes(p);
  rq->excludes(pf);
  cmd->add_option("--max-slots", o->max_slots, "--requests: sequences held at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-batched-tokens", o->max_batched_tokens,
                  "--requests: tokens per step (decode tokens + prompt chunks)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-tokens", o->max_tokens,
                  "--requests --backend cuda: tokens one sequence may hold (prompt and generated; sizes each slot)")
      ->capture_default_str();
  cmd->add_option("--kv-memory-mib", o->kv_memory_mib,
                  "--requests: KV memory of each rank in MiB; requests wait for room or are refused (0: unbounded)")
      ->capture_default_str();
  cmd->callback([o, p, pf, rq] {
    RETRO_CHECK(p->count() + pf->count() + rq->count() == 1, "generate needs --prompt, --prompt-file or --requests");
    if (rq->count() == 1) {
      run_generate_requests(*o);
    } else {
      run_generate(*o);
    }
  });
}

}  // namespace retro::launcher
