// A checkpoint's chat format: its Jinja chat template (tokenizer_config.json's
// "chat_template", or chat_template.jinja beside it) and the special-token
// strings the template may use (bos_token, eos_token, ...), rendered as
// transformers' apply_chat_template(tokenize=False) renders them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace glm {

class ChatFormat {
 public:
  // Reads DIR/tokenizer_config.json and/or DIR/chat_template.jinja; throws
  // naming the directory when neither holds a template.
  static ChatFormat from_model_directory(const std::string& directory);
  static ChatFormat from_source(std::string template_source, nlohmann::ordered_json special_tokens = {});

  // messages: OpenAI-style [{"role":…, "content":…, "tool_calls"?…}].
  // extra_variables: enable_thinking and any other template keyword argument;
  // they override the special-token variables of the same name.
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt, const nlohmann::ordered_json& extra_variables = {}) const;

  const std::string& template_source() const { return template_source_; }

 private:
  std::string template_source_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace glm
