// Regular expressions with the semantics of the reference tokenizer's regex
// engine (Oniguruma, Ruby syntax, UTF-8), run by PCRE2 with UTF, UCP and JIT.
// Patterns come from tokenizer.json files, which were written for Oniguruma,
// so the few constructs whose meaning differs between the two engines are
// rewritten before compiling (see translate_oniguruma_pattern).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace glm::text {

// Rewrites an Oniguruma (Ruby syntax) pattern into a PCRE2 pattern that
// matches the same strings for Unicode text. Throws glm::Error naming any
// construct that has no faithful translation.
std::string translate_oniguruma_pattern(std::string_view pattern);

struct MatchSpan {
  size_t start;
  size_t end;
};

class OnigRegex {
 public:
  enum class Syntax {
    kOniguruma,  // a tokenizer.json "Regex" pattern
    kLiteral,    // a tokenizer.json "String" pattern: matched as plain text
    kPcre2,      // a pattern of our own, already in PCRE2 syntax
  };

  // `what` names the pattern's origin for error messages.
  OnigRegex(std::string_view pattern, Syntax syntax, const std::string& what);
  ~OnigRegex();
  OnigRegex(const OnigRegex&) = delete;
  OnigRegex& operator=(const OnigRegex&) = delete;

  // Appends all matches in `text` (valid UTF-8), in the order and with the
  // empty-match rule of the onig crate's find_iter: an empty match where the
  // previous match ended is skipped by advancing one character.
  void find_all(std::string_view text, std::vector<MatchSpan>& matches) const;

  // Whether a match starts exactly at `pos`.
  bool matches_at(std::string_view text, size_t pos) const;

 private:
  // Returns false when there is no match at or after `start`.
  bool search(std::string_view text, size_t start, bool anchored, MatchSpan* match) const;

  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
  std::string what_;
};

}  // namespace glm::text
