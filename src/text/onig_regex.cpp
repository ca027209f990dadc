// Oniguruma-compatible regular expressions on PCRE2 (see onig_regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/onig_regex.h"

#include <pcre2.h>

#include <cctype>

#include "core/error.h"
#include "text/utf8.h"

namespace glm::text {
namespace {

// Oniguruma's Unicode \w is Letter | Mark | Number | Connector_Punctuation;
// PCRE2's (10.42) is only Letter | Number | underscore.
constexpr std::string_view kWordItems = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
// PCRE2's \s adds U+180E and \h-style extras; Oniguruma's \s is exactly the
// White_Space property.
constexpr std::string_view kSpace = "\\p{White_Space}";
constexpr std::string_view kNotSpace = "\\P{White_Space}";

// A hostile pattern could backtrack for hours; the reference would hang, we
// fail instead.
constexpr uint32_t kMatchLimit = 20'000'000;
constexpr size_t kJitStackMax = 8u << 20;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof(buffer)) < 0) return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char*>(buffer);
}

// Oniguruma's Unicode meaning of POSIX brackets (its doc/RE), as class items;
// PCRE2's differ (e.g. its [:alpha:] is \p{L}, without letter numbers).
// Empty for brackets without a faithful translation.
std::string_view posix_class_items(const std::string& name) {
  static const std::pair<std::string_view, std::string_view> kTable[] = {
      {"alnum", "\\p{Alphabetic}\\p{Nd}"},
      {"alpha", "\\p{Alphabetic}"},
      {"ascii", "\\x{0}-\\x{7F}"},
      {"blank", "\\p{Zs}\\t"},
      {"cntrl", "\\p{Cc}\\p{Cf}\\p{Cn}\\p{Co}\\p{Cs}"},
      {"digit", "\\p{Nd}"},
      {"lower", "\\p{Lowercase}"},
      {"punct", "\\p{P}\\p{S}"},  // Oniguruma 6.9.4+ counts symbols as punctuation
      {"space", "\\p{Zs}\\p{Zl}\\p{Zp}\\t\\n\\x{B}\\f\\r\\x{85}"},
      {"upper", "\\p{Uppercase}"},
      {"word", "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"},
      {"xdigit", "0-9A-Fa-f"},
  };
  for (const auto& [key, items] : kTable)
    if (key == name) return items;
  return {};
}

bool is_hex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

// JIT matching needs a stack of its own; the default 32 KiB on the machine
// stack is too small for long runs of whitespace, and a stack cannot be shared
// between threads, so each thread gets one.
struct JitStackHolder {
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, kJitStackMax, nullptr);
  ~JitStackHolder() { pcre2_jit_stack_free(stack); }
};

pcre2_jit_stack* thread_jit_stack(void*) {
  thread_local JitStackHolder holder;
  return holder.stack;
}

// Only the whole-match offsets are read, so one pair is enough.
struct MatchDataHolder {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  ~MatchDataHolder() { pcre2_match_data_free(data); }
};

pcre2_match_data* thread_match_data() {
  thread_local MatchDataHolder holder;
  return holder.data;
}

}  // namespace

std::string translate_oniguruma_pattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  size_t class_body_start = 0;  // a ']' here is a literal, not the end of the class
  size_t pos = 0;
  auto unsupported = [&](const std::string& construct) {
    fail("tokenizer regex: ", construct, " at offset ", pos, " of pattern \"", std::string(pattern),
         "\" is not supported");
  };
  while (pos < pattern.size()) {
    const char c = pattern[pos];
    if (c == '\\') {
      if (pos + 1 >= pattern.size()) unsupported("a trailing backslash");
      const char escaped = pattern[pos + 1];
      switch (escaped) {
        case 's': out += kSpace; break;
        case 'S': out += kNotSpace; break;
        case 'w': out += in_class ? std::string(kWordItems) : "[" + std::string(kWordItems) + "]"; break;
        case 'W':
          if (in_class) unsupported("\\W inside a character class");
          out += "[^" + std::string(kWordItems) + "]";
          break;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;  // Ruby: hex digit
        case 'H':
          if (in_class) unsupported("\\H inside a character class");
          out += "[^0-9a-fA-F]";
          break;
        case 'b':
        case 'B': {
          if (in_class) {  // backspace, the same in both engines
            out += "\\b";
            break;
          }
          const std::string word = "[" + std::string(kWordItems) + "]";
          out += escaped == 'b' ? "(?:(?<=" + word + ")(?!" + word + ")|(?<!" + word + ")(?=" + word + "))"
                                : "(?:(?<=" + word + ")(?=" + word + ")|(?<!" + word + ")(?!" + word + "))";
          break;
        }
        case 'u': {
          if (pos + 6 <= pattern.size() && is_hex(pattern[pos + 2]) &&
              is_hex(pattern[pos + 3]) && is_hex(pattern[pos + 4]) && is_hex(pattern[pos + 5])) {
            out += "\\x{" + std::string(pattern.substr(pos + 2, 4)) + "}";
            pos += 6;
            continue;
          }
          unsupported("\\u without four hex digits");
          break;
        }
        default: {
          // Copy the escaped character whole, so a multi-byte one stays intact.
          const size_t length = utf8_length_of_lead(static_cast<unsigned char>(escaped));
          out += '\\';
          out += pattern.substr(pos + 1, length);
          pos += 1 + length;
          continue;
        }
      }
      pos += 2;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        if (pos + 1 < pattern.size() && pattern[pos + 1] == ':') {
          const size_t close = pattern.find(":]", pos + 2);
          if (close == std::string_view::npos) unsupported("an unterminated POSIX bracket");
          const std::string name(pattern.substr(pos + 2, close - pos - 2));
          const std::string_view items = posix_class_items(name);
          if (items.empty()) unsupported("POSIX bracket [:" + name + ":]");
          out += items;
          pos = close + 2;
          continue;
        }
        unsupported("a nested character class");
      }
      if (c == '&' && pos + 1 < pattern.size() && pattern[pos + 1] == '&') unsupported("class intersection &&");
      if (c == ']' && pos != class_body_start) in_class = false;
      out += c;
      ++pos;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      ++pos;
      if (pos < pattern.size() && pattern[pos] == '^') {
        out += '^';
        ++pos;
      }
      class_body_start = pos;
      continue;
    }
    if (c == '(' && pos + 2 < pattern.size() && pattern[pos + 1] == '?') {
      // Inline options: Ruby's (?m) is "dot matches newline", PCRE2's (?s).
      size_t end = pos + 2;
      while (end < pattern.size() && (pattern[end] == 'i' || pattern[end] == 'm' || pattern[end] == 'x' ||
                                      pattern[end] == '-'))
        ++end;
      if (end > pos + 2 && end < pattern.size() && (pattern[end] == ':' || pattern[end] == ')')) {
        out += "(?";
        for (size_t index = pos + 2; index < end; ++index) out += pattern[index] == 'm' ? 's' : pattern[index];
        pos = end;
        continue;
      }
    }
    out += c;
    ++pos;
  }
  if (in_class) fail("tokenizer regex: unterminated character class in pattern \"", std::string(pattern), "\"");
  return out;
}

struct OnigRegex::Compiled {
  pcre2_code* code = nullptr;
  pcre2_match_context* match_context = nullptr;
  ~Compiled() {
    pcre2_match_context_free(match_context);
    pcre2_code_free(code);
  }
};

OnigRegex::OnigRegex(std::string_view pattern, Syntax syntax, const std::string& what)
    : compiled_(std::make_unique<Compiled>()), what_(what) {
  GLM_CHECK(is_valid_utf8(pattern), what, ": pattern is not valid UTF-8");
  const std::string source = syntax == Syntax::kOniguruma ? translate_oniguruma_pattern(pattern) : std::string(pattern);
  // Ruby's ^ and $ always anchor at line boundaries; LITERAL allows no such option.
  const uint32_t options =
      syntax == Syntax::kLiteral ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE);
  pcre2_compile_context* compile_context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(compile_context, PCRE2_NEWLINE_LF);  // Oniguruma's only line terminator
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options, &error_code,
                                  &error_offset, compile_context);
  pcre2_compile_context_free(compile_context);
  if (compiled_->code == nullptr)
    fail(what, ": cannot compile regex \"", std::string(pattern), "\": ", pcre2_message(error_code), " at offset ",
         error_offset);
  // Without JIT matching is still correct, only slower, so a JIT failure
  // (e.g. no executable memory) is not an error.
  pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE);
  compiled_->match_context = pcre2_match_context_create(nullptr);
  pcre2_set_match_limit(compiled_->match_context, kMatchLimit);
  pcre2_jit_stack_assign(compiled_->match_context, thread_jit_stack, nullptr);
}

OnigRegex::~OnigRegex() = default;

bool OnigRegex::search(std::string_view text, size_t start, bool anchored, MatchSpan* match) const {
  pcre2_match_data* match_data = thread_match_data();
  // The input was made valid UTF-8 once, up front; re-checking per call would
  // make matching quadratic.
  const uint32_t options = PCRE2_NO_UTF_CHECK | (anchored ? PCRE2_ANCHORED : 0);
  const int rc = pcre2_match(compiled_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, options,
                             match_data, compiled_->match_context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  // rc == 0 only says the one-pair ovector could not hold the groups.
  if (rc < 0) fail(what_, ": regex matching failed: ", pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
  match->start = ovector[0];
  match->end = ovector[1];
  return true;
}

void OnigRegex::find_all(std::string_view text, std::vector<MatchSpan>& matches) const {
  size_t search_from = 0;
  bool have_previous = false;
  size_t previous_end = 0;
  while (search_from <= text.size()) {
    MatchSpan match{};
    if (!search(text, search_from, false, &match)) break;
    // A \K inside a lookahead could report start > end; nothing sensible follows.
    if (match.end < match.start) fail(what_, ": regex reported a match that ends before it starts");
    if (match.start == match.end && have_previous && previous_end == match.end) {
      search_from += search_from < text.size() ? utf8_length_of_lead(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    matches.push_back(match);
    search_from = match.end;
    previous_end = match.end;
    have_previous = true;
  }
}

bool OnigRegex::matches_at(std::string_view text, size_t pos) const {
  MatchSpan match{};
  return search(text, pos, true, &match);
}

}  // namespace glm::text
