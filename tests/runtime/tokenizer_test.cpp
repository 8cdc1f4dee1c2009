// Tokenizer against the needle model's reference ids, hand-built tokenizer.json files whose
// expected tokens follow from their merge ranks, and malformed files.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/tokenizer.h"

namespace retro::runtime {
namespace {

using nlohmann::json;

const std::filesystem::path kNeedleDir = "../shared/models/needle-llama-tiny";

Tokenizer needle_tokenizer() { return Tokenizer::from_file(kNeedleDir / "tokenizer.json"); }

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

std::string decode_all(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip = false) {
  return t.decode(ids, skip);
}

using retro::test_support::error_of;

// ---------------------------------------------------------------- needle-llama-tiny

TEST(NeedleTokenizer, ReproducesReferenceTokenIds) {
  const Tokenizer tok = needle_tokenizer();
  const json reference = read_json(kNeedleDir / "reference.json");
  ASSERT_EQ(reference.size(), 3u);
  for (const json& r : reference) {
    const auto expected = r["token_ids"].get<std::vector<int32_t>>();
    const auto ids = tok.encode(r["prompt"].get<std::string>(), /*add_special_tokens=*/true);
    EXPECT_EQ(ids, expected) << r["name"];
    EXPECT_EQ(static_cast<int>(ids.size()), r["context_length"].get<int>()) << r["name"];
  }
}

TEST(NeedleTokenizer, DecodesReferenceContinuations) {
  const Tokenizer tok = needle_tokenizer();
  for (const json& r : read_json(kNeedleDir / "reference.json")) {
    const auto ids = r["greedy_continuation_ids"].get<std::vector<int32_t>>();
    const std::string text = r["greedy_continuation_text"].get<std::string>();
    EXPECT_EQ(tok.decode(ids), text);
    const size_t eos = text.find("</s>");
    ASSERT_NE(eos, std::string::npos);
    EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), text.substr(0, eos) + text.substr(eos + 4));
  }
}

TEST(NeedleTokenizer, RoundTripsPromptsAndSpecialIds) {
  const Tokenizer tok = needle_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 100);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(tok.unk_id(), 99);
  EXPECT_EQ(tok.token_to_id("<pad>"), 0);
  EXPECT_EQ(tok.id_to_token(98), "\n");
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_FALSE(tok.is_special(3));
  for (const json& r : read_json(kNeedleDir / "reference.json")) {
    const std::string prompt = r["prompt"].get<std::string>();
    EXPECT_EQ(decode_all(tok, tok.encode(prompt, false)), prompt);
    EXPECT_EQ(decode_all(tok, tok.encode(prompt, true), true), prompt);
    EXPECT_EQ(decode_all(tok, tok.encode(prompt, true)), "<s>" + prompt);
  }
  // One token per character: id = code - 29 for printable ASCII.
  EXPECT_EQ(tok.encode("Az~ \n", false), (std::vector<int32_t>{'A' - 29, 'z' - 29, '~' - 29, 3, 98}));
}

TEST(NeedleTokenizer, SpecialTokensInTextAreNotSplit) {
  const Tokenizer tok = needle_tokenizer();
  EXPECT_EQ(tok.encode("<s>ab</s>", false), (std::vector<int32_t>{1, 'a' - 29, 'b' - 29, 2}));
  EXPECT_EQ(tok.encode("x<pad>", true), (std::vector<int32_t>{1, 'x' - 29, 0}));
  // A lone '<' is an ordinary character.
  EXPECT_EQ(tok.encode("<t", false), (std::vector<int32_t>{'<' - 29, 't' - 29}));
}

TEST(NeedleTokenizer, UnknownCharactersBecomeUnk) {
  const Tokenizer tok = needle_tokenizer();
  EXPECT_EQ(tok.encode("a\xC3\xA9" "b\t", false), (std::vector<int32_t>{'a' - 29, 99, 'b' - 29, 99}));
}

TEST(NeedleTokenizer, RejectsInvalidUtf8AndIdsOutsideTheVocabulary) {
  const Tokenizer tok = needle_tokenizer();
  EXPECT_NE(error_of([&] { tok.encode("ab\xC3", false); }, ErrorKind::kInvalidArgument).find("UTF-8 at byte 2"),
            std::string::npos);
  const std::vector<int32_t> bad{5, 100};
  EXPECT_NE(error_of([&] { tok.decode(bad); }, ErrorKind::kInvalidArgument).find("100"), std::string::npos);
}

// ---------------------------------------------------------------- hand-built tokenizers

// A BPE tokenizer.json over the given vocabulary and merges, with no other components.
json mini_bpe(const std::vector<std::string>& vocab, const json& merges) {
  json j;
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = static_cast<int>(i);
  j["model"] = {{"type", "BPE"}, {"vocab", v}, {"merges", merges}};
  j["decoder"] = {{"type", "Fuse"}};
  return j;
}

TEST(BpeMerges, LowestRankPairMergesFirst) {
  const std::vector<std::string> vocab{"a", "b", "c", "ab", "bc", "abc"};  // ids 0..5
  // "b c" outranks "a b": a + bc, then the third merge joins them.
  EXPECT_EQ(Tokenizer::from_json(mini_bpe(vocab, {"b c", "a b", "a bc"})).encode("abc"), (std::vector<int32_t>{5}));
  // Without "a bc" the first merge blocks "a b": two tokens.
  EXPECT_EQ(Tokenizer::from_json(mini_bpe(vocab, {"b c", "a b", "ab c"})).encode("abc"), (std::vector<int32_t>{0, 4}));
  // "a b" first, then "ab c".
  EXPECT_EQ(Tokenizer::from_json(mini_bpe(vocab, {"a b", "b c", "ab c"})).encode("abc"), (std::vector<int32_t>{5}));
  // Merges may be given as pairs.
  EXPECT_EQ(Tokenizer::from_json(mini_bpe(vocab, json::array({{"a", "b"}, {"ab", "c"}}))).encode("abcab"),
            (std::vector<int32_t>{5, 3}));
}

TEST(BpeMerges, EqualPairsMergeLeftmostFirst) {
  const Tokenizer tok = Tokenizer::from_json(mini_bpe({"a", "aa"}, {"a a"}));
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(tok.encode("aaaa"), (std::vector<int32_t>{1, 1}));
}

TEST(BpeMerges, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  // "abc" is in the vocabulary but no merge sequence reaches it.
  json j = mini_bpe({"a", "b", "c", "ab", "abc"}, {"a b"});
  EXPECT_EQ(Tokenizer::from_json(j).encode("abc"), (std::vector<int32_t>{3, 2}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(Tokenizer::from_json(j).encode("abc"), (std::vector<int32_t>{4}));
}

TEST(BpeMerges, FuseUnkJoinsUnknownRuns) {
  json j = mini_bpe({"<unk>", "a"}, json::array());
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(Tokenizer::from_json(j).encode("axyza"), (std::vector<int32_t>{1, 0, 0, 0, 1}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(Tokenizer::from_json(j).encode("axyza"), (std::vector<int32_t>{1, 0, 1}));
}

TEST(PreTokenizer, SplitBehaviours) {
  // With merges "a -" and "- b", where the pieces break decides which merge can happen.
  const std::vector<std::string> vocab{"a", "b", "-", "a-", "-b"};
  auto with_split = [&](const char* behavior) {
    json j = mini_bpe(vocab, {"a -", "- b"});
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}};
    return Tokenizer::from_json(j).encode("a-b");
  };
  EXPECT_EQ(with_split("Isolated"), (std::vector<int32_t>{0, 2, 1}));
  EXPECT_EQ(with_split("Removed"), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(with_split("MergedWithPrevious"), (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(with_split("MergedWithNext"), (std::vector<int32_t>{0, 4}));
  // Of two delimiters in a row only the one touching the text joins it: "a-" "-" "b", "a" "-" "-b".
  EXPECT_EQ(with_split("MergedWithPrevious").size(), 2u);
  auto twice = [&](const char* behavior) {
    json j = mini_bpe(vocab, {"a -", "- b"});
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}};
    return Tokenizer::from_json(j).encode("a--b");
  };
  EXPECT_EQ(twice("MergedWithPrevious"), (std::vector<int32_t>{3, 2, 1}));
  EXPECT_EQ(twice("MergedWithNext"), (std::vector<int32_t>{0, 2, 4}));
  json j = mini_bpe({"a", "-", "--"}, {"- -"});
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "-"}}}, {"behavior", "Contiguous"}};
  EXPECT_EQ(Tokenizer::from_json(j).encode("a--a"), (std::vector<int32_t>{0, 2, 0}));
  j["pre_tokenizer"]["behavior"] = "Isolated";
  EXPECT_EQ(Tokenizer::from_json(j).encode("a--a"), (std::vector<int32_t>{0, 1, 1, 0}));
}

// A byte-level BPE in the shape of GPT-2 / Llama-3 tokenizer.json files: a regex Split pre-tokenizer
// from the JSON, ByteLevel without its own regex, ByteLevel decoder, all 256 byte tokens.
json mini_byte_level() {
  json vocab = json::object();
  // GPT-2's alphabet: printable Latin-1 stands for itself, the rest from U+0100 on.
  int next = 256, id = 0;
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  std::vector<std::string> alphabet(256);
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    alphabet[static_cast<size_t>(b)] = utf8(printable ? b : next++);
    vocab[alphabet[static_cast<size_t>(b)]] = id++;
  }
  const std::string G = alphabet[' '];  // "Ġ"
  for (const std::string& t : std::vector<std::string>{G + "t", "he", G + "the", "in", G + "in"}) vocab[t] = id++;
  json j;
  j["model"] = {{"type", "BPE"},
                {"vocab", vocab},
                {"merges", {G + " t", "h e", G + "t he", "i n", G + " in"}},
                {"ignore_merges", true}};
  j["added_tokens"] = json::array({{{"id", id}, {"content", "<|eot|>"}, {"special", true}}});
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["post_processor"] = {{"type", "Sequence"},
                         {"processors", {{{"type", "ByteLevel"}}}}};
  return j;
}

TEST(ByteLevelTokenizer, MergesWithinRegexPiecesAndRoundTrips) {
  const Tokenizer tok = Tokenizer::from_json(mini_byte_level());
  const int base = 256;  // Ġt, he, Ġthe, in, Ġin
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{base + 2}));
  EXPECT_EQ(tok.encode("the in"), (std::vector<int32_t>{'t', base + 1, base + 4}));  // byte b has id b
  // Digits come in groups of three; the byte tokens of 'é' are 0xC3 0xA9 in the alphabet.
  const auto ids = tok.encode("12345 caf\xC3\xA9<|eot|>");
  EXPECT_EQ(ids.back(), base + 5);
  EXPECT_EQ(tok.decode(ids), "12345 caf\xC3\xA9<|eot|>");
  EXPECT_EQ(tok.decode(ids, true), "12345 caf\xC3\xA9");
  for (const std::string text : {"Hello,  world!\n\n\tTabs\r\nand    spaces  ", "\xF0\x9F\x98\x80 emoji \xE4\xB8\xAD\xE6\x96\x87",
                                 "I'm  we'LL  x", " \n ", ""}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
}

TEST(ByteLevelTokenizer, StreamingDecoderHoldsBackPartialCharacters) {
  const Tokenizer tok = Tokenizer::from_json(mini_byte_level());
  const std::string text = "a\xF0\x9F\x98\x80 \xE4\xB8\xAD!";  // emoji and CJK split over byte tokens
  const auto ids = tok.encode(text);
  StreamingDecoder stream(tok);
  std::string joined;
  std::vector<std::string> chunks;
  for (int32_t id : ids) {
    std::string chunk = stream.push(id);
    if (!chunk.empty()) chunks.push_back(chunk);
    joined += chunk;
  }
  joined += stream.flush();
  EXPECT_EQ(joined, text);
  EXPECT_EQ(chunks, (std::vector<std::string>{"a", "\xF0\x9F\x98\x80", " ", "\xE4\xB8\xAD", "!"}));
  // A single token's bytes may be an incomplete character.
  EXPECT_EQ(tok.decode_token(ids[1]), "\xF0");
}

// SentencePiece-style BPE in the shape of the Llama-2 / Mistral tokenizer.json: normalizer prepends
// and replaces spaces with U+2581, byte fallback, and the matching decoder chain.
json mini_sentencepiece() {
  const std::string S = "\xE2\x96\x81";  // ▁
  std::vector<std::string> vocab{"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab.push_back(name);
  }
  for (const std::string& t : std::vector<std::string>{S, "h", "e", "l", "o", "w", "r", "d", S + "h", "he", "ll", "llo", S + "he", S + "hello",
                               S + "w", "or", S + "wor", S + "worl", S + "world"}) {
    vocab.push_back(t);
  }
  json j = mini_bpe(vocab, {S + " h", "h e", "l l", "ll o", S + "h e", S + "he llo", S + " w", "o r", S + "w or",
                            S + "wor l", S + "worl d"});
  j["model"]["unk_token"] = "<unk>";
  j["model"]["byte_fallback"] = true;
  j["model"]["fuse_unk"] = true;
  j["added_tokens"] = json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                   {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                   {{"id", 2}, {"content", "</s>"}, {"special", true}}});
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers",
                      {{{"type", "Prepend"}, {"prepend", S}},
                       {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", S}}}}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Replace"}, {"pattern", {{"String", S}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  return j;
}

TEST(SentencePieceTokenizer, EncodesWithByteFallbackAndRoundTrips) {
  const Tokenizer tok = Tokenizer::from_json(mini_sentencepiece());
  const auto id = [&](const std::string& t) { return *tok.token_to_id(t); };
  const std::string S = "\xE2\x96\x81";
  // "▁hello": "▁ h" (rank 0) takes the h before "h e" (1) can; then "l l" (2), "ll o" (3),
  // "▁h e" (4) and "▁he llo" (5).
  EXPECT_EQ(tok.encode("hello", false), (std::vector<int32_t>{id(S + "hello")}));
  EXPECT_EQ(tok.encode("hello world", true), (std::vector<int32_t>{1, id(S + "hello"), id(S + "world")}));
  // 'x' is not in the vocabulary: its byte token; 'é' becomes two byte tokens.
  EXPECT_EQ(tok.encode("x\xC3\xA9", false),
            (std::vector<int32_t>{id(S), id("<0x78>"), id("<0xC3>"), id("<0xA9>")}));
  for (const std::string text : {"hello world", "hello  wor\xC3\xA9ld \xF0\x9F\x98\x80!", "x"}) {
    EXPECT_EQ(tok.decode(tok.encode(text, true), true), text);
  }
  // Streaming keeps the space between words that decode() strips only at the very start.
  StreamingDecoder stream(tok, true);
  std::string joined;
  for (int32_t i : tok.encode("hello world \xF0\x9F\x98\x80", true)) joined += stream.push(i);
  EXPECT_EQ(joined + stream.flush(), "hello world \xF0\x9F\x98\x80");
  EXPECT_EQ(tok.decode_token(id(S + "world")), " world");
}

TEST(SentencePieceTokenizer, MetaspacePreTokenizerSplitsWords) {
  json j = mini_sentencepiece();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"},
                        {"split", true}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}}}}};
  const Tokenizer tok = Tokenizer::from_json(j);
  const std::string S = "\xE2\x96\x81";
  EXPECT_EQ(tok.encode("hello world", false),
            (std::vector<int32_t>{*tok.token_to_id(S + "hello"), *tok.token_to_id(S + "world")}));
  EXPECT_EQ(tok.decode(tok.encode("hello world", true), true), "hello world");
}

// ---------------------------------------------------------------- malformed files

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  const auto path = std::filesystem::temp_directory_path() / "retro_bad_tokenizer.json";
  std::ofstream(path) << "{\"model\": {\"type\": \"BPE\", ";
  EXPECT_NE(error_of([&] { Tokenizer::from_file(path); }).find("is not valid JSON"), std::string::npos);
  std::filesystem::remove(path);
  error_of([&] { Tokenizer::from_file("/nonexistent/tokenizer.json"); }, ErrorKind::kIo);
}

TEST(TokenizerErrors, StructuralProblemsAreNamed) {
  auto message = [](const json& j, ErrorKind kind = ErrorKind::kInvalidInput) {
    return error_of([&] { Tokenizer::from_json(j); }, kind);
  };
  EXPECT_NE(message(json::array()).find("top level must be an object"), std::string::npos);
  EXPECT_NE(message(json{{"version", "1.0"}}).find("missing 'model'"), std::string::npos);
  json j = mini_bpe({"a", "b"}, json::array());
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(message(j).find("'WordPiece' is not supported"), std::string::npos);
  j = mini_bpe({"a", "b"}, {"a c"});
  EXPECT_NE(message(j).find("names 'c', which is not in the vocabulary"), std::string::npos);
  j = mini_bpe({"a", "b"}, {"a b"});  // "ab" missing
  EXPECT_NE(message(j).find("names 'ab'"), std::string::npos);
  j = mini_bpe({"a", "b"}, {"ab"});
  EXPECT_NE(message(j).find("not two tokens"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["model"]["vocab"]["b"] = "one";
  EXPECT_NE(message(j).find("id of 'b' is not an integer"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["model"]["unk_token"] = "<unk>";
  EXPECT_NE(message(j).find("unk_token '<unk>' is not in the vocabulary"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j.erase("decoder");
  j["model"].erase("vocab");
  EXPECT_NE(message(j).find("missing 'vocab'"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["added_tokens"] = json::array({{{"content", "<x>"}}});
  EXPECT_NE(message(j).find("non-negative integer 'id'"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(a"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(message(j).find("does not compile"), std::string::npos);
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  EXPECT_NE(message(j).find("unknown behavior 'Sideways'"), std::string::npos);
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_NE(message(j, ErrorKind::kUnsupported).find("'BertPreTokenizer'"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}}}}}},
                         {"special_tokens", json::object()}};
  EXPECT_NE(message(j).find("'<s>' not in special_tokens"), std::string::npos);
  j = mini_bpe({"a"}, json::array());
  j["model"]["merges"] = "a b";
  EXPECT_NE(message(j).find("'merges' must be an array"), std::string::npos);
}

TEST(TokenizerErrors, CharacterWithoutTokenNorUnkIsAnError) {
  const Tokenizer tok = Tokenizer::from_json(mini_bpe({"a"}, json::array()));
  const std::string what = error_of([&] { tok.encode("a\xC3\xA9"); });
  EXPECT_NE(what.find("U+00E9"), std::string::npos) << what;
  EXPECT_NE(what.find("no unk token"), std::string::npos) << what;
}

}  // namespace
}  // namespace retro::runtime
