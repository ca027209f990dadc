// The tokenizer.json "normalizer" stage. Only what released GLM checkpoints and
// their derivatives use is supported: none, NFC, and Sequence of those.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace glm::text {

class Normalizer {
 public:
  // `config` is the "normalizer" value; null means no normalization. Throws
  // glm::Error naming an unsupported type.
  static Normalizer from_json(const nlohmann::json& config);

  bool is_identity() const { return steps_.empty(); }

  // `text` must be valid UTF-8.
  std::string normalize(std::string_view text) const;

 private:
  enum class Step { kNfc };
  std::vector<Step> steps_;

  void add_steps(const nlohmann::json& config);
};

// Unicode Normalization Form C (via utf8proc).
std::string to_nfc(std::string_view text);

}  // namespace glm::text
