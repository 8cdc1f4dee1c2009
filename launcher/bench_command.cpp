// `retroinfer bench`: benchmarks that print a markdown table and, with --json-out, append one JSON
// line per row. `bench attention` measures wave attention against dense attention on the synthetic
// workload: accuracy (relative L2 error of the output, recall of the top-100 attention-mass tokens)
// and time (index build, one decode step of one layer).

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "attention/kv_store.h"
#include "attention/synthetic.h"
#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

namespace retro::launcher {

namespace {

using attention::AttentionShape;
using Clock = std::chrono::steady_clock;

struct AttentionBenchOptions {
  std::string backend = "cpu";
  std::string contexts = "4k,32k,128k";
  std::string budgets = "0.018:0.232,0.018:1,0.05:0.232";
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int steps = 8;
  int reps = 3;
  uint64_t seed = 1;
  int top_tokens = 100;
  int key_rank = attention::SyntheticParams{}.key_rank;
  std::string json_out;
};

struct Budget {
  double retrieval;
  double estimation;
};

// "0.018:0.232,0.05" -> {{0.018, 0.232}, {0.05, default estimation}}
std::vector<Budget> parse_budgets(const std::string& text) {
  std::vector<Budget> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    Budget b{0.0, attention::WaveIndexParams{}.estimation_budget};
    const size_t colon = item.find(':');
    try {
      size_t used = 0;
      const std::string r = item.substr(0, colon);
      b.retrieval = std::stod(r, &used);
      RETRO_CHECK(used == r.size(), "");
      if (colon != std::string::npos) {
        const std::string e = item.substr(colon + 1);
        b.estimation = std::stod(e, &used);
        RETRO_CHECK(used == e.size(), "");
      }
    } catch (...) {
      RETRO_THROW("--budget: '{}' is not RETRIEVAL[:ESTIMATION] (fractions of the clusters, e.g. 0.018:0.232)", item);
    }
    out.push_back(b);
  }
  RETRO_CHECK(!out.empty(), "--budget: no budgets given");
  return out;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string context_label(int64_t n) {
  if (n % (1024 * 1024) == 0) return fmt::format("{}M", n / (1024 * 1024));
  if (n % 1024 == 0) return fmt::format("{}K", n / 1024);
  return std::to_string(n);
}

// Top-k positions by dense attention weight of query head h, from the position-ordered keys.
std::vector<int64_t> top_positions(const float* q, const std::vector<float>& k, int64_t n, const AttentionShape& s,
                                   int h, int top) {
  const int d = s.head_dim;
  const int g = h / s.group_size();
  std::vector<std::pair<float, int64_t>> logits(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    const float* kr = k.data() + (t * s.num_kv_heads + g) * d;
    float dot = 0.0f;
    for (int i = 0; i < d; ++i) dot += q[i] * kr[i];
    logits[static_cast<size_t>(t)] = {dot, t};
  }
  const int64_t kk = std::min<int64_t>(top, n);
  std::partial_sort(logits.begin(), logits.begin() + kk, logits.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<int64_t> out;
  for (int64_t i = 0; i < kk; ++i) out.push_back(logits[static_cast<size_t>(i)].second);
  return out;
}

struct Row {
  int64_t context = 0;
  Budget budget{};
  double clusters = 0, retrieved = 0, estimated = 0, exact_tokens = 0;
  double error = 0, recall = 0, wave_ms = 0, dense_ms = 0;
  double build_s = 0;
};

void run_attention_bench(const AttentionBenchOptions& o) {
  RETRO_CHECK_KIND(o.backend == "cpu", ErrorKind::kUnsupported,
                   "bench attention: backend '{}' is not available (this build measures --backend cpu)", o.backend);
  const AttentionShape shape{o.heads, o.kv_heads, o.head_dim};
  shape.validate();
  RETRO_CHECK(o.steps > 0 && o.reps > 0 && o.top_tokens > 0, "bench attention: --steps, --reps and --top must be positive");
  const std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  const std::vector<Budget> budgets = parse_budgets(o.budgets);
  for (const Budget& b : budgets) {
    attention::WaveIndexParams p;
    p.retrieval_budget = b.retrieval;
    p.estimation_budget = b.estimation;
    p.validate();
  }
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) {
    json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
    RETRO_CHECK_KIND(json->good(), ErrorKind::kIo, "cannot open --json-out file '{}'", o.json_out);
  }
  const int d = shape.head_dim;
  const int hq = shape.num_q_heads;
  const int hkv = shape.num_kv_heads;
  fmt::print("wave vs dense attention, CPU, one layer: {} q / {} kv heads, head_dim {}, {} decode steps, seed {}, "
             "key rank {}\n\n", hq, hkv, d, o.steps, o.seed, o.key_rank);
  fmt::print("| context | retrieval | estimation | clusters/head | retrieved/head | estimated/head | exact tokens/head "
             "| rel. L2 error | recall@{} | build s | wave ms/step | dense ms/step |\n", o.top_tokens);
  fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);

  for (int64_t n : contexts) {
    attention::SyntheticParams sp;
    sp.shape = shape;
    sp.context_tokens = n;
    sp.seed = o.seed;
    sp.key_rank = o.key_rank;
    attention::SyntheticWorkload w(sp);
    const int64_t total = n + o.steps;
    std::vector<float> k(static_cast<size_t>(total * hkv * d)), v(k.size());
    w.next_kv(n, k.data(), v.data());

    auto host = make_host_allocator();
    attention::SequenceKv kv(shape, attention::AttentionMode::kWave, attention::WaveIndexParams{}, *host);
    kv.append(k.data(), v.data(), n);
    const auto t_build = Clock::now();
    kv.build_index();
    const double build_s = seconds_since(t_build);

    std::vector<Row> rows(budgets.size());
    std::vector<float> q(static_cast<size_t>(hq * d)), dense(q.size()), wave(q.size());
    for (int step = 0; step < o.steps; ++step) {
      const int64_t pos = n + step;
      w.next_kv(1, k.data() + pos * hkv * d, v.data() + pos * hkv * d);
      kv.append(k.data() + pos * hkv * d, v.data() + pos * hkv * d, 1);
      w.next_query(q.data());
      auto t0 = Clock::now();
      for (int r = 0; r < o.reps; ++r) kv.attend_decode_dense(q.data(), dense.data());
      const double dense_ms = seconds_since(t0) * 1e3 / o.reps;
      if (step == 0) {
        // Untimed first wave step: thread-local workspaces and pool threads warm up.
        kv.attend_decode(q.data(), wave.data());
      }
      std::vector<std::vector<int64_t>> top(static_cast<size_t>(hq));
      for (int h = 0; h < hq; ++h) top[static_cast<size_t>(h)] = top_positions(q.data() + h * d, k, pos + 1, shape, h, o.top_tokens);
      double dnorm = 0.0;
      for (float x : dense) dnorm += static_cast<double>(x) * x;

      for (size_t b = 0; b < budgets.size(); ++b) {
        kv.set_budgets(budgets[b].retrieval, budgets[b].estimation);
        kv.set_record_zones(false);
        t0 = Clock::now();
        for (int r = 0; r < o.reps; ++r) kv.attend_decode(q.data(), wave.data());
        const double wave_ms = seconds_since(t0) * 1e3 / o.reps;
        double err = 0.0;
        for (size_t i = 0; i < wave.size(); ++i) err += (static_cast<double>(wave[i]) - dense[i]) * (wave[i] - dense[i]);
        // Exactly attended positions of each group: steady and retrieval zones.
        kv.set_record_zones(true);
        kv.attend_decode(q.data(), wave.data());
        const attention::WaveStepStats s = kv.last_stats();
        double hits = 0.0;
        for (int g = 0; g < hkv; ++g) {
          const attention::DecodeZones& z = kv.last_zones()[static_cast<size_t>(g)];
          std::vector<char> exact(static_cast<size_t>(pos + 1), 0);
          for (int64_t p : z.steady) exact[static_cast<size_t>(p)] = 1;
          for (int64_t p : z.retrieved) exact[static_cast<size_t>(p)] = 1;
          for (int h = g * shape.group_size(); h < (g + 1) * shape.group_size(); ++h)
            for (int64_t p : top[static_cast<size_t>(h)]) hits += exact[static_cast<size_t>(p)];
        }
        Row& row = rows[b];
        row.error += std::sqrt(err / std::max(dnorm, 1e-30)) / o.steps;
        row.recall += hits / (static_cast<double>(hq) * std::min<int64_t>(o.top_tokens, pos + 1)) / o.steps;
        row.wave_ms += wave_ms / o.steps;
        row.dense_ms += dense_ms / o.steps;
        row.clusters += static_cast<double>(s.clusters) / hkv / o.steps;
        row.retrieved += static_cast<double>(s.retrieved_clusters) / hkv / o.steps;
        row.estimated += static_cast<double>(s.estimated_clusters) / hkv / o.steps;
        row.exact_tokens += static_cast<double>(s.exact_tokens()) / hkv / o.steps;
      }
    }
    for (size_t b = 0; b < budgets.size(); ++b) {
      Row& row = rows[b];
      row.context = n;
      row.budget = budgets[b];
      row.build_s = build_s;
      fmt::print("| {} | {:g} | {:g} | {:.0f} | {:.0f} | {:.0f} | {:.0f} | {:.4f} | {:.3f} | {:.2f} | {:.2f} | {:.2f} |\n",
                 context_label(n), row.budget.retrieval, row.budget.estimation, row.clusters, row.retrieved,
                 row.estimated, row.exact_tokens, row.error, row.recall, row.build_s, row.wave_ms, row.dense_ms);
      if (json) {
        nlohmann::ordered_json j = {{"bench", "attention"},
                                    {"backend", o.backend},
                                    {"heads", hq},
                                    {"kv_heads", hkv},
                                    {"head_dim", d},
                                    {"context", n},
                                    {"retrieval_budget", row.budget.retrieval},
                                    {"estimation_budget", row.budget.estimation},
                                    {"steps", o.steps},
                                    {"seed", o.seed},
                                    {"key_rank", o.key_rank},
                                    {"clusters_per_head", row.clusters},
                                    {"retrieved_per_head", row.retrieved},
                                    {"estimated_per_head", row.estimated},
                                    {"exact_tokens_per_head", row.exact_tokens},
                                    {"relative_l2_error", row.error},
                                    {"recall_top", o.top_tokens},
                                    {"recall", row.recall},
                                    {"build_s", row.build_s},
                                    {"wave_ms_per_step", row.wave_ms},
                                    {"dense_ms_per_step", row.dense_ms}};
        *json << j.dump() << "\n";
      }
    }
    std::fflush(stdout);
  }
}

// The `bench` command, created by the first caller that needs it.
CLI::App& bench_command(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    if (sub->get_name() == "bench") return *sub;
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks: print a markdown table, optionally JSON lines");
  bench->require_subcommand(1);
  return *bench;
}

}  // namespace

void register_bench_command(CLI::App& app) {
  CLI::App& bench = bench_command(app);
  auto o = std::make_shared<AttentionBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "attention", "Wave vs dense attention on the synthetic workload: output error, top-token recall, build and step time");
  cmd->add_option("--backend", o->backend, "Backend (cpu)")->capture_default_str();
  cmd->add_option("--context", o->contexts, "Context lengths, e.g. 4k,32k,128k")->capture_default_str();
  cmd->add_option("--budget", o->budgets,
                  "Budgets RETRIEVAL[:ESTIMATION] as fractions of the clusters, comma-separated (estimation >= 1: all)")
      ->capture_default_str();
  cmd->add_option("--heads,--q-heads", o->heads, "Query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("--head-dim", o->head_dim, "Head dimension")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Decode steps per context (each appends one token)")->capture_default_str();
  cmd->add_option("--reps", o->reps, "Timed repetitions of each decode step (mean reported)")->capture_default_str();
  cmd->add_option("--top", o->top_tokens, "Recall of the top-N attention-mass tokens per query head")->capture_default_str();
  cmd->add_option("--key-rank", o->key_rank, "Rank of the synthetic keys' varying part (0: isotropic)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the synthetic workload")->capture_default_str();
  cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
  cmd->callback([o] { run_attention_bench(*o); });
}

}  // namespace retro::launcher
