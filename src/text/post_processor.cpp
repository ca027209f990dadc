// Post-processor stage (see post_processor.h).
#include "text/post_processor.h"

#include <string>

#include "core/error.h"
#include "io/json_util.h"

namespace glm::text {

PostProcessor PostProcessor::from_json(const nlohmann::json& config, size_t vocab_size) {
  PostProcessor processor;
  if (!config.is_null()) processor.add_steps(config, vocab_size);
  return processor;
}

void PostProcessor::add_steps(const nlohmann::json& config, size_t vocab_size) {
  GLM_CHECK(config.is_object() && config.contains("type") && config["type"].is_string(),
            "tokenizer.json: post_processor must be an object with a \"type\", got ", json_excerpt(config));
  const std::string type = config["type"].get<std::string>();
  if (type == "ByteLevel") return;  // it only trims offsets, which we do not report
  if (type == "TemplateProcessing") {
    add_template(config, vocab_size);
  } else if (type == "Sequence") {
    const auto found = config.find("processors");
    GLM_CHECK(found != config.end() && found->is_array(),
              "tokenizer.json: post_processor Sequence needs a \"processors\" array");
    for (const auto& child : *found) add_steps(child, vocab_size);
  } else {
    fail("tokenizer.json: post_processor type \"", type,
         "\" is not supported (supported: ByteLevel, TemplateProcessing, Sequence)");
  }
}

void PostProcessor::add_template(const nlohmann::json& config, size_t vocab_size) {
  const auto special_tokens = config.find("special_tokens");
  GLM_CHECK(special_tokens != config.end() && special_tokens->is_object(),
            "tokenizer.json: TemplateProcessing needs a \"special_tokens\" object");
  const auto single = config.find("single");
  GLM_CHECK(single != config.end() && single->is_array(), "tokenizer.json: TemplateProcessing needs a \"single\" array");
  Template result;
  for (const auto& piece : *single) {
    GLM_CHECK(piece.is_object() && piece.size() == 1, "tokenizer.json: TemplateProcessing piece ", json_excerpt(piece),
              " must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    const std::string& kind = piece.begin().key();
    const nlohmann::json& body = piece.begin().value();
    GLM_CHECK(body.is_object() && body.contains("id") && body["id"].is_string(),
              "tokenizer.json: TemplateProcessing piece ", json_excerpt(piece), " needs a string \"id\"");
    const std::string id = body["id"].get<std::string>();
    if (kind == "Sequence") {
      // A single-sequence template can only refer to the one sequence there is.
      GLM_CHECK(id == "A", "tokenizer.json: TemplateProcessing single template refers to sequence \"", id, "\"");
      result.push_back(Piece{true, {}});
    } else if (kind == "SpecialToken") {
      const auto token = special_tokens->find(id);
      GLM_CHECK(token != special_tokens->end() && token->is_object() && token->contains("ids") &&
                    (*token)["ids"].is_array(),
                "tokenizer.json: TemplateProcessing special token \"", id, "\" is missing from special_tokens");
      Piece run{false, {}};
      for (const auto& value : (*token)["ids"]) {
        int64_t token_id = 0;
        GLM_CHECK(json_exact_int64(value, &token_id) && token_id >= 0 && static_cast<uint64_t>(token_id) < vocab_size,
                  "tokenizer.json: TemplateProcessing special token \"", id, "\" has id ", json_excerpt(value),
                  " (vocabulary size ", vocab_size, ")");
        run.ids.push_back(static_cast<int32_t>(token_id));
      }
      result.push_back(std::move(run));
    } else {
      fail("tokenizer.json: TemplateProcessing piece kind \"", kind, "\" is not supported");
    }
  }
  templates_.push_back(std::move(result));
}

std::vector<int32_t> PostProcessor::add_special_tokens(std::vector<int32_t> ids) const {
  for (const Template& steps : templates_) {
    std::vector<int32_t> out;
    for (const Piece& piece : steps) {
      const std::vector<int32_t>& source = piece.is_sequence ? ids : piece.ids;
      out.insert(out.end(), source.begin(), source.end());
    }
    ids = std::move(out);
  }
  return ids;
}

}  // namespace glm::text
