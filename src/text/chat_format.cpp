// Loading a checkpoint's chat template and special-token variables.
#include "text/chat_format.h"

#include <filesystem>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "text/jinja/template.h"

namespace glm {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  GLM_CHECK(in, "cannot read ", path.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A special token in tokenizer_config.json is a string or an AddedToken
// object {"content": "...", ...}.
std::optional<std::string> token_string(const nlohmann::ordered_json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

ChatFormat ChatFormat::from_source(std::string template_source, nlohmann::ordered_json special_tokens) {
  ChatFormat format;
  format.template_source_ = std::move(template_source);
  if (special_tokens.is_object()) format.special_tokens_ = std::move(special_tokens);
  jinja::Template check(format.template_source_);  // a malformed template fails at load, with its line
  return format;
}

ChatFormat ChatFormat::from_model_directory(const std::string& directory) {
  const fs::path dir(directory);
  GLM_CHECK(fs::is_directory(dir), "model directory ", directory, " does not exist");
  nlohmann::ordered_json special = nlohmann::ordered_json::object();
  std::string source;
  const fs::path config_path = dir / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    const auto config = nlohmann::ordered_json::parse(read_text(config_path), nullptr, false);
    GLM_CHECK(!config.is_discarded() && config.is_object(), config_path.string(), " is not a JSON object");
    for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                            "mask_token"}) {
      if (!config.contains(key)) continue;
      if (auto token = token_string(config[key])) special[key] = *token;
    }
    if (config.contains("chat_template")) {
      const auto& value = config["chat_template"];
      if (value.is_string()) {
        source = value.get<std::string>();
      } else if (value.is_array()) {  // named templates: take "default"
        for (const auto& entry : value)
          if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
              entry["template"].is_string())
            source = entry["template"].get<std::string>();
        GLM_CHECK(!source.empty(), config_path.string(), ": chat_template has no template named \"default\"");
      } else {
        fail(config_path.string(), ": chat_template must be a string or a list of named templates");
      }
    }
  }
  // transformers prefers a chat_template.jinja file over the config entry.
  if (fs::exists(dir / "chat_template.jinja")) source = read_text(dir / "chat_template.jinja");
  GLM_CHECK(!source.empty(), directory, " has no chat template (tokenizer_config.json \"chat_template\" or ",
            "chat_template.jinja)");
  return from_source(std::move(source), std::move(special));
}

std::string ChatFormat::render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                               bool add_generation_prompt, const nlohmann::ordered_json& extra_variables) const {
  nlohmann::ordered_json variables = special_tokens_;
  if (extra_variables.is_object())
    for (const auto& [key, value] : extra_variables.items()) variables[key] = value;
  return jinja::render_chat_template(template_source_, messages, tools, add_generation_prompt, variables);
}

}  // namespace glm
