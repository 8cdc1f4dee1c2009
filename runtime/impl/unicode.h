#pragma once
// UTF-8 helpers and the GPT-2 byte-level alphabet shared by the tokenizer and the GGUF reader.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace retro::runtime::impl {

// Decodes the code point at s[pos] and advances pos; false (pos unchanged) on an invalid or
// truncated sequence, an overlong form, a surrogate or a value past U+10FFFF.
bool utf8_next(std::string_view s, size_t& pos, char32_t& cp);
// Offset of the first byte that does not start a valid UTF-8 sequence, or nullopt when s is valid.
std::optional<size_t> utf8_first_invalid(std::string_view s);
void utf8_append(std::string& out, char32_t cp);
// Number of bytes at the end of s that begin a multi-byte character without finishing it (0..3).
size_t utf8_incomplete_tail(std::string_view s);
// The characters of a valid UTF-8 string, each as a view into s.
std::vector<std::string_view> utf8_chars(std::string_view s);

// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100 upwards, in byte order. Each entry is UTF-8.
const std::array<std::string, 256>& byte_to_unicode();
// The byte a byte-level character stands for, or -1 when cp is not in the alphabet.
int unicode_to_byte(char32_t cp);

}  // namespace retro::runtime::impl
