// `retroinfer generate`: load a model (directory, GGUF file or preset), run a prompt with dense or
// wave attention on the CPU backend, stream the tokens to stdout.

#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

#include "attention/kv_store.h"
#include "launcher/commands.h"
#include "launcher/model_options.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/open_model.h"
#include "runtime/open_tokenizer.h"

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
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  RETRO_CHECK_KIND(f.good(), ErrorKind::kIo, "cannot open prompt file '{}'", path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void run_generate(const GenerateOptions& o) {
  std::string prompt = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file);
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
    std::string piece = stream ? stream->push(id) : fmt::format("[{}]", id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  runtime::GenerationResult r = runtime::generate(*m.model, *seq, req, on_token);
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

}  // namespace

void register_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt with dense or wave attention (CPU backend)");
  add_model_options(*cmd, o->model);
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
  cmd->callback([o, p, pf] {
    RETRO_CHECK(p->count() + pf->count() == 1, "generate needs --prompt or --prompt-file");
    run_generate(*o);
  });
}

}  // namespace retro::launcher
