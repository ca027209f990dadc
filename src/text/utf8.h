// UTF-8 primitives for the tokenizer: decoding one character, repairing
// invalid input the way Rust's String::from_utf8_lossy does (which is what the
// reference tokenizer applies when it decodes), and finding how much of a
// growing byte stream can already be turned into text.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace glm::text {

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Length (1-4) of the well-formed UTF-8 character starting at text[pos], with
// its code point in *code_point; 0 when the bytes there are not well-formed.
size_t decode_utf8(std::string_view text, size_t pos, char32_t* code_point);

// Length of the character at text[pos] for text already known to be valid.
inline size_t utf8_length_of_lead(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, char32_t code_point);

bool is_valid_utf8(std::string_view bytes);

// Replaces every maximal invalid subsequence with one U+FFFD, exactly as Rust's
// from_utf8_lossy (and Python's errors="replace") do.
std::string to_valid_utf8(std::string_view bytes);

// For a stream whose later bytes are not known yet: the length of the leading
// part whose lossy decoding cannot change, i.e. everything but a trailing
// sequence that is still a valid beginning of a character.
size_t settled_prefix_length(std::string_view bytes);

}  // namespace glm::text
