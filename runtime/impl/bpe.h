#pragma once
// The BPE model of a tokenizer: a vocabulary, ranked merges, and what to do with characters the
// vocabulary lacks (unk token, byte fallback, or an error).

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace retro::runtime::impl {

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool byte_fallback = false;  // unknown characters become their <0xXX> byte tokens
  bool fuse_unk = false;       // consecutive unknown characters become one unk token
  bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
};

class BpeModel {
 public:
  // Merges are applied lowest index (rank) first. Throws retro::Error (kInvalidInput) when a merge
  // names a token the vocabulary lacks or its result is not in the vocabulary, or when unk_token is
  // not in the vocabulary. A merge listed twice keeps its first (lowest) rank.
  BpeModel(std::unordered_map<std::string, int32_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);
  // Same, with an explicit rank per merge; equal ranks merge leftmost first (SentencePiece scores).
  BpeModel(std::unordered_map<std::string, int32_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, const std::vector<int32_t>& ranks,
           BpeOptions options);

  // Appends the ids of one pre-tokenized word. Throws retro::Error (kInvalidInput) naming the
  // character when it has no token and neither unk nor byte fallback applies.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  std::optional<int32_t> unk_id() const { return unk_id_; }
  // Rank of the merge (left, right), or nullopt when the pair does not merge.
  std::optional<int32_t> merge_rank(int32_t left, int32_t right) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  void init(const std::vector<std::pair<std::string, std::string>>& merges, const std::vector<int32_t>* ranks);

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // id of <0xXX>, -1 when missing
};

}  // namespace retro::runtime::impl
