// SmolLM2-135M-Instruct, a real pretrained model shipped as a Q4_1 GGUF file (see smollm_model.h):
// the container parses, the metadata maps onto the published shape, every tensor dequantizes to
// finite values, and its byte-level BPE tokenizer merges in rank order and round-trips any text.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "runtime/gguf.h"
#include "tests/runtime/smollm_model.h"

namespace retro::runtime {
namespace {

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string why;
    const auto path = testing::smollm2_gguf_path(&why);
    if (path.empty()) {
      skip_reason_ = new std::string(why);
      return;
    }
    file_ = new std::shared_ptr<const GgufFile>(GgufFile::open(path));
  }
  static void TearDownTestSuite() {
    delete file_;
    delete skip_reason_;
    file_ = nullptr;
    skip_reason_ = nullptr;
  }
  void SetUp() override {
    if (file_ == nullptr) GTEST_SKIP() << "SmolLM2 model unavailable: " << (skip_reason_ ? *skip_reason_ : "");
  }
  static const GgufFile& file() { return **file_; }

  static std::shared_ptr<const GgufFile>* file_;
  static std::string* skip_reason_;
};
std::shared_ptr<const GgufFile>* SmolLM2::file_ = nullptr;
std::string* SmolLM2::skip_reason_ = nullptr;

TEST_F(SmolLM2, ContainerAndTensorTypes) {
  EXPECT_EQ(file().version(), 3u);
  EXPECT_EQ(file().tensors().size(), 272u);  // 30 layers x 9 + embedding + final norm
  std::map<GgufType, int> types;
  for (const auto& t : file().tensors()) ++types[t.type];
  EXPECT_EQ(types[GgufType::kQ4_1], 210);  // 7 projections per layer
  EXPECT_EQ(types[GgufType::kF32], 61);    // 2 norms per layer + the final norm
  EXPECT_EQ(types[GgufType::kQ8_0], 1);    // the (tied) embedding
  EXPECT_EQ(file().tensor("token_embd.weight").shape, (Shape{49152, 576}));
  EXPECT_EQ(file().tensor("blk.0.attn_k.weight").shape, (Shape{192, 576}));
  EXPECT_EQ(file().tensor("blk.0.ffn_down.weight").shape, (Shape{576, 1536}));
}

TEST_F(SmolLM2, ConfigMatchesThePublishedShape) {
  const ModelConfig c = gguf_model_config(file());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
}

TEST_F(SmolLM2, EveryTensorDequantizesToFiniteValues) {
  GgufWeightSource source(*file_);
  const ModelConfig c = gguf_model_config(file());
  EXPECT_TRUE(source.contains("model.embed_tokens.weight"));
  EXPECT_FALSE(source.contains("lm_head.weight"));
  for (int l = 0; l < c.num_layers; ++l) {
    for (const char* part : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                             "post_attention_layernorm"}) {
      EXPECT_TRUE(source.contains("model.layers." + std::to_string(l) + "." + part + ".weight")) << l << part;
    }
  }
  std::vector<float> buffer;
  for (const std::string& name : source.names()) {
    const WeightInfo info = source.info(name);
    buffer.assign(static_cast<size_t>(info.shape.numel()), NAN);
    source.read(name, Tensor(buffer.data(), DType::kFP32, info.shape));
    double sum_sq = 0;
    size_t bad = 0;
    for (float v : buffer) {
      if (!std::isfinite(v)) ++bad;
      sum_sq += static_cast<double>(v) * v;
    }
    EXPECT_EQ(bad, 0u) << name;
    const double rms = std::sqrt(sum_sq / static_cast<double>(buffer.size()));
    // Trained weights: neither all zero nor exploding.
    EXPECT_GT(rms, 1e-3) << name;
    EXPECT_LT(rms, 10.0) << name;
  }
}

// ---------------------------------------------------------------- tokenizer

class SmolLM2Tokenizer : public SmolLM2 {
 protected:
  void SetUp() override {
    SmolLM2::SetUp();
    if (IsSkipped()) return;
    tok_ = std::make_unique<Tokenizer>(gguf_tokenizer(file()));
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolLM2Tokenizer, SpecialIdsAndTokens) {
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(tok_->token_to_id("<|im_start|>"), 1);
  EXPECT_TRUE(tok_->is_special(2));
  // add_bos_token is false in this file: nothing is prepended.
  EXPECT_EQ(tok_->encode("hi", true), tok_->encode("hi", false));
  const auto ids = tok_->encode("<|im_start|>user\nHi<|im_end|>\n", false);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 2), ids.end());
}

TEST_F(SmolLM2Tokenizer, MergesApplyInRankOrder) {
  const auto merges = file().get("tokenizer.ggml.merges").as_strings();
  std::map<std::string, size_t> rank;
  for (size_t i = 0; i < merges.size(); ++i) rank.emplace(merges[i], i);
  const std::string G = "\xC4\xA0";  // Ġ: the byte-level character of ' '
  // " the" = Ġ t h e. "Ġ t" is the first merge of the file, "h e" comes before "Ġt h" (if that
  // exists at all), and "Ġt he" joins the two: one token.
  ASSERT_EQ(rank.at(G + " t"), 0u);
  ASSERT_LT(rank.at("h e"), rank.count(G + "t h") ? rank.at(G + "t h") : merges.size());
  ASSERT_TRUE(rank.count(G + "t he"));
  EXPECT_EQ(tok_->encode(" the", false), std::vector<int32_t>{*tok_->token_to_id(G + "the")});
  // A word that is itself in the vocabulary comes back as that single token.
  for (const std::string word : {" hello", " world", "ing", " language", " Python", "Hello"}) {
    std::string mapped;
    for (char ch : word) mapped += ch == ' ' ? G : std::string(1, ch);
    const auto id = tok_->token_to_id(mapped);
    ASSERT_TRUE(id.has_value()) << word;
    EXPECT_EQ(tok_->encode(word, false), std::vector<int32_t>{*id}) << word;
  }
  // Independent check on single pre-tokenized pieces: a naive BPE over the merge list (repeatedly
  // merge the lowest-ranked adjacent pair) gives the same tokens.
  auto naive = [&](const std::string& piece) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < piece.size();) {
      size_t n = 1;
      const auto c = static_cast<unsigned char>(piece[i]);
      if (c >= 0xF0) n = 4; else if (c >= 0xE0) n = 3; else if (c >= 0xC0) n = 2;
      parts.push_back(piece.substr(i, n));
      i += n;
    }
    while (parts.size() > 1) {
      size_t best = merges.size(), at = 0;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = rank.find(parts[i] + " " + parts[i + 1]);
        if (it != rank.end() && it->second < best) best = it->second, at = i;
      }
      if (best == merges.size()) break;
      parts[at] += parts[at + 1];
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& p : parts) ids.push_back(*tok_->token_to_id(p));
    return ids;
  };
  for (const std::string word : {" tokenization", " unbelievably", " antidisestablishmentarianism", " Retro",
                                 " Infer", "Zyzzyva", " qwertyuiop", " supercalifragilistic"}) {
    std::string mapped;
    for (char ch : word) mapped += ch == ' ' ? G : std::string(1, ch);
    EXPECT_EQ(tok_->encode(word, false), naive(mapped)) << word;
  }
  // Digits are split one by one before merging (the "smollm" pre-tokenizer).
  const auto digits = tok_->encode("2025", false);
  EXPECT_EQ(digits.size(), 4u);
}

// Ids produced by Hugging Face tokenizers 0.23.3 from this file's vocabulary and merges with
// SmolLM2's tokenizer.json pipeline (Digits(individual) + ByteLevel(use_regex) pre-tokenizer).
TEST_F(SmolLM2Tokenizer, MatchesHuggingFaceTokenizers) {
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"Hello, world!", {19556, 28, 905, 17}},
      {"tabs\tand\nnewlines\r\n\n\nmany", {100, 7366, 197, 397, 198, 2241, 5110, 201, 1116, 198, 18431}},
      {"Unicode: caf\xC3\xA9, na\xC3\xAFve, \xE4\xB8\xAD\xE6\x96\x87, "
       "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
       {3706, 15817, 42, 37366, 28, 15486, 46494, 28, 216, 28589, 29184, 28, 21985, 46879, 16464, 32547}},
      {"Emoji: \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",
       {10809, 33777, 42, 40303, 218, 10813, 235, 231, 10813, 233, 138, 15107, 225, 121, 10813, 225, 132}},
      {"Numbers 1234567890 and 3.14159, $1,000.00",
       {39006, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 284, 216, 35, 30, 33, 36, 33, 37, 41, 28, 1885, 33, 28, 32,
        32, 32, 30, 32, 32}},
      {"<|im_start|>system\nYou are helpful.<|im_end|>\n", {1, 9690, 198, 2683, 359, 5356, 30, 2, 198}},
  };
  for (const auto& [text, ids] : cases) EXPECT_EQ(tok_->encode(text, false), ids) << text;
}

TEST_F(SmolLM2Tokenizer, RoundTripsArbitraryText) {
  const std::vector<std::string> texts = {
      "Hello, world!",
      "  leading and trailing spaces   ",
      "tabs\tand\nnewlines\r\n\n\nmany",
      "Unicode: caf\xC3\xA9, na\xC3\xAFve, \xE4\xB8\xAD\xE6\x96\x87, \xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
      "Emoji: \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",
      "code: for (int i = 0; i < 10; ++i) { x[i] = i * 2; }",
      "Numbers 1234567890 and 3.14159, $1,000.00",
      "I'm we're they'll it's DON'T",
      "<|im_start|>system\nYou are helpful.<|im_end|>\n",
      "",
      " ",
      "\n",
  };
  for (const std::string& text : texts) {
    const auto ids = tok_->encode(text, false);
    EXPECT_EQ(tok_->decode(ids), text);
    // Streaming gives the same text in chunks of whole characters.
    StreamingDecoder stream(*tok_);
    std::string joined;
    for (int32_t id : ids) joined += stream.push(id);
    EXPECT_EQ(joined + stream.flush(), text);
  }
  // Random byte soup of valid UTF-8.
  std::mt19937 rng(3);
  const std::vector<std::string> alphabet = {"a", "Z", " ", "  ", "\n", "\t", "7", "'s", "\xC3\xA9", "\xE2\x82\xAC",
                                             "\xF0\x9F\x98\x80", "!", "<", "|", "\xE2\x96\x81"};
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int n = std::uniform_int_distribution<int>(0, 40)(rng);
    for (int i = 0; i < n; ++i) text += alphabet[rng() % alphabet.size()];
    EXPECT_EQ(tok_->decode(tok_->encode(text, false)), text);
  }
}

}  // namespace
}  // namespace retro::runtime
