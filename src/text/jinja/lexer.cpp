// Jinja tokenizer, a transcription of jinja2/lexer.py's behaviour: text
// between tags, '{{ }}' / '{% %}' tags lexed into expression tokens, comments
// dropped, raw blocks kept verbatim, whitespace control applied here.
#include "text/jinja/lexer.h"

#include <cstring>

#include "core/error.h"
#include "text/jinja/value.h"

namespace glm::jinja {
namespace {

bool is_space_at(const std::string& s, size_t i, size_t* len) {
  // One Python whitespace character (str.isspace) at byte i, its byte length in *len.
  unsigned char c = s[i];
  if (c < 0x80) {
    *len = 1;
    return is_py_space(c);
  }
  std::u32string cp = utf8_decode(std::string_view(s).substr(i, std::min<size_t>(4, s.size() - i)));
  if (cp.empty() || !is_py_space(cp[0])) return false;
  *len = utf8_encode(std::u32string(1, cp[0])).size();
  return true;
}

// Python's str.rstrip() on s.
std::string rstrip_ws(const std::string& s) {
  std::u32string cps = utf8_decode(s);
  size_t n = cps.size();
  while (n > 0 && is_py_space(cps[n - 1])) --n;
  return utf8_encode(std::u32string_view(cps).substr(0, n));
}

size_t skip_ws(const std::string& s, size_t pos) {
  size_t len;
  while (pos < s.size() && is_space_at(s, pos, &len)) pos += len;
  return pos;
}

// Decodes a string literal body as Python's "unicode-escape" codec does.
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex = [&](int n) {
      if (i + n >= body.size() + 1) fail("jinja: line ", line, ": truncated \\x/\\u escape in string literal");
      char32_t v = 0;
      for (int k = 1; k <= n; ++k) {
        if (i + k >= body.size()) fail("jinja: line ", line, ": truncated escape in string literal");
        char h = body[i + k];
        int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) fail("jinja: line ", line, ": invalid escape in string literal");
        v = v * 16 + d;
      }
      i += n;
      if (v > 0x10FFFF) fail("jinja: line ", line, ": escape out of range in string literal");
      out += utf8_encode(std::u32string(1, v));
    };
    switch (e) {
      case '\n': break;  // backslash-newline continues the line
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default:
        if (e >= '0' && e <= '7') {
          int v = e - '0';
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
            v = v * 8 + (body[++i] - '0');
          out += utf8_encode(std::u32string(1, static_cast<char32_t>(v)));
        } else {
          out += '\\';  // unknown escapes stay as written
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& raw) {
    // Newlines are normalised to \n and one trailing newline dropped, as jinja2 does.
    src_.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\r') {
        src_ += '\n';
        if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      } else {
        src_ += raw[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, (tag == std::string::npos ? src_.size() : tag) - pos_);
      if (tag == std::string::npos) {
        emit_data(text);
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces between the line start and a block or comment tag.
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && skip_ws(text, l_pos) == text.size())
          text.resize(l_pos);
      }
      emit_data(text);
      line_ += count_newlines(pos_, tag);
      pos_ = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      size_t end_pos;
      if (kind == '#') {
        end_pos = lex_comment();
      } else if (kind == '%' && try_raw(&end_pos)) {
        // handled inside try_raw
      } else {
        end_pos = lex_tag(kind);
      }
      line_starting = end_pos > 0 && src_[end_pos - 1] == '\n';
    }
    tokens_.push_back({Token::Type::End, "", line_});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  int count_newlines(size_t from, size_t to) const {
    int n = 0;
    for (size_t i = from; i < to && i < src_.size(); ++i) n += src_[i] == '\n';
    return n;
  }

  void emit_data(const std::string& text) {
    if (!text.empty()) tokens_.push_back({Token::Type::Data, text, line_});
  }

  // After a block or comment end: trim_blocks removes one newline; '-' removes
  // all whitespace; '+' keeps everything. Returns the position after the end.
  size_t after_end(size_t p, char sign, bool block) {
    if (sign == '-') return skip_ws(src_, p);
    if (sign != '+' && block && p < src_.size() && src_[p] == '\n') return p + 1;
    return p;
  }

  size_t lex_comment() {
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail("jinja: line ", line_, ": missing end of comment tag");
    char sign = end > pos_ ? src_[end - 1] : 0;
    size_t p = after_end(end + 2, sign, true);
    line_ += count_newlines(pos_, p);
    pos_ = p;
    return p;
  }

  bool try_raw(size_t* end_pos) {
    size_t p = skip_ws(src_, pos_);
    if (src_.compare(p, 3, "raw") != 0) return false;
    size_t q = skip_ws(src_, p + 3);
    char sign = 0;
    if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
    if (src_.compare(q, 2, "%}") != 0) return false;
    size_t body = after_end(q + 2, sign, true);
    // Find {% endraw %}.
    for (size_t s = src_.find("{%", body); s != std::string::npos; s = src_.find("{%", s + 1)) {
      size_t r = s + 2;
      char lsign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) lsign = src_[r++];
      r = skip_ws(src_, r);
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r = skip_ws(src_, r + 6);
      char rsign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) rsign = src_[r++];
      if (src_.compare(r, 2, "%}") != 0) continue;
      std::string text = src_.substr(body, s - body);
      if (lsign == '-') {
        text = rstrip_ws(text);
      } else if (lsign != '+') {
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 && l_pos < text.size() && skip_ws(text, l_pos) == text.size()) text.resize(l_pos);
      }
      emit_data(text);
      size_t p2 = after_end(r + 2, rsign, true);
      line_ += count_newlines(pos_, p2);
      pos_ = p2;
      *end_pos = p2;
      return true;
    }
    fail("jinja: line ", line_, ": missing end of raw directive");
  }

  // Lexes the expression tokens of a '{{' or '{%' tag up to its end marker.
  size_t lex_tag(char kind) {
    tokens_.push_back({kind == '{' ? Token::Type::VarBegin : Token::Type::BlockBegin, "", line_});
    const char* close = kind == '{' ? "}}" : "%}";
    int depth = 0;
    int start_line = line_;
    while (true) {
      // Skip whitespace, counting lines.
      size_t len;
      while (pos_ < src_.size() && is_space_at(src_, pos_, &len)) {
        line_ += src_[pos_] == '\n';
        pos_ += len;
      }
      if (pos_ >= src_.size())
        fail("jinja: line ", start_line, ": unexpected end of template, expected '", close, "'");
      char c = src_[pos_];
      if (depth == 0) {
        char sign = 0;
        size_t p = pos_;
        if ((c == '-' || c == '+') && src_.compare(p + 1, 2, close) == 0) sign = c, ++p;
        if (src_.compare(p, 2, close) == 0 && !(kind == '{' && sign == '+')) {
          tokens_.push_back({kind == '{' ? Token::Type::VarEnd : Token::Type::BlockEnd, "", line_});
          size_t q = kind == '{' ? (sign == '-' ? skip_ws(src_, p + 2) : p + 2) : after_end(p + 2, sign, true);
          line_ += count_newlines(pos_, q);
          pos_ = q;
          return q;
        }
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t s = pos_;
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
        tokens_.push_back({Token::Type::Name, src_.substr(s, pos_ - s), line_});
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        size_t s = ++pos_;
        int l = line_;
        while (pos_ < src_.size() && src_[pos_] != c) {
          if (src_[pos_] == '\\') ++pos_;
          if (pos_ < src_.size() && src_[pos_] == '\n') ++line_;
          ++pos_;
        }
        if (pos_ >= src_.size()) fail("jinja: line ", l, ": unterminated string literal");
        tokens_.push_back({Token::Type::String, unescape(src_.substr(s, pos_ - s), l), l});
        ++pos_;
      } else {
        static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                     "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
        const char* found = nullptr;
        for (const char* op : kOps)
          if (src_.compare(pos_, std::strlen(op), op) == 0) { found = op; break; }
        if (!found) fail("jinja: line ", line_, ": unexpected character '", std::string(1, c), "'");
        std::string op = found;
        if (op == "(" || op == "[" || op == "{") ++depth;
        if (op == ")" || op == "]" || op == "}") {
          if (depth == 0) fail("jinja: line ", line_, ": unexpected '", op, "'");
          --depth;
        }
        tokens_.push_back({Token::Type::Op, op, line_});
        pos_ += op.size();
      }
    }
  }

  void lex_number() {
    size_t s = pos_;
    auto digits = [&] {
      while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) ||
                                    (src_[pos_] == '_' && pos_ + 1 < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1])))))
        ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        is_float = true;
        pos_ = p;
        digits();
      }
    }
    std::string text;
    for (size_t i = s; i < pos_; ++i)
      if (src_[i] != '_') text += src_[i];
    tokens_.push_back({is_float ? Token::Type::Float : Token::Type::Int, text, line_});
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) { return Lexer(source).run(); }

}  // namespace glm::jinja
