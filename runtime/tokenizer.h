#pragma once
// Tokenizer: the BPE tokenizers of Hugging Face `tokenizer.json` files (byte-level BPE of GPT-2 /
// Llama-3 / Qwen2 / SmolLM, SentencePiece-style BPE of Llama-2 / Mistral, character vocabularies),
// and of GGUF tokenizer arrays (see gguf.h), which are translated into the same description.
//
// encode runs the Hugging Face pipeline: added tokens are cut out of the raw text first (never
// split, never normalized), the rest is normalized, pre-tokenized into words, each word is split
// into characters and merged in merge-rank order, and the post-processor template adds the special
// tokens (BOS) when add_special_tokens is set. decode runs the decoder chain, so
// decode(encode(x, false)) == x for every valid UTF-8 x the vocabulary covers.
//
// Strings are UTF-8 bytes. decode returns the raw bytes the tokens stand for; a sequence that ends
// in the middle of a multi-byte character (byte-level or byte-fallback tokens) returns the partial
// bytes, which StreamingDecoder holds back until the character is complete.

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace retro::runtime {

namespace impl {
struct TokenizerState;
}

class Tokenizer {
 public:
  // Reads tokenizer.json. When a tokenizer_config.json sits beside it, its bos_token / eos_token
  // name the BOS and EOS tokens. Malformed files throw retro::Error (kInvalidInput) naming the
  // problem; components this reader does not implement throw kUnsupported naming the type.
  static Tokenizer from_file(const std::filesystem::path& path);
  static Tokenizer from_json(const nlohmann::json& tokenizer_json);

  // Throws retro::Error (kInvalidArgument) when text is not valid UTF-8, and (kInvalidInput) when
  // a character has no token and the model has neither an unk token nor byte fallback.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside [0, vocab_size) throw retro::Error (kInvalidArgument).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The bytes one token contributes in the middle of a sequence (no leading-space stripping);
  // possibly a partial UTF-8 character. Use StreamingDecoder to print tokens as they come.
  std::string decode_token(int32_t id) const;

  int vocab_size() const;  // one past the largest id of the model vocabulary and added tokens
  std::optional<int32_t> bos_id() const;
  std::vector<int32_t> eos_ids() const;
  std::optional<int32_t> unk_id() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;  // an added token marked special (<s>, <|im_end|>, ...)

  void set_bos_id(std::optional<int32_t> id);
  void set_eos_ids(std::vector<int32_t> ids);

 private:
  explicit Tokenizer(std::shared_ptr<impl::TokenizerState> state);
  std::shared_ptr<impl::TokenizerState> state_;
};

// Turns a stream of token ids into text chunks that always end on a whole UTF-8 character, and
// that concatenate to decode(all ids). Decoders that look at neighbouring tokens (the leading
// space a SentencePiece decoder strips) are honoured by decoding each new token together with the
// tokens before it and emitting the difference.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  // The text completed by this token; empty while a character is still incomplete.
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete character at the end of the stream), raw.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // the token before the last character boundary, then newer ones
  std::string context_text_;  // decode of ids_[0] alone: text already emitted
  size_t emitted_ = 0;        // bytes after context_text_ already emitted
};

}  // namespace retro::runtime
