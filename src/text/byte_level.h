// GPT-2's byte-level alphabet: every byte is shown as one printable character
// so that a BPE vocabulary of strings can cover arbitrary bytes. The ByteLevel
// pre-tokenizer maps text into this alphabet and the ByteLevel decoder maps it
// back.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace glm::text {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& instance();

  // The UTF-8 spelling of the character that stands for `byte`.
  std::string_view encode_byte(unsigned char byte) const { return encoded_[byte]; }

  // Appends the byte-level spelling of every byte of `text`.
  void encode(std::string_view text, std::string& out) const;

  // The byte a character stands for, or -1 if it is not in the alphabet.
  int decode_char(char32_t code_point) const {
    return code_point < byte_of_char_.size() ? byte_of_char_[code_point] : -1;
  }

  // What the ByteLevel decoder makes of one token: its bytes when every
  // character is in the alphabet, else the token's own UTF-8 unchanged.
  std::string decode_token(std::string_view token) const;

 private:
  ByteLevelAlphabet();

  std::array<std::string, 256> encoded_;
  // Every character of the alphabet is below U+0144.
  std::array<int16_t, 0x144> byte_of_char_{};
};

}  // namespace glm::text
