// Tokenizer for Jinja template source. Applies jinja2's whitespace rules as
// transformers configures them (trim_blocks, lstrip_blocks, '-' and '+'
// markers, removal of one trailing newline) so the parser only sees tokens.
#pragma once

#include <string>
#include <vector>

namespace glm::jinja {

struct Token {
  enum class Type { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };
  Type type;
  std::string text;  // data text, name, decoded string literal, number text or operator
  int line;
};

// Throws glm::Error naming the line for malformed source (unterminated tags,
// strings or comments, unbalanced brackets, unknown characters).
std::vector<Token> tokenize(const std::string& source);

}  // namespace glm::jinja
