// Added tokens (tokenizer.json "added_tokens"): strings such as "<|user|>"
// that are cut out of the text before normalization and BPE, honouring their
// special / normalized / lstrip / rstrip / single_word flags. Ids and matching
// follow the reference library, including how it assigns ids on load and its
// leftmost-longest matching order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/bpe.h"
#include "text/normalizer.h"

namespace glm::text {

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;

  bool operator==(const AddedToken&) const = default;
};

// A piece of input: either text still to be encoded, or an added token found
// in it (token_id >= 0).
struct TextSplit {
  std::string text;
  int32_t token_id = -1;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `config` is the "added_tokens" array.
  AddedVocabulary(const nlohmann::json& config, const BpeModel& model, const Normalizer& normalizer);

  // Cuts the added tokens out of `text` (valid UTF-8) and normalizes what
  // lies between them, in the reference's two passes: tokens with
  // normalized=false match the raw text, the others the normalized text.
  std::vector<TextSplit> split_and_normalize(std::string_view text, const Normalizer& normalizer) const;

  std::optional<int32_t> token_id(std::string_view content) const;
  const AddedToken* token(int32_t id) const;
  // The reference decides "special" by content, so a vocabulary token with
  // the same spelling as a special added token counts too.
  bool is_special_content(std::string_view content) const { return special_contents_.find(content) != special_contents_.end(); }
  int32_t max_id() const { return tokens_by_id_.empty() ? -1 : tokens_by_id_.rbegin()->first; }

 private:
  // Leftmost-longest matcher over a set of byte strings (a trie; added tokens
  // are few, so a walk from each candidate start is cheap).
  class Matcher {
   public:
    void add(std::string_view pattern, int32_t id);
    bool empty() const { return nodes_.size() <= 1; }
    // The longest pattern starting at `pos`: its length and id, or length 0.
    std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;
    bool may_start_with(unsigned char byte) const { return first_bytes_[byte]; }

   private:
    struct Node {
      std::map<unsigned char, uint32_t> children;
      int32_t id = -1;
    };
    std::vector<Node> nodes_{Node{}};
    bool first_bytes_[256] = {};
  };

  struct Found {
    size_t start;
    size_t end;
    int32_t id;
  };
  std::vector<Found> find_matches(std::string_view text, const Matcher& matcher) const;
  // Appends the pieces of `text`: added tokens found by `matcher` and the
  // non-empty text between them.
  void split_into(std::string_view text, const Matcher& matcher, std::vector<TextSplit>& out) const;

  std::map<int32_t, AddedToken> tokens_by_id_;
  std::unordered_map<std::string, int32_t> id_by_content_;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents_;
  Matcher raw_matcher_;
  Matcher normalized_matcher_;
};

}  // namespace glm::text
