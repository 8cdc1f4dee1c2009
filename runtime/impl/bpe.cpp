#include "runtime/impl/bpe.h"

#include <fmt/format.h>

#include <queue>

#include "runtime/core/error.h"
#include "runtime/impl/unicode.h"

namespace retro::runtime::impl {

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  init(merges, nullptr);
}

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, const std::vector<int32_t>& ranks,
                   BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  RETRO_ASSERT(ranks.size() == merges.size());
  init(merges, &ranks);
}

void BpeModel::init(const std::vector<std::pair<std::string, std::string>>& merges,
                    const std::vector<int32_t>* ranks) {
  for (const auto& [token, id] : vocab_) {
    RETRO_CHECK_INPUT(id >= 0, "BPE vocabulary: token '{}' has negative id {}", token, id);
  }
  merges_.reserve(merges.size());
  auto lookup = [&](const std::string& token, size_t index) {
    auto it = vocab_.find(token);
    RETRO_CHECK_INPUT(it != vocab_.end(), "BPE merge #{} ('{} {}') names '{}', which is not in the vocabulary",
                      index, merges[index].first, merges[index].second, token);
    return it->second;
  };
  for (size_t i = 0; i < merges.size(); ++i) {
    const int32_t left = lookup(merges[i].first, i);
    const int32_t right = lookup(merges[i].second, i);
    const int32_t result = lookup(merges[i].first + merges[i].second, i);
    const int32_t rank = ranks ? (*ranks)[i] : static_cast<int32_t>(i);
    merges_.try_emplace(pair_key(left, right), Merge{rank, result});
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    RETRO_CHECK_INPUT(it != vocab_.end(), "BPE unk_token '{}' is not in the vocabulary", *options_.unk_token);
    unk_id_ = it->second;
  }
  byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
    if (it != vocab_.end()) byte_ids_[static_cast<size_t>(b)] = it->second;
  }
}

std::optional<int32_t> BpeModel::merge_rank(int32_t left, int32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  if (it == merges_.end()) return std::nullopt;
  return it->second.rank;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  // Symbols form a doubly linked list so each merge is O(1); a heap keyed by (rank, position)
  // picks the lowest-rank pair, leftmost on ties, in O(log n).
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
    bool unk;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto push_symbol = [&](int32_t id, bool unk) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, index - 1, index + 1, true, unk});
  };
  for (std::string_view ch : utf8_chars(word)) {
    auto it = vocab_.find(std::string(ch));
    if (it != vocab_.end()) {
      push_symbol(it->second, false);
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes = true;
      for (char c : ch) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) push_symbol(byte_ids_[static_cast<uint8_t>(c)], false);
        continue;
      }
    }
    RETRO_CHECK_INPUT(unk_id_.has_value(),
                      "tokenizer: character '{}' (U+{:04X}) has no token and the model has no unk token", ch,
                      [&] {
                        size_t pos = 0;
                        char32_t cp = 0;
                        utf8_next(ch, pos, cp);
                        return static_cast<uint32_t>(cp);
                      }());
    if (options_.fuse_unk && !symbols.empty() && symbols.back().unk) continue;
    push_symbol(*unk_id_, true);
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const int32_t left_id = symbols[static_cast<size_t>(left)].id;
    const int32_t right_id = symbols[static_cast<size_t>(right)].id;
    auto it = merges_.find(pair_key(left_id, right_id));
    if (it != merges_.end()) heap.push(Candidate{it->second.rank, left, left_id, right_id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = symbols[static_cast<size_t>(c.left)];
    // Stale entries: the left symbol was merged away or changed, or its neighbour changed.
    if (!left.alive || left.id != c.left_id || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    if (right.id != c.right_id) continue;
    left.id = c.result;
    left.unk = false;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) out.push_back(symbols[static_cast<size_t>(i)].id);
}

}  // namespace retro::runtime::impl
