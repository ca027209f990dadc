// Pre-tokenizer stage: Split, ByteLevel and Sequence (see pre_tokenizer.h).
#include "text/pre_tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "io/json_util.h"
#include "text/byte_level.h"

namespace glm::text {
namespace {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const nlohmann::json& value) {
  GLM_CHECK(value.is_string(), "tokenizer.json: Split \"behavior\" must be a string, got ", json_excerpt(value));
  const std::string name = value.get<std::string>();
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("tokenizer.json: Split behavior \"", name, "\" is not supported");
}

struct Segment {
  size_t start;
  size_t end;
  bool is_match;
};

// The pattern's view of `text`: matches and the gaps between them, covering it
// contiguously.
std::vector<Segment> segments_of(const OnigRegex& regex, std::string_view text, bool invert) {
  std::vector<MatchSpan> matches;
  regex.find_all(text, matches);
  std::vector<Segment> segments;
  segments.reserve(matches.size() * 2 + 1);
  size_t previous = 0;
  for (const MatchSpan& match : matches) {
    if (previous != match.start) segments.push_back({previous, match.start, invert});
    segments.push_back({match.start, match.end, !invert});
    previous = match.end;
  }
  if (previous != text.size()) segments.push_back({previous, text.size(), invert});
  return segments;
}

// Mirrors NormalizedString::split of the reference: which segments survive and
// which are glued to their neighbours.
void emit_by_behavior(std::string_view text, const std::vector<Segment>& segments, SplitBehavior behavior,
                      PieceSink emit) {
  auto emit_range = [&](size_t start, size_t end) {
    if (end > start) emit(text.substr(start, end - start));
  };
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& segment : segments) emit_range(segment.start, segment.end);
      return;
    case SplitBehavior::kRemoved:
      for (const Segment& segment : segments)
        if (!segment.is_match) emit_range(segment.start, segment.end);
      return;
    default: break;
  }
  std::vector<Segment> merged;
  bool previous_match = false;
  if (behavior == SplitBehavior::kMergedWithNext) {
    for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
      if (it->is_match && !previous_match && !merged.empty()) {
        merged.back().start = it->start;
      } else {
        merged.push_back(*it);
      }
      previous_match = it->is_match;
    }
    std::reverse(merged.begin(), merged.end());
  } else {
    for (const Segment& segment : segments) {
      const bool glue = behavior == SplitBehavior::kContiguous ? segment.is_match == previous_match
                                                               : segment.is_match && !previous_match;
      if (glue && !merged.empty()) {
        merged.back().end = segment.end;
      } else {
        merged.push_back(segment);
      }
      previous_match = segment.is_match;
    }
  }
  for (const Segment& segment : merged) emit_range(segment.start, segment.end);
}

class SplitStep final : public PreTokenizerStep {
 public:
  SplitStep(std::string_view pattern, OnigRegex::Syntax syntax, SplitBehavior behavior, bool invert)
      : regex_(pattern, syntax, "tokenizer.json: Split pre-tokenizer"), behavior_(behavior), invert_(invert) {}

  void split(std::string_view piece, PieceSink emit) const override {
    emit_by_behavior(piece, segments_of(regex_, piece, invert_), behavior_, emit);
  }

 private:
  OnigRegex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelStep final : public PreTokenizerStep {
 public:
  ByteLevelStep(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}

  void split(std::string_view piece, PieceSink emit) const override {
    std::string prefixed;
    if (add_prefix_space_ && (piece.empty() || piece.front() != ' ')) {
      prefixed.reserve(piece.size() + 1);
      prefixed += ' ';
      prefixed += piece;
      piece = prefixed;
    }
    std::string mapped;
    auto emit_mapped = [&](std::string_view part) {
      if (part.empty()) return;
      mapped.clear();
      ByteLevelAlphabet::instance().encode(part, mapped);
      emit(mapped);
    };
    if (!use_regex_) {
      emit_mapped(piece);
      return;
    }
    for (const Segment& segment : segments_of(gpt2_regex(), piece, false))
      emit_mapped(piece.substr(segment.start, segment.end - segment.start));
  }

 private:
  // The GPT-2 split the reference hard-codes for use_regex.
  static const OnigRegex& gpt2_regex() {
    static const OnigRegex regex(
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
        OnigRegex::Syntax::kOniguruma, "ByteLevel pre-tokenizer");
    return regex;
  }

  bool add_prefix_space_;
  bool use_regex_;
};

bool optional_bool(const nlohmann::json& config, const char* key, bool fallback, const std::string& where) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return fallback;
  GLM_CHECK(found->is_boolean(), "tokenizer.json: ", where, " \"", key, "\" must be a boolean, got ",
            json_excerpt(*found));
  return found->get<bool>();
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& config) {
  PreTokenizer pre_tokenizer;
  if (!config.is_null()) pre_tokenizer.add_steps(config);
  return pre_tokenizer;
}

void PreTokenizer::add_steps(const nlohmann::json& config) {
  GLM_CHECK(config.is_object() && config.contains("type") && config["type"].is_string(),
            "tokenizer.json: pre_tokenizer must be an object with a \"type\", got ", json_excerpt(config));
  const std::string type = config["type"].get<std::string>();
  if (type == "Sequence") {
    const auto found = config.find("pretokenizers");
    GLM_CHECK(found != config.end() && found->is_array(),
              "tokenizer.json: pre_tokenizer Sequence needs a \"pretokenizers\" array");
    for (const auto& child : *found) add_steps(child);
  } else if (type == "Split") {
    const auto pattern = config.find("pattern");
    GLM_CHECK(pattern != config.end() && pattern->is_object() && pattern->size() == 1,
              "tokenizer.json: Split needs a \"pattern\" object {\"Regex\": ...} or {\"String\": ...}");
    const std::string& kind = pattern->begin().key();
    const nlohmann::json& value = pattern->begin().value();
    GLM_CHECK(value.is_string(), "tokenizer.json: Split pattern must be a string, got ", json_excerpt(value));
    OnigRegex::Syntax syntax = OnigRegex::Syntax::kOniguruma;
    if (kind == "String") {
      syntax = OnigRegex::Syntax::kLiteral;
    } else if (kind != "Regex") {
      fail("tokenizer.json: Split pattern kind \"", kind, "\" is not supported (supported: Regex, String)");
    }
    const auto behavior = config.find("behavior");
    GLM_CHECK(behavior != config.end(), "tokenizer.json: Split needs a \"behavior\"");
    const bool invert = optional_bool(config, "invert", false, "Split");
    steps_.push_back(std::make_shared<SplitStep>(value.get<std::string>(), syntax, parse_behavior(*behavior), invert));
  } else if (type == "ByteLevel") {
    steps_.push_back(std::make_shared<ByteLevelStep>(optional_bool(config, "add_prefix_space", true, "ByteLevel"),
                                                     optional_bool(config, "use_regex", true, "ByteLevel")));
  } else {
    fail("tokenizer.json: pre_tokenizer type \"", type, "\" is not supported (supported: Split, ByteLevel, Sequence)");
  }
}

void PreTokenizer::run(std::string_view text, PieceSink emit) const {
  if (!text.empty()) run_from(0, text, emit);
}

void PreTokenizer::run_from(size_t step_index, std::string_view piece, PieceSink emit) const {
  if (step_index == steps_.size()) {
    emit(piece);
    return;
  }
  auto next = [&](std::string_view part) {
    if (!part.empty()) run_from(step_index + 1, part, emit);
  };
  steps_[step_index]->split(piece, next);
}

}  // namespace glm::text
