#pragma once
// A compiled PCRE2 pattern in UTF + UCP mode (so \p{L}, \p{N}, \s and \w are Unicode-aware), as the
// regex pre-tokenizers of Hugging Face tokenizers expect.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace retro::runtime::impl {

class Regex {
 public:
  // Throws retro::Error (kInvalidInput) quoting the pattern and PCRE2's message when it does not compile.
  explicit Regex(const std::string& pattern);
  // Non-overlapping matches, left to right, as [begin, end) byte ranges. text must be valid UTF-8.
  // An empty match advances by one character so every pattern terminates.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::string pattern_;
  std::shared_ptr<Code> code_;
};

}  // namespace retro::runtime::impl
