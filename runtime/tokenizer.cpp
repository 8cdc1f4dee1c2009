#include "runtime/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <functional>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "runtime/core/error.h"
#include "runtime/impl/bpe.h"
#include "runtime/impl/regex.h"
#include "runtime/impl/unicode.h"

namespace retro::runtime {

using nlohmann::json;

namespace impl {
namespace {

// A pre-tokenized piece of text; at_start is true while it begins the whole input, which is what
// Metaspace's prepend_scheme "first" looks at.
struct Piece {
  std::string text;
  bool at_start;
};

struct NormalizerStep {
  virtual ~NormalizerStep() = default;
  virtual void apply(std::string& text) const = 0;
};

struct PreTokenizerStep {
  virtual ~PreTokenizerStep() = default;
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// Decoders see the token strings of a whole sequence; mid_stream asks for the bytes one token
// contributes inside a sequence, so steps that only touch the start of the text are skipped.
struct DecoderStep {
  virtual ~DecoderStep() = default;
  virtual void apply(std::vector<std::string>& tokens, bool mid_stream) const = 0;
};

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

// A Hugging Face "pattern" object: {"String": "..."} (literal) or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  std::optional<Regex> regex;

  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const {
    if (regex) return regex->find_all(text);
    std::vector<std::pair<size_t, size_t>> matches;
    if (literal.empty()) return matches;
    for (size_t pos = text.find(literal); pos != std::string_view::npos; pos = text.find(literal, pos + literal.size())) {
      matches.emplace_back(pos, pos + literal.size());
    }
    return matches;
  }
  std::string replace(std::string_view text, std::string_view content) const {
    if (!regex) return replace_all(text, literal, content);
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : regex->find_all(text)) {
      out.append(text.substr(pos, b - pos));
      out.append(content);
      pos = e;
    }
    out.append(text.substr(pos));
    return out;
  }
};

std::string where_prefix(const std::string& where) { return "tokenizer.json " + where; }

const json& require(const json& object, const char* key, const std::string& where) {
  RETRO_CHECK_INPUT(object.is_object(), "{}: expected an object, found {}", where_prefix(where), object.type_name());
  auto it = object.find(key);
  RETRO_CHECK_INPUT(it != object.end(), "{}: missing '{}'", where_prefix(where), key);
  return *it;
}

std::string require_string(const json& object, const char* key, const std::string& where) {
  const json& v = require(object, key, where);
  RETRO_CHECK_INPUT(v.is_string(), "{}: '{}' must be a string, found {}", where_prefix(where), key, v.type_name());
  return v.get<std::string>();
}

template <typename T>
T value_or(const json& object, const char* key, T fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  return it->get<T>();
}

Pattern parse_pattern(const json& j, const std::string& where) {
  RETRO_CHECK_INPUT(j.is_object(), "{}: pattern must be an object", where_prefix(where));
  Pattern p;
  if (auto it = j.find("String"); it != j.end()) {
    p.literal = it->get<std::string>();
  } else if (auto it2 = j.find("Regex"); it2 != j.end()) {
    p.regex.emplace(it2->get<std::string>());
  } else {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: pattern needs 'String' or 'Regex'", where_prefix(where));
  }
  return p;
}

// ---------------------------------------------------------------- normalizers

struct ReplaceNormalizer final : NormalizerStep {
  Pattern pattern;
  std::string content;
  void apply(std::string& text) const override { text = pattern.replace(text, content); }
};

struct PrependNormalizer final : NormalizerStep {
  std::string prepend;
  void apply(std::string& text) const override {
    if (!text.empty()) text.insert(0, prepend);
  }
};

struct StripNormalizer final : NormalizerStep {
  bool left = true;
  bool right = true;
  void apply(std::string& text) const override {
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    size_t b = 0, e = text.size();
    if (left) while (b < e && space(text[b])) ++b;
    if (right) while (e > b && space(text[e - 1])) --e;
    text = text.substr(b, e - b);
  }
};

void parse_normalizer(const json& j, std::vector<std::shared_ptr<const NormalizerStep>>& out) {
  if (j.is_null()) return;
  const std::string type = require_string(j, "type", "normalizer");
  if (type == "Sequence") {
    for (const json& n : require(j, "normalizers", "normalizer Sequence")) parse_normalizer(n, out);
  } else if (type == "Replace") {
    auto r = std::make_shared<ReplaceNormalizer>();
    r->pattern = parse_pattern(require(j, "pattern", "normalizer Replace"), "normalizer Replace");
    r->content = require_string(j, "content", "normalizer Replace");
    out.push_back(std::move(r));
  } else if (type == "Prepend") {
    auto p = std::make_shared<PrependNormalizer>();
    p->prepend = require_string(j, "prepend", "normalizer Prepend");
    out.push_back(std::move(p));
  } else if (type == "Strip") {
    auto s = std::make_shared<StripNormalizer>();
    s->left = value_or(j, "strip_left", true);
    s->right = value_or(j, "strip_right", true);
    out.push_back(std::move(s));
  } else if (type == "NFC") {
    // Unicode normalization is not implemented: text is taken to be NFC already, which holds for
    // almost all text (composed characters are what keyboards and most sources produce).
  } else {
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "tokenizer.json normalizer: type '{}' is not supported", type);
  }
}

// ---------------------------------------------------------------- pre-tokenizers

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  RETRO_THROW_KIND(ErrorKind::kInvalidInput, "tokenizer.json pre_tokenizer Split: unknown behavior '{}'", name);
}

// Splits each piece at the matches of a pattern, keeping or merging the matches as behavior says.
void split_pieces(std::vector<Piece>& pieces, const Pattern& pattern, SplitBehavior behavior, bool invert) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (Piece& piece : pieces) {
    const std::string_view text = piece.text;
    struct Span {
      size_t begin, end;
      bool delimiter;
    };
    std::vector<Span> spans;
    size_t pos = 0;
    for (auto [b, e] : pattern.find_all(text)) {
      if (b > pos) spans.push_back({pos, b, invert});
      spans.push_back({b, e, !invert});
      pos = e;
    }
    if (pos < text.size()) spans.push_back({pos, text.size(), invert});

    std::vector<std::pair<size_t, size_t>> ranges;
    bool pending_next = false;  // MergedWithNext: the last range still waits for its text
    for (const Span& s : spans) {
      switch (behavior) {
        case SplitBehavior::kRemoved:
          if (!s.delimiter) ranges.emplace_back(s.begin, s.end);
          break;
        case SplitBehavior::kIsolated:
          ranges.emplace_back(s.begin, s.end);
          break;
        case SplitBehavior::kMergedWithPrevious:
          if (s.delimiter && !ranges.empty() && ranges.back().second == s.begin && !pending_next) {
            ranges.back().second = s.end;
            pending_next = true;  // a delimiter closes the piece it joined
          } else {
            ranges.emplace_back(s.begin, s.end);
            pending_next = s.delimiter;
          }
          break;
        case SplitBehavior::kMergedWithNext:
          break;  // handled below, right to left
        case SplitBehavior::kContiguous:
          if (s.delimiter && pending_next) {
            ranges.back().second = s.end;
          } else {
            ranges.emplace_back(s.begin, s.end);
          }
          pending_next = s.delimiter;
          break;
      }
    }
    if (behavior == SplitBehavior::kMergedWithNext) {
      // Mirror of kMergedWithPrevious: a delimiter joins the span after it unless that is a delimiter too.
      bool next_is_delimiter = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->delimiter && !next_is_delimiter && !ranges.empty()) {
          ranges.back().first = it->begin;
        } else {
          ranges.emplace_back(it->begin, it->end);
        }
        next_is_delimiter = it->delimiter;
      }
      std::reverse(ranges.begin(), ranges.end());
    }
    for (auto [b, e] : ranges) {
      if (e > b) out.push_back(Piece{std::string(text.substr(b, e - b)), piece.at_start && b == 0});
    }
  }
  pieces = std::move(out);
}

struct SplitPreTokenizer final : PreTokenizerStep {
  Pattern pattern;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  void apply(std::vector<Piece>& pieces) const override { split_pieces(pieces, pattern, behavior, invert); }
};

// The split built into ByteLevel(use_regex=true): GPT-2's pattern, as Hugging Face tokenizers has it.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPreTokenizer final : PreTokenizerStep {
  bool add_prefix_space = false;
  std::optional<Pattern> split;  // GPT-2 pattern when use_regex
  void apply(std::vector<Piece>& pieces) const override {
    if (add_prefix_space) {
      for (Piece& p : pieces) {
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(p.text.begin(), ' ');
      }
    }
    if (split) split_pieces(pieces, *split, SplitBehavior::kIsolated, false);
    const auto& map = byte_to_unicode();
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (char c : p.text) mapped += map[static_cast<uint8_t>(c)];
      p.text = std::move(mapped);
    }
  }
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct MetaspacePreTokenizer final : PreTokenizerStep {
  std::string replacement = "\xE2\x96\x81";  // U+2581
  PrependScheme prepend = PrependScheme::kAlways;
  bool split = true;
  void apply(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      p.text = replace_all(p.text, " ", replacement);
      const bool wants = prepend == PrependScheme::kAlways || (prepend == PrependScheme::kFirst && p.at_start);
      if (wants && p.text.compare(0, replacement.size(), replacement) != 0) p.text.insert(0, replacement);
    }
    if (split) {
      Pattern delimiter;
      delimiter.literal = replacement;
      split_pieces(pieces, delimiter, SplitBehavior::kMergedWithNext, false);
    }
  }
};

void parse_pre_tokenizer(const json& j, std::vector<std::shared_ptr<const PreTokenizerStep>>& out) {
  if (j.is_null()) return;
  const std::string type = require_string(j, "type", "pre_tokenizer");
  if (type == "Sequence") {
    for (const json& p : require(j, "pretokenizers", "pre_tokenizer Sequence")) parse_pre_tokenizer(p, out);
  } else if (type == "Split") {
    auto s = std::make_shared<SplitPreTokenizer>();
    s->pattern = parse_pattern(require(j, "pattern", "pre_tokenizer Split"), "pre_tokenizer Split");
    s->behavior = parse_behavior(require_string(j, "behavior", "pre_tokenizer Split"));
    s->invert = value_or(j, "invert", false);
    out.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    auto b = std::make_shared<ByteLevelPreTokenizer>();
    b->add_prefix_space = value_or(j, "add_prefix_space", false);
    if (value_or(j, "use_regex", true)) b->split = Pattern{"", Regex(kGpt2Pattern)};
    out.push_back(std::move(b));
  } else if (type == "Digits") {
    auto s = std::make_shared<SplitPreTokenizer>();
    s->pattern = Pattern{"", Regex(R"(\p{N})")};
    s->behavior = value_or(j, "individual_digits", false) ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
    out.push_back(std::move(s));
  } else if (type == "Whitespace") {
    auto s = std::make_shared<SplitPreTokenizer>();
    s->pattern = Pattern{"", Regex(R"(\w+|[^\w\s]+)")};
    s->behavior = SplitBehavior::kRemoved;
    s->invert = true;
    out.push_back(std::move(s));
  } else if (type == "WhitespaceSplit") {
    auto s = std::make_shared<SplitPreTokenizer>();
    s->pattern = Pattern{"", Regex(R"(\s+)")};
    s->behavior = SplitBehavior::kRemoved;
    out.push_back(std::move(s));
  } else if (type == "Metaspace") {
    auto m = std::make_shared<MetaspacePreTokenizer>();
    m->replacement = value_or<std::string>(j, "replacement", m->replacement);
    m->split = value_or(j, "split", true);
    if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null()) {
      const std::string scheme = it->get<std::string>();
      if (scheme == "always") m->prepend = PrependScheme::kAlways;
      else if (scheme == "first") m->prepend = PrependScheme::kFirst;
      else if (scheme == "never") m->prepend = PrependScheme::kNever;
      else RETRO_THROW_KIND(ErrorKind::kInvalidInput, "tokenizer.json Metaspace: unknown prepend_scheme '{}'", scheme);
    } else {
      m->prepend = value_or(j, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
    }
    out.push_back(std::move(m));
  } else {
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "tokenizer.json pre_tokenizer: type '{}' is not supported", type);
  }
}

// ---------------------------------------------------------------- decoders

struct FuseDecoder final : DecoderStep {
  void apply(std::vector<std::string>& tokens, bool) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

struct ByteLevelDecoder final : DecoderStep {
  void apply(std::vector<std::string>& tokens, bool) const override {
    std::string all;
    for (const auto& t : tokens) {
      // A token outside the byte alphabet (an added token such as " <mask>") stands for itself.
      std::string bytes;
      size_t pos = 0;
      char32_t cp;
      bool mapped = true;
      while (pos < t.size()) {
        const size_t start = pos;
        int b = -1;
        if (utf8_next(t, pos, cp)) b = unicode_to_byte(cp);
        if (b < 0) {
          mapped = false;
          pos = start;
          break;
        }
        bytes += static_cast<char>(b);
      }
      all += mapped ? bytes : t;
    }
    tokens.assign(1, std::move(all));
  }
};

struct ReplaceDecoder final : DecoderStep {
  Pattern pattern;
  std::string content;
  void apply(std::vector<std::string>& tokens, bool) const override {
    for (auto& t : tokens) t = pattern.replace(t, content);
  }
};

// <0xXX> tokens become their raw bytes; a run that is not valid UTF-8 stays raw (Hugging Face
// would print U+FFFD), so streaming can join the bytes of one character split over tokens.
struct ByteFallbackDecoder final : DecoderStep {
  void apply(std::vector<std::string>& tokens, bool) const override {
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<uint8_t>(t[3])) &&
          std::isxdigit(static_cast<uint8_t>(t[4]))) {
        t = std::string(1, static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
      }
    }
  }
};

struct StripDecoder final : DecoderStep {
  std::string content;
  int start = 0;
  int stop = 0;
  void apply(std::vector<std::string>& tokens, bool mid_stream) const override {
    if (mid_stream || content.empty()) return;
    for (auto& t : tokens) {
      size_t b = 0, e = t.size();
      for (int i = 0; i < start && t.compare(b, content.size(), content) == 0 && b < e; ++i) b += content.size();
      for (int i = 0; i < stop && e >= b + content.size() && t.compare(e - content.size(), content.size(), content) == 0;
           ++i) {
        e -= content.size();
      }
      t = t.substr(b, e - b);
    }
  }
};

struct MetaspaceDecoder final : DecoderStep {
  std::string replacement = "\xE2\x96\x81";
  bool strip_first = true;
  void apply(std::vector<std::string>& tokens, bool mid_stream) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = replace_all(tokens[i], replacement, " ");
      if (i == 0 && strip_first && !mid_stream && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
    }
  }
};

void parse_decoder(const json& j, std::vector<std::shared_ptr<const DecoderStep>>& out) {
  if (j.is_null()) return;
  const std::string type = require_string(j, "type", "decoder");
  if (type == "Sequence") {
    for (const json& d : require(j, "decoders", "decoder Sequence")) parse_decoder(d, out);
  } else if (type == "Fuse") {
    out.push_back(std::make_shared<FuseDecoder>());
  } else if (type == "ByteLevel") {
    out.push_back(std::make_shared<ByteLevelDecoder>());
  } else if (type == "Replace") {
    auto r = std::make_shared<ReplaceDecoder>();
    r->pattern = parse_pattern(require(j, "pattern", "decoder Replace"), "decoder Replace");
    r->content = require_string(j, "content", "decoder Replace");
    out.push_back(std::move(r));
  } else if (type == "ByteFallback") {
    out.push_back(std::make_shared<ByteFallbackDecoder>());
  } else if (type == "Strip") {
    auto s = std::make_shared<StripDecoder>();
    s->content = require_string(j, "content", "decoder Strip");
    s->start = value_or(j, "start", 0);
    s->stop = value_or(j, "stop", 0);
    out.push_back(std::move(s));
  } else if (type == "Metaspace") {
    auto m = std::make_shared<MetaspaceDecoder>();
    m->replacement = value_or<std::string>(j, "replacement", m->replacement);
    if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null()) {
      m->strip_first = it->get<std::string>() != "never";
    } else {
      m->strip_first = value_or(j, "add_prefix_space", true);
    }
    out.push_back(std::move(m));
  } else {
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "tokenizer.json decoder: type '{}' is not supported", type);
  }
}

}  // namespace

struct AddedToken {
  int32_t id;
  std::string content;
  bool special;
  bool lstrip;
  bool rstrip;
  bool single_word;
};

// One item of a TemplateProcessing "single" template: fixed ids, or the encoded text.
struct TemplateItem {
  bool sequence;
  std::vector<int32_t> ids;
};

struct TokenizerState {
  std::shared_ptr<const BpeModel> model;
  std::vector<std::shared_ptr<const NormalizerStep>> normalizers;
  std::vector<std::shared_ptr<const PreTokenizerStep>> pre_tokenizers;
  std::vector<std::shared_ptr<const DecoderStep>> decoders;
  std::optional<std::vector<TemplateItem>> template_single;
  std::vector<AddedToken> added;
  std::array<std::vector<size_t>, 256> added_by_first_byte;  // longest content first
  std::vector<std::string> tokens;                            // by id
  std::vector<uint8_t> has_token;
  std::vector<uint8_t> special;
  std::unordered_map<std::string, int32_t> added_ids;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
};

}  // namespace impl

namespace {

using impl::TokenizerState;

bool is_space_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_byte(char c) {
  const auto u = static_cast<uint8_t>(c);
  return std::isalnum(u) || c == '_' || u >= 0x80;
}

struct Segment {
  size_t begin, end;
  int32_t added_id;  // -1: ordinary text
};

// Cuts the added tokens out of the text, longest match first at each position.
std::vector<Segment> split_added_tokens(const TokenizerState& s, std::string_view text) {
  std::vector<Segment> segments;
  size_t text_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& candidates = s.added_by_first_byte[static_cast<uint8_t>(text[pos])];
    const impl::AddedToken* hit = nullptr;
    for (size_t index : candidates) {
      const impl::AddedToken& t = s.added[index];
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t end = pos + t.content.size();
        if ((pos > 0 && is_word_byte(text[pos - 1])) || (end < text.size() && is_word_byte(text[end]))) continue;
      }
      hit = &t;
      break;
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos;
    size_t end = pos + hit->content.size();
    if (hit->lstrip) while (begin > text_begin && is_space_byte(text[begin - 1])) --begin;
    if (hit->rstrip) while (end < text.size() && is_space_byte(text[end])) ++end;
    if (begin > text_begin) segments.push_back({text_begin, begin, -1});
    segments.push_back({begin, end, hit->id});
    text_begin = pos = end;
  }
  if (text_begin < text.size()) segments.push_back({text_begin, text.size(), -1});
  return segments;
}

std::optional<std::string> token_name(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return std::nullopt;
}

std::shared_ptr<TokenizerState> build_state(const json& root) {
  RETRO_CHECK_INPUT(root.is_object(), "tokenizer.json: top level must be an object, found {}", root.type_name());
  auto state = std::make_shared<TokenizerState>();

  // Model.
  auto model_it = root.find("model");
  RETRO_CHECK_INPUT(model_it != root.end() && model_it->is_object(), "tokenizer.json: missing 'model'");
  const json& model = *model_it;
  const std::string model_type = model.contains("type") ? model["type"].get<std::string>() : std::string("BPE");
  RETRO_CHECK_INPUT(model_type == "BPE", "tokenizer.json model: type '{}' is not supported (only BPE)", model_type);
  const json& vocab_json = impl::require(model, "vocab", "model");
  RETRO_CHECK_INPUT(vocab_json.is_object(), "tokenizer.json model: 'vocab' must be an object of token -> id");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_json.size());
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    RETRO_CHECK_INPUT(it.value().is_number_integer(), "tokenizer.json model vocab: id of '{}' is not an integer",
                      it.key());
    vocab.emplace(it.key(), it.value().get<int32_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  if (auto it = model.find("merges"); it != model.end() && !it->is_null()) {
    RETRO_CHECK_INPUT(it->is_array(), "tokenizer.json model: 'merges' must be an array");
    merges.reserve(it->size());
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      if (m.is_string()) {
        const std::string text = m.get<std::string>();
        const size_t space = text.find(' ', 1);
        RETRO_CHECK_INPUT(space != std::string::npos && space + 1 < text.size(),
                          "tokenizer.json model merge #{} '{}' is not two tokens separated by a space", i, text);
        merges.emplace_back(text.substr(0, space), text.substr(space + 1));
      } else {
        RETRO_CHECK_INPUT(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                          "tokenizer.json model merge #{} must be \"a b\" or [\"a\", \"b\"]", i);
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      }
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    RETRO_CHECK_KIND(it == model.end() || it->is_null() || it->get<std::string>().empty(), ErrorKind::kUnsupported,
                     "tokenizer.json model: '{}' is not supported", key);
  }
  impl::BpeOptions options;
  if (auto it = model.find("unk_token"); it != model.end() && !it->is_null()) options.unk_token = it->get<std::string>();
  options.byte_fallback = impl::value_or(model, "byte_fallback", false);
  options.fuse_unk = impl::value_or(model, "fuse_unk", false);
  options.ignore_merges = impl::value_or(model, "ignore_merges", false);
  // "merge_ranks" (our extension, written by the GGUF SentencePiece translation): one rank per
  // merge, equal ranks merging leftmost first, as SentencePiece scores behave.
  std::shared_ptr<impl::BpeModel> bpe;
  if (auto it = model.find("merge_ranks"); it != model.end() && !it->is_null()) {
    const auto ranks = it->get<std::vector<int32_t>>();
    RETRO_CHECK_INPUT(ranks.size() == merges.size(), "tokenizer.json model: {} merge_ranks for {} merges", ranks.size(),
                      merges.size());
    bpe = std::make_shared<impl::BpeModel>(std::move(vocab), merges, ranks, std::move(options));
  } else {
    bpe = std::make_shared<impl::BpeModel>(std::move(vocab), merges, std::move(options));
  }

  // Token table: model vocabulary, then added tokens (which may extend it).
  int32_t max_id = -1;
  for (const auto& [token, id] : bpe->vocab()) max_id = std::max(max_id, id);
  if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
    RETRO_CHECK_INPUT(it->is_array(), "tokenizer.json: 'added_tokens' must be an array");
    for (const json& t : *it) {
      impl::AddedToken a;
      RETRO_CHECK_INPUT(t.is_object() && t.contains("id") && t["id"].is_number_integer() && t["id"].get<int64_t>() >= 0,
                        "tokenizer.json added_tokens: every entry needs a non-negative integer 'id'");
      a.id = t["id"].get<int32_t>();
      a.content = impl::require_string(t, "content", "added_tokens");
      RETRO_CHECK_INPUT(!a.content.empty(), "tokenizer.json added_tokens: token {} has empty content", a.id);
      a.special = impl::value_or(t, "special", false);
      a.lstrip = impl::value_or(t, "lstrip", false);
      a.rstrip = impl::value_or(t, "rstrip", false);
      a.single_word = impl::value_or(t, "single_word", false);
      max_id = std::max(max_id, a.id);
      state->added.push_back(std::move(a));
    }
  }
  RETRO_CHECK_INPUT(max_id >= 0, "tokenizer.json: the vocabulary is empty");
  state->tokens.resize(static_cast<size_t>(max_id) + 1);
  state->has_token.assign(static_cast<size_t>(max_id) + 1, 0);
  state->special.assign(static_cast<size_t>(max_id) + 1, 0);
  for (const auto& [token, id] : bpe->vocab()) {
    state->tokens[static_cast<size_t>(id)] = token;
    state->has_token[static_cast<size_t>(id)] = 1;
  }
  for (size_t i = 0; i < state->added.size(); ++i) {
    const impl::AddedToken& a = state->added[i];
    state->tokens[static_cast<size_t>(a.id)] = a.content;
    state->has_token[static_cast<size_t>(a.id)] = 1;
    state->special[static_cast<size_t>(a.id)] = a.special ? 1 : 0;
    state->added_ids[a.content] = a.id;
    state->added_by_first_byte[static_cast<uint8_t>(a.content[0])].push_back(i);
  }
  for (auto& list : state->added_by_first_byte) {
    std::stable_sort(list.begin(), list.end(), [&](size_t x, size_t y) {
      return state->added[x].content.size() > state->added[y].content.size();
    });
  }
  state->model = std::move(bpe);

  impl::parse_normalizer(root.value("normalizer", json()), state->normalizers);
  impl::parse_pre_tokenizer(root.value("pre_tokenizer", json()), state->pre_tokenizers);
  impl::parse_decoder(root.value("decoder", json()), state->decoders);

  // Post-processor: TemplateProcessing (possibly inside a Sequence); ByteLevel only trims offsets.
  std::function<void(const json&)> parse_post = [&](const json& p) {
    if (p.is_null()) return;
    const std::string type = impl::require_string(p, "type", "post_processor");
    if (type == "Sequence") {
      for (const json& q : impl::require(p, "processors", "post_processor Sequence")) parse_post(q);
    } else if (type == "ByteLevel") {
    } else if (type == "TemplateProcessing") {
      const json& single = impl::require(p, "single", "post_processor TemplateProcessing");
      const json& specials = p.value("special_tokens", json::object());
      std::vector<impl::TemplateItem> items;
      for (const json& item : single) {
        if (item.contains("Sequence")) {
          items.push_back({true, {}});
        } else if (item.contains("SpecialToken")) {
          const std::string name = impl::require_string(item["SpecialToken"], "id", "post_processor SpecialToken");
          RETRO_CHECK_INPUT(specials.contains(name),
                            "tokenizer.json post_processor: template names special token '{}' not in special_tokens",
                            name);
          std::vector<int32_t> ids = specials[name].at("ids").get<std::vector<int32_t>>();
          for (int32_t id : ids) {
            RETRO_CHECK_INPUT(id >= 0 && id <= max_id, "tokenizer.json post_processor: special token '{}' has id {} "
                              "outside the vocabulary", name, id);
          }
          items.push_back({false, std::move(ids)});
        } else {
          RETRO_THROW_KIND(ErrorKind::kInvalidInput, "tokenizer.json post_processor: unknown template item {}",
                           item.dump());
        }
      }
      state->template_single = std::move(items);
    } else {
      RETRO_THROW_KIND(ErrorKind::kUnsupported, "tokenizer.json post_processor: type '{}' is not supported", type);
    }
  };
  parse_post(root.value("post_processor", json()));

  // BOS: the special token the template puts first; else a conventional name. EOS: conventional
  // names; tokenizer_config.json or GGUF metadata override both.
  if (state->template_single && !state->template_single->empty() && !state->template_single->front().sequence &&
      state->template_single->front().ids.size() == 1) {
    state->bos = state->template_single->front().ids[0];
  } else {
    for (const char* name : {"<s>", "<|begin_of_text|>", "<bos>"}) {
      if (auto it = state->added_ids.find(name); it != state->added_ids.end()) {
        state->bos = it->second;
        break;
      }
    }
  }
  for (const char* name : {"</s>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>", "<eos>",
                           "<end_of_turn>"}) {
    if (auto it = state->added_ids.find(name); it != state->added_ids.end()) state->eos.push_back(it->second);
  }
  return state;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<impl::TokenizerState> state) : state_(std::move(state)) {}

Tokenizer Tokenizer::from_json(const json& tokenizer_json) {
  try {
    return Tokenizer(build_state(tokenizer_json));
  } catch (const json::exception& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "malformed tokenizer.json: {}", e.what());
  }
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  auto read_json = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    RETRO_CHECK_KIND(in.good(), ErrorKind::kIo, "cannot open {}", p.string());
    try {
      return json::parse(in);
    } catch (const json::parse_error& e) {
      RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{} is not valid JSON: {}", p.string(), e.what());
    }
  };
  Tokenizer tokenizer = from_json(read_json(path));
  const auto config_path = path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const json config = read_json(config_path);
    if (auto name = token_name(config.value("bos_token", json()))) {
      if (auto id = tokenizer.token_to_id(*name)) tokenizer.set_bos_id(*id);
    }
    if (auto name = token_name(config.value("eos_token", json()))) {
      if (auto id = tokenizer.token_to_id(*name)) tokenizer.set_eos_ids({*id});
    }
  }
  return tokenizer;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerState& s = *state_;
  if (auto bad = impl::utf8_first_invalid(text)) {
    RETRO_THROW("tokenizer: text is not valid UTF-8 at byte {}", *bad);
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Segment& seg : split_added_tokens(s, text)) {
    if (seg.added_id >= 0) {
      ids.push_back(seg.added_id);
      continue;
    }
    std::string normalized(text.substr(seg.begin, seg.end - seg.begin));
    for (const auto& n : s.normalizers) n->apply(normalized);
    std::vector<impl::Piece> pieces;
    pieces.push_back(impl::Piece{std::move(normalized), seg.begin == 0});
    for (const auto& p : s.pre_tokenizers) p->apply(pieces);
    for (const impl::Piece& piece : pieces) s.model->encode_word(piece.text, ids);
  }
  if (!add_special_tokens || !s.template_single) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const impl::TemplateItem& item : *s.template_single) {
    if (item.sequence) out.insert(out.end(), ids.begin(), ids.end());
    else out.insert(out.end(), item.ids.begin(), item.ids.end());
  }
  return out;
}

namespace {
std::string run_decoders(const TokenizerState& s, std::vector<std::string> tokens, bool mid_stream) {
  if (s.decoders.empty()) {
    // Without a decoder Hugging Face joins the token strings with spaces.
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && !mid_stream) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  for (const auto& d : s.decoders) d->apply(tokens, mid_stream);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

void check_id(const TokenizerState& s, int32_t id) {
  RETRO_CHECK(id >= 0 && static_cast<size_t>(id) < s.tokens.size() && s.has_token[static_cast<size_t>(id)],
              "tokenizer: token id {} is not in the vocabulary (size {})", id, s.tokens.size());
}
}  // namespace

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerState& s = *state_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    check_id(s, id);
    if (skip_special_tokens && s.special[static_cast<size_t>(id)]) continue;
    tokens.push_back(s.tokens[static_cast<size_t>(id)]);
  }
  return run_decoders(s, std::move(tokens), false);
}

std::string Tokenizer::decode_token(int32_t id) const {
  check_id(*state_, id);
  return run_decoders(*state_, {state_->tokens[static_cast<size_t>(id)]}, true);
}

int Tokenizer::vocab_size() const { return static_cast<int>(state_->tokens.size()); }
std::optional<int32_t> Tokenizer::bos_id() const { return state_->bos; }
std::vector<int32_t> Tokenizer::eos_ids() const { return state_->eos; }
std::optional<int32_t> Tokenizer::unk_id() const { return state_->model->unk_id(); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  if (auto it = state_->added_ids.find(key); it != state_->added_ids.end()) return it->second;
  if (auto it = state_->model->vocab().find(key); it != state_->model->vocab().end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= state_->tokens.size() || !state_->has_token[static_cast<size_t>(id)]) {
    return std::nullopt;
  }
  return state_->tokens[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < state_->special.size() && state_->special[static_cast<size_t>(id)];
}

void Tokenizer::set_bos_id(std::optional<int32_t> id) {
  if (id) check_id(*state_, *id);
  auto copy = std::make_shared<TokenizerState>(*state_);  // copies of this Tokenizer keep their ids
  copy->bos = id;
  state_ = std::move(copy);
}

void Tokenizer::set_eos_ids(std::vector<int32_t> ids) {
  for (int32_t id : ids) check_id(*state_, id);
  auto copy = std::make_shared<TokenizerState>(*state_);
  copy->eos = std::move(ids);
  state_ = std::move(copy);
}

// ---------------------------------------------------------------- streaming

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamingDecoder::push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_->decode(ids_, skip_special_);
  // context_text_ is the decode of the context tokens; what follows it is this window's text.
  const size_t base = std::min(context_text_.size(), text.size());
  const std::string_view fresh = std::string_view(text).substr(base);
  const size_t tail = impl::utf8_incomplete_tail(fresh);
  const size_t complete = fresh.size() - tail;
  std::string out;
  if (complete > emitted_) out = std::string(fresh.substr(emitted_, complete - emitted_));
  emitted_ = std::max(emitted_, complete);
  if (tail == 0) {
    // A clean character boundary: keep only this token as context for the next one.
    ids_.assign(1, id);
    context_text_ = tokenizer_->decode(ids_, skip_special_);
    emitted_ = 0;
  }
  return out;
}

std::string StreamingDecoder::flush() {
  if (ids_.empty()) return {};
  const std::string text = tokenizer_->decode(ids_, skip_special_);
  const size_t base = std::min(context_text_.size(), text.size()) + emitted_;
  std::string out = base < text.size() ? text.substr(base) : std::string();
  ids_.clear();
  context_text_.clear();
  emitted_ = 0;
  return out;
}

}  // namespace retro::runtime
