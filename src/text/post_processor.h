// The tokenizer.json "post_processor" stage, applied only when the caller asks
// for special tokens (encode(..., add_special_tokens=true)); a rendered chat
// template already contains its special tokens and must not get more.
// Supported: ByteLevel (changes offsets only, so no ids), TemplateProcessing
// (single-sequence template) and Sequence of those.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace glm::text {

class PostProcessor {
 public:
  // `config` is the "post_processor" value; null adds nothing. Template ids
  // must be below `vocab_size`: an id with no token would later index past
  // the embedding table.
  static PostProcessor from_json(const nlohmann::json& config, size_t vocab_size);

  // The ids of a single sequence with the template's special tokens added.
  std::vector<int32_t> add_special_tokens(std::vector<int32_t> ids) const;

 private:
  // One template: each piece is either the sequence itself or a run of ids.
  struct Piece {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  using Template = std::vector<Piece>;

  void add_steps(const nlohmann::json& config, size_t vocab_size);
  void add_template(const nlohmann::json& config, size_t vocab_size);

  std::vector<Template> templates_;  // applied in order, as a Sequence does
};

}  // namespace glm::text
