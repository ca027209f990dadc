// Added-token loading and matching (see added_vocabulary.h).
#include "text/added_vocabulary.h"

#include <algorithm>

#include "core/error.h"
#include "io/json_util.h"
#include "text/onig_regex.h"
#include "text/utf8.h"

namespace glm::text {
namespace {

// The reference tests single_word and strips whitespace with Rust's regex
// crate, whose Unicode \w and \s differ from Oniguruma's.
const OnigRegex& rust_word_char() {
  static const OnigRegex regex("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", OnigRegex::Syntax::kPcre2,
                               "added-token word test");
  return regex;
}

const OnigRegex& rust_space_char() {
  static const OnigRegex regex("\\p{White_Space}", OnigRegex::Syntax::kPcre2, "added-token space test");
  return regex;
}

size_t previous_char_start(std::string_view text, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

bool ends_with_word(std::string_view text) {
  return !text.empty() && rust_word_char().matches_at(text, previous_char_start(text, text.size()));
}

bool starts_with_word(std::string_view text) { return !text.empty() && rust_word_char().matches_at(text, 0); }

// Start of the whitespace run that ends `text` (text.size() when none).
size_t trailing_space_start(std::string_view text) {
  size_t start = text.size();
  while (start > 0) {
    const size_t previous = previous_char_start(text, start);
    if (!rust_space_char().matches_at(text, previous)) break;
    start = previous;
  }
  return start;
}

// Length of the whitespace run that starts `text`.
size_t leading_space_length(std::string_view text) {
  size_t end = 0;
  while (end < text.size() && rust_space_char().matches_at(text, end))
    end += utf8_length_of_lead(static_cast<unsigned char>(text[end]));
  return std::min(end, text.size());
}

bool flag(const nlohmann::json& entry, const char* key, bool fallback) {
  const auto found = entry.find(key);
  if (found == entry.end() || found->is_null()) return fallback;
  GLM_CHECK(found->is_boolean(), "tokenizer.json: added token flag \"", key, "\" must be a boolean, got ",
            json_excerpt(*found));
  return found->get<bool>();
}

AddedToken parse_added_token(const nlohmann::json& entry) {
  GLM_CHECK(entry.is_object(), "tokenizer.json: added_tokens entries must be objects, got ", json_excerpt(entry));
  const auto content = entry.find("content");
  GLM_CHECK(content != entry.end() && content->is_string(), "tokenizer.json: added token without a string \"content\": ",
            json_excerpt(entry));
  AddedToken token;
  token.content = content->get<std::string>();
  token.single_word = flag(entry, "single_word", false);
  token.lstrip = flag(entry, "lstrip", false);
  token.rstrip = flag(entry, "rstrip", false);
  token.normalized = flag(entry, "normalized", true);
  token.special = flag(entry, "special", false);
  return token;
}

}  // namespace

void AddedVocabulary::Matcher::add(std::string_view pattern, int32_t id) {
  // An empty pattern would match everywhere (and crashes the reference).
  if (pattern.empty()) return;
  uint32_t node = 0;
  for (const char c : pattern) {
    const auto byte = static_cast<unsigned char>(c);
    const auto found = nodes_[node].children.find(byte);
    if (found != nodes_[node].children.end()) {
      node = found->second;
      continue;
    }
    const auto child = static_cast<uint32_t>(nodes_.size());
    nodes_[node].children.emplace(byte, child);
    nodes_.emplace_back();
    node = child;
  }
  // With duplicate patterns the first one added is the one reported.
  if (nodes_[node].id < 0) nodes_[node].id = id;
  first_bytes_[static_cast<unsigned char>(pattern.front())] = true;
}

std::pair<size_t, int32_t> AddedVocabulary::Matcher::longest_at(std::string_view text, size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  uint32_t node = 0;
  for (size_t index = pos; index < text.size(); ++index) {
    const auto found = nodes_[node].children.find(static_cast<unsigned char>(text[index]));
    if (found == nodes_[node].children.end()) break;
    node = found->second;
    if (nodes_[node].id >= 0) best = {index + 1 - pos, nodes_[node].id};
  }
  return best;
}

AddedVocabulary::AddedVocabulary(const nlohmann::json& config, const BpeModel& model, const Normalizer& normalizer) {
  if (config.is_null()) return;
  GLM_CHECK(config.is_array(), "tokenizer.json: \"added_tokens\" must be an array, got ", json_excerpt(config));
  std::vector<AddedToken> tokens;
  tokens.reserve(config.size());
  for (const auto& entry : config) tokens.push_back(parse_added_token(entry));

  // The ids written in the file are not used: the reference re-adds the list
  // in one call, giving each token its vocabulary id if it has one, else the
  // next id after the model's vocabulary.
  std::vector<AddedToken> special_tokens;
  for (const AddedToken& token : tokens) {
    if (token.special && !token.content.empty() && special_contents_.insert(token.content).second)
      special_tokens.push_back(token);
  }
  auto next_id = static_cast<int64_t>(model.entry_count());
  std::unordered_map<std::string, std::vector<AddedToken>> existing;
  std::vector<AddedToken> classic_tokens;
  for (const AddedToken& token : tokens) {
    if (token.content.empty()) continue;
    auto& same_content = existing[token.content];
    if (std::find(same_content.begin(), same_content.end(), token) != same_content.end()) continue;
    int32_t id = 0;
    if (const auto known = id_by_content_.find(token.content); known != id_by_content_.end()) {
      id = known->second;
    } else if (const auto in_model = model.token_id(token.content)) {
      id = *in_model;
    } else {
      GLM_CHECK(next_id <= INT32_MAX, "tokenizer.json: too many added tokens");
      id = static_cast<int32_t>(next_id++);
    }
    id_by_content_[token.content] = id;
    tokens_by_id_[id] = token;
    if (special_contents_.count(token.content) == 0) classic_tokens.push_back(token);
    same_content.push_back(token);
  }

  for (const auto* group : {&special_tokens, &classic_tokens}) {
    for (const AddedToken& token : *group) {
      const int32_t id = id_by_content_.at(token.content);
      if (token.normalized) {
        normalized_matcher_.add(normalizer.normalize(token.content), id);
      } else {
        raw_matcher_.add(token.content, id);
      }
    }
  }
}

std::optional<int32_t> AddedVocabulary::token_id(std::string_view content) const {
  const auto found = id_by_content_.find(std::string(content));
  if (found == id_by_content_.end()) return std::nullopt;
  return found->second;
}

const AddedToken* AddedVocabulary::token(int32_t id) const {
  const auto found = tokens_by_id_.find(id);
  return found == tokens_by_id_.end() ? nullptr : &found->second;
}

std::vector<AddedVocabulary::Found> AddedVocabulary::find_matches(std::string_view text,
                                                                  const Matcher& matcher) const {
  std::vector<Found> found;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!matcher.may_start_with(static_cast<unsigned char>(text[pos]))) {
      ++pos;
      continue;
    }
    const auto [length, id] = matcher.longest_at(text, pos);
    if (length == 0) {
      ++pos;
      continue;
    }
    found.push_back(Found{pos, pos + length, id});
    pos += length;  // matches never overlap; scanning resumes after this one
  }
  return found;
}

void AddedVocabulary::split_into(std::string_view text, const Matcher& matcher, std::vector<TextSplit>& out) const {
  auto push_text = [&](size_t start, size_t end) { out.push_back(TextSplit{std::string(text.substr(start, end - start)), -1}); };
  size_t consumed = 0;
  for (Found match : find_matches(text, matcher)) {
    const AddedToken& token = tokens_by_id_.at(match.id);
    if (token.single_word) {
      const bool space_before = match.start == 0 || !ends_with_word(text.substr(0, match.start));
      const bool space_after = match.end == text.size() || !starts_with_word(text.substr(match.end));
      if (!space_before || !space_after) continue;
    }
    // A previous token's rstrip may already have taken these spaces.
    if (token.lstrip) match.start = std::max(trailing_space_start(text.substr(0, match.start)), consumed);
    if (token.rstrip) match.end += leading_space_length(text.substr(match.end));
    if (consumed < match.start) push_text(consumed, match.start);
    out.push_back(TextSplit{std::string(), match.id});
    consumed = match.end;
  }
  if (consumed < text.size()) push_text(consumed, text.size());
}

std::vector<TextSplit> AddedVocabulary::split_and_normalize(std::string_view text, const Normalizer& normalizer) const {
  std::vector<TextSplit> raw_splits;
  if (raw_matcher_.empty()) {
    if (!text.empty()) raw_splits.push_back(TextSplit{std::string(text), -1});
  } else {
    split_into(text, raw_matcher_, raw_splits);
  }
  if (normalizer.is_identity() && normalized_matcher_.empty()) return raw_splits;
  std::vector<TextSplit> splits;
  splits.reserve(raw_splits.size());
  for (TextSplit& split : raw_splits) {
    if (split.token_id >= 0) {
      splits.push_back(std::move(split));
      continue;
    }
    const std::string normalized = normalizer.normalize(split.text);
    if (normalized_matcher_.empty()) {
      if (!normalized.empty()) splits.push_back(TextSplit{normalized, -1});
    } else {
      split_into(normalized, normalized_matcher_, splits);
    }
  }
  return splits;
}

}  // namespace glm::text
