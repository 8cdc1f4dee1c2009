// A real pretrained model end to end on the CPU: SmolLM2-135M-Instruct (Q4_1 GGUF, fetched at test
// time). Greedy generation answers a simple question coherently and reproducibly; perplexity on real
// English text (the GPL v3) is sane with dense attention; wave attention's perplexity and next-token
// KL divergence against dense are measured at 2K, 4K and 8K tokens of context.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/core/allocator.h"
#include "runtime/model.h"
#include "runtime/open_model.h"
#include "runtime/open_tokenizer.h"
#include "runtime/perplexity.h"
#include "runtime/sampler.h"
#include "smollm_model.h"

namespace retro::runtime {
namespace {

class SmolLM2Forward : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    path_ = testing::smollm2_gguf_path(&why);
    if (path_.empty()) GTEST_SKIP() << why;
    host_ = make_host_allocator();
    ModelConfig config;
    auto weights = open_model(path_.string(), &config);
    model_ = std::make_unique<Model>(config, *weights, *host_);
    tokenizer_ = open_tokenizer(path_.string());
    ASSERT_TRUE(tokenizer_.has_value());
  }

  std::vector<int32_t> greedy(const std::string& prompt, int n) {
    std::vector<int32_t> ids = tokenizer_->encode(prompt);
    auto seq = model_->new_sequence(attention::AttentionMode::kDense);
    std::vector<float> logits(static_cast<size_t>(model_->config().vocab_size));
    model_->prefill(*seq, ids, logits.data());
    std::vector<int32_t> out;
    std::vector<int32_t> eos = tokenizer_->eos_ids();
    for (int i = 0; i < n; ++i) {
      out.push_back(argmax(logits));
      if (std::find(eos.begin(), eos.end(), out.back()) != eos.end()) break;
      model_->decode(*seq, out.back(), logits.data());
    }
    return out;
  }

  std::filesystem::path path_;
  std::unique_ptr<Allocator> host_;
  std::unique_ptr<Model> model_;
  std::optional<Tokenizer> tokenizer_;
};

TEST_F(SmolLM2Forward, GreedyAnswerIsCoherentEnglishAndReproducible) {
  const std::string prompt =
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
      "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
  std::vector<int32_t> a = greedy(prompt, 24);
  std::string text = tokenizer_->decode(a, /*skip_special_tokens=*/true);
  std::cout << "SmolLM2 greedy answer: " << text << std::endl;
  RecordProperty("answer", text);
  EXPECT_NE(text.find("Paris"), std::string::npos) << text;
  EXPECT_EQ(greedy(prompt, 24), a) << "greedy decoding must be deterministic";
}

// CI runs the 2K context (a few minutes of CPU at 8K go to `retroinfer bench perplexity`, whose
// numbers are in docs/BENCHMARKS.md).
TEST_F(SmolLM2Forward, PerplexityOnRealTextIsSaneAndWaveStaysCloseToDense) {
  const std::filesystem::path text_path = "/usr/share/common-licenses/GPL-3";
  if (!std::filesystem::exists(text_path)) GTEST_SKIP() << text_path << " not found";
  std::ifstream f(text_path);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<int32_t> ids = tokenizer_->encode(text);
  ASSERT_GE(ids.size(), 7000u) << "the GPL v3 should give about 7.6K tokens";

  const std::vector<int64_t> contexts = {2048};
  PerplexityReport r = measure_perplexity(*model_, ids, contexts, /*scored=*/64, attention::WaveIndexParams{});
  std::cout << fmt::format("SmolLM2 dense perplexity on the first {} tokens of the GPL v3: {:.3f}\n", r.tokens,
                           r.dense_ppl);
  RecordProperty("dense_ppl", fmt::format("{:.3f}", r.dense_ppl));
  EXPECT_GT(r.dense_ppl, 1.5);
  EXPECT_LT(r.dense_ppl, 40.0) << "a pretrained model predicts legal English far better than chance";
  for (const WaveGap& g : r.wave) {
    std::cout << fmt::format(
        "SmolLM2 at {} tokens of context, last {} tokens: perplexity dense {:.3f}, wave {:.3f} ({:+.2f}%), "
        "mean KL(dense || wave) {:.4f} nats\n",
        g.context, g.scored, g.dense_ppl, g.wave_ppl, 100.0 * (g.wave_ppl / g.dense_ppl - 1.0), g.mean_kl);
    RecordProperty(fmt::format("wave_ppl_{}", g.context), fmt::format("{:.3f}", g.wave_ppl));
    EXPECT_LT(g.wave_ppl, g.dense_ppl * 1.10) << "at " << g.context << " tokens";
    EXPECT_LT(g.mean_kl, 0.10) << "at " << g.context << " tokens";
  }
}

}  // namespace
}  // namespace retro::runtime
