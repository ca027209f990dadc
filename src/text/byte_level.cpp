// GPT-2 byte <-> character table (see byte_level.h).
#include "text/byte_level.h"

#include "text/utf8.h"

namespace glm::text {

const ByteLevelAlphabet& ByteLevelAlphabet::instance() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  // Printable Latin-1 bytes stand for themselves; the rest are shifted to
  // U+0100 onwards in byte order, as in openai/gpt-2's bytes_to_unicode.
  auto printable = [](int byte) {
    return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
  };
  byte_of_char_.fill(-1);
  char32_t next_shifted = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    const char32_t code_point = printable(byte) ? static_cast<char32_t>(byte) : next_shifted++;
    append_utf8(encoded_[byte], code_point);
    byte_of_char_[code_point] = static_cast<int16_t>(byte);
  }
}

void ByteLevelAlphabet::encode(std::string_view text, std::string& out) const {
  for (const char byte : text) out.append(encoded_[static_cast<unsigned char>(byte)]);
}

std::string ByteLevelAlphabet::decode_token(std::string_view token) const {
  std::string bytes;
  bytes.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    char32_t code_point = 0;
    const size_t length = decode_utf8(token, pos, &code_point);
    const int byte = length == 0 ? -1 : decode_char(code_point);
    if (byte < 0) return std::string(token);
    bytes.push_back(static_cast<char>(byte));
    pos += length;
  }
  return bytes;
}

}  // namespace glm::text
