// Model-level accuracy benchmarks on the CPU backend, dense against wave attention on the same
// inputs:
//   retroinfer bench niah --model DIR --data FILE.jsonl --lengths 1k,4k --budget 0.018:0.232,...
//   retroinfer bench perplexity --model FILE.gguf --text FILE --context 2k,4k,8k --scored 64

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "launcher/model_options.h"
#include "runtime/core/error.h"
#include "runtime/needle_eval.h"
#include "runtime/perplexity.h"

#ifdef RETRO_WITH_CUDA
#include <algorithm>

#include "runtime/core/system_info.h"
#include "runtime/cuda/gpu_model.h"
#include "runtime/open_model.h"
#include "runtime/open_tokenizer.h"
#include "runtime/sampler.h"
#endif

namespace retro::launcher {

namespace {

struct Budget {
  double retrieval, estimation;
};

// "0.018:0.232,0.05:1" -> budgets; each entry is retrieval[:estimation].
std::vector<Budget> parse_budgets(const std::string& text, double default_estimation) {
  std::vector<Budget> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    Budget b{0.0, default_estimation};
    auto colon = item.find(':');
    try {
      b.retrieval = std::stod(item.substr(0, colon));
      if (colon != std::string::npos) b.estimation = std::stod(item.substr(colon + 1));
    } catch (...) {
      RETRO_THROW("--budget: '{}' is not retrieval[:estimation] (e.g. 0.018:0.232)", item);
    }
    out.push_back(b);
  }
  RETRO_CHECK(!out.empty(), "--budget: no budget given");
  return out;
}

attention::WaveIndexParams with_budget(const ModelOptions& m, const Budget& b) {
  attention::WaveIndexParams p = m.wave_params();
  p.retrieval_budget = b.retrieval;
  p.estimation_budget = b.estimation;
  p.validate();
  return p;
}

std::unique_ptr<std::ofstream> open_json(const std::string& path) {
  if (path.empty()) return nullptr;
  auto f = std::make_unique<std::ofstream>(path, std::ios::app);
  RETRO_CHECK_KIND(f->good(), ErrorKind::kIo, "cannot open --json-out file '{}'", path);
  return f;
}

struct NiahOptions {
  ModelOptions model;
  std::string backend = "cpu";
  std::string host_kv = "bf16";  // cuda, wave: offloaded K/V format
  std::string data;
  std::string lengths = "1k,4k";
  std::string budgets = "0.018:0.232";
  std::string json_out;
};

void run_niah(const NiahOptions& o) {
  LoadedModel m = load_model(o.model);
  RETRO_CHECK(m.tokenizer.has_value(), "bench niah needs a model with a tokenizer, not {}", o.model.model);
  std::vector<int64_t> lengths = parse_size_list(o.lengths, "--lengths");
  std::vector<Budget> budgets = parse_budgets(o.budgets, o.model.estimation_budget);
  auto json = open_json(o.json_out);
  fmt::print("| context | samples | dense | wave retrieval | wave estimation | wave |\n|---|---|---|---|---|---|\n");
  for (int64_t len : lengths) {
    std::vector<runtime::NeedleSample> samples = runtime::load_needle_samples(o.data, {len});
    if (samples.empty()) {
      fmt::print("| {} | 0 | no samples of this length in {} | | | |\n", len, o.data);
      continue;
    }
    int dense_ok = 0;
    for (const auto& s : samples)
      dense_ok += runtime::run_needle(*m.model, *m.tokenizer, s, attention::AttentionMode::kDense).correct;
    const double dense_acc = 100.0 * dense_ok / samples.size();
    for (const Budget& b : budgets) {
      int wave_ok = 0;
      for (const auto& s : samples)
        wave_ok += runtime::run_needle(*m.model, *m.tokenizer, s, attention::AttentionMode::kWave, with_budget(o.model, b))
                       .correct;
      const double wave_acc = 100.0 * wave_ok / samples.size();
      fmt::print("| {} | {} | {:.1f}% | {} | {} | {:.1f}% |\n", len, samples.size(), dense_acc, b.retrieval,
                 b.estimation, wave_acc);
      std::fflush(stdout);
      if (json) {
        *json << nlohmann::ordered_json{{"bench", "niah"},           {"model", o.model.model},
                                        {"context", len},            {"samples", samples.size()},
                                        {"dense_accuracy", dense_acc}, {"retrieval_budget", b.retrieval},
                                        {"estimation_budget", b.estimation}, {"wave_accuracy", wave_acc}}
                     .dump()
              << "\n";
      }
    }
  }
}


#ifdef RETRO_WITH_CUDA
// The same evaluation on the GPU model: greedy continuation of max(answer tokens + 1, 8) tokens,
// correct when it starts with the answer (runtime::run_needle's rule), dense and wave on the same
// prompts.
std::vector<bool> run_niah_gpu_once(const runtime::ModelConfig& config, const runtime::WeightSource& weights,
                                    const runtime::Tokenizer& tokenizer,
                                    const std::vector<runtime::NeedleSample>& samples,
                                    const runtime::cuda::GpuModelOptions& options) {
  int64_t longest = 0;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> answer_tokens;
  for (const auto& s : samples) {
    prompts.push_back(tokenizer.encode(s.prompt));
    answer_tokens.push_back(int(tokenizer.encode(s.answer, /*add_special_tokens=*/false).size()));
    longest = std::max<int64_t>(longest, int64_t(prompts.back().size()));
  }
  runtime::cuda::GpuModel model(config, weights, 0, longest + 16, options);
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  std::vector<float> logits(vocab);
  std::vector<bool> correct;
  for (size_t i = 0; i < samples.size(); ++i) {
    model.reset(0);
    model.prefill(0, prompts[i], logits.data());
    const int n_new = std::max(answer_tokens[i] + 1, 8);
    std::vector<int32_t> out;
    for (int t = 0; t < n_new; ++t) {
      out.push_back(runtime::argmax(logits));
      if (t + 1 < n_new) model.decode(out.back(), logits.data());
    }
    const std::string text = tokenizer.decode(out, /*skip_special_tokens=*/true);
    correct.push_back(text.rfind(samples[i].answer, 0) == 0);
  }
  return correct;
}

void run_niah_gpu(const NiahOptions& o) {
  RETRO_CHECK_KIND(!query_gpus().empty(), ErrorKind::kUnsupported, "bench niah --backend cuda needs a GPU: {}",
                   query_cuda_runtime().error);
  runtime::ModelConfig config;
  auto weights = runtime::open_model(o.model.model, &config);
  auto tokenizer = runtime::open_tokenizer(o.model.model);
  RETRO_CHECK(tokenizer.has_value(), "bench niah needs a model with a tokenizer, not {}", o.model.model);
  std::vector<int64_t> lengths = parse_size_list(o.lengths, "--lengths");
  std::vector<Budget> budgets = parse_budgets(o.budgets, o.model.estimation_budget);
  auto json = open_json(o.json_out);
  fmt::print("| context | samples | dense | wave retrieval | wave estimation | wave |\n|---|---|---|---|---|---|\n");
  auto accuracy = [](const std::vector<bool>& c) {
    return 100.0 * double(std::count(c.begin(), c.end(), true)) / double(std::max<size_t>(c.size(), 1));
  };
  for (int64_t len : lengths) {
    std::vector<runtime::NeedleSample> samples = runtime::load_needle_samples(o.data, {len});
    if (samples.empty()) {
      fmt::print("| {} | 0 | no samples of this length in {} | | | |\n", len, o.data);
      continue;
    }
    runtime::cuda::GpuModelOptions dense_options;
    dense_options.max_chunk = o.model.prefill_chunk;
    const double dense_acc = accuracy(run_niah_gpu_once(config, *weights, *tokenizer, samples, dense_options));
    for (const Budget& b : budgets) {
      runtime::cuda::GpuModelOptions wave_options = dense_options;
      wave_options.attention = attention::AttentionMode::kWave;
      wave_options.wave = with_budget(o.model, b);
      wave_options.buffer.kv_dtype = host_kv_dtype(o.host_kv);
      const double wave_acc = accuracy(run_niah_gpu_once(config, *weights, *tokenizer, samples, wave_options));
      fmt::print("| {} | {} | {:.1f}% | {} | {} | {:.1f}% ({} host KV) |\n", len, samples.size(), dense_acc,
                 b.retrieval, b.estimation, wave_acc, o.host_kv);
      std::fflush(stdout);
      if (json) {
        *json << nlohmann::ordered_json{{"bench", "niah"},           {"backend", "cuda"}, {"host_kv", o.host_kv},
                                        {"model", o.model.model},    {"context", len},
                                        {"samples", samples.size()}, {"dense_accuracy", dense_acc},
                                        {"retrieval_budget", b.retrieval}, {"estimation_budget", b.estimation},
                                        {"wave_accuracy", wave_acc}}
                     .dump()
              << "\n";
      }
    }
  }
}
#endif

struct PerplexityOptions {
  ModelOptions model;
  std::string text;
  std::string contexts = "2k,4k,8k";
  int64_t scored = 64;
  std::string budgets = "0.018:0.232";
  std::string json_out;
};

void run_perplexity(const PerplexityOptions& o) {
  LoadedModel m = load_model(o.model);
  RETRO_CHECK(m.tokenizer.has_value(), "bench perplexity needs a model with a tokenizer, not {}", o.model.model);
  std::ifstream f(o.text);
  RETRO_CHECK_KIND(f.good(), ErrorKind::kIo, "cannot open --text file '{}'", o.text);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<int32_t> ids = m.tokenizer->encode(text);
  std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  for (int64_t& c : contexts) c = std::min<int64_t>(c, static_cast<int64_t>(ids.size()));
  auto json = open_json(o.json_out);
  fmt::print("text: {} ({} tokens)\n\n", o.text, ids.size());
  fmt::print("| context | scored | retrieval | estimation | dense ppl | wave ppl | wave/dense | mean KL (nats) |\n");
  fmt::print("|---|---|---|---|---|---|---|---|\n");
  runtime::ForwardOptions fwd{.prefill_chunk = o.model.prefill_chunk};
  for (const Budget& b : parse_budgets(o.budgets, o.model.estimation_budget)) {
    runtime::PerplexityReport r = runtime::measure_perplexity(*m.model, ids, contexts, o.scored, with_budget(o.model, b), fwd);
    for (const runtime::WaveGap& g : r.wave) {
      fmt::print("| {} | {} | {} | {} | {:.3f} | {:.3f} | {:.4f} | {:.4f} |\n", g.context, g.scored, b.retrieval,
                 b.estimation, g.dense_ppl, g.wave_ppl, g.wave_ppl / g.dense_ppl, g.mean_kl);
      if (json) {
        *json << nlohmann::ordered_json{{"bench", "perplexity"}, {"model", o.model.model}, {"context", g.context},
                                        {"scored", g.scored}, {"retrieval_budget", b.retrieval},
                                        {"estimation_budget", b.estimation}, {"dense_ppl", g.dense_ppl},
                                        {"wave_ppl", g.wave_ppl}, {"mean_kl", g.mean_kl}}
                     .dump()
              << "\n";
      }
    }
    fmt::print("dense perplexity over the first {} tokens: {:.3f}\n", r.tokens, r.dense_ppl);
    std::fflush(stdout);
  }
}

}  // namespace

void register_model_benches(CLI::App& bench) {
  {
    auto o = std::make_shared<NiahOptions>();
    CLI::App* cmd = bench.add_subcommand("niah", "Needle retrieval accuracy, dense vs wave attention");
    add_model_options(*cmd, o->model);
    cmd->add_option("--backend", o->backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
    cmd->add_option("--host-kv", o->host_kv, "cuda: wave's offloaded K/V format, bf16 or fp8")
        ->check(CLI::IsMember({"bf16", "fp8"}))
        ->capture_default_str();
    cmd->add_option("--data", o->data, "Needle samples (JSON lines: id, context_length, prompt, answer)")->required();
    cmd->add_option("--lengths", o->lengths, "Context lengths to evaluate")->capture_default_str();
    cmd->add_option("--budgets", o->budgets, "Wave budgets retrieval[:estimation], comma separated")
        ->capture_default_str();
    cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
    cmd->callback([o] {
      if (o->backend == "cpu") return run_niah(*o);
#ifdef RETRO_WITH_CUDA
      run_niah_gpu(*o);
#else
      RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench niah --backend cuda needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
    });
  }
  {
    auto o = std::make_shared<PerplexityOptions>();
    CLI::App* cmd = bench.add_subcommand(
        "perplexity", "Perplexity of a text, and wave attention's perplexity and KL against dense (CPU backend)");
    add_model_options(*cmd, o->model);
    cmd->add_option("--text", o->text, "Text file")->required();
    cmd->add_option("--context", o->contexts, "Context lengths at which wave is compared")->capture_default_str();
    cmd->add_option("--scored", o->scored, "Positions compared before each context length")->capture_default_str();
    cmd->add_option("--budgets", o->budgets, "Wave budgets retrieval[:estimation], comma separated")
        ->capture_default_str();
    cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
    cmd->callback([o] { run_perplexity(*o); });
  }
}

}  // namespace retro::launcher
