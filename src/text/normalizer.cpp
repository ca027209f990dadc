// Normalizer stage (see normalizer.h).
#include "text/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "core/error.h"
#include "io/json_util.h"

namespace glm::text {

std::string to_nfc(std::string_view text) {
  // ASCII is already in NFC; skipping utf8proc keeps English text fast.
  bool ascii = true;
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(text);
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t length =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                   &mapped, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(mapped, &std::free);
  if (length < 0) fail("NFC normalization failed: ", utf8proc_errmsg(length));
  return std::string(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
}

Normalizer Normalizer::from_json(const nlohmann::json& config) {
  Normalizer normalizer;
  if (!config.is_null()) normalizer.add_steps(config);
  return normalizer;
}

void Normalizer::add_steps(const nlohmann::json& config) {
  GLM_CHECK(config.is_object() && config.contains("type") && config["type"].is_string(),
            "tokenizer.json: normalizer must be an object with a \"type\", got ", json_excerpt(config));
  const std::string type = config["type"].get<std::string>();
  if (type == "NFC") {
    steps_.push_back(Step::kNfc);
  } else if (type == "Sequence") {
    const auto found = config.find("normalizers");
    GLM_CHECK(found != config.end() && found->is_array(),
              "tokenizer.json: normalizer Sequence needs a \"normalizers\" array");
    for (const auto& child : *found) add_steps(child);
  } else {
    fail("tokenizer.json: normalizer type \"", type, "\" is not supported (supported: NFC, Sequence)");
  }
}

std::string Normalizer::normalize(std::string_view text) const {
  std::string current(text);
  for (const Step step : steps_) {
    switch (step) {
      case Step::kNfc: current = to_nfc(current); break;
    }
  }
  return current;
}

}  // namespace glm::text
