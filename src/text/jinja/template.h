// Public interface of the Jinja interpreter used to render Hugging Face chat
// templates exactly as transformers does (jinja2 ImmutableSandboxedEnvironment
// with trim_blocks, lstrip_blocks, loopcontrols, its tojson, raise_exception
// and strftime_now). Errors, including a template's raise_exception, are
// thrown as glm::Error.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace glm::jinja {

struct Node;

class Template {
 public:
  // Parses the source; throws glm::Error with the line number if malformed.
  explicit Template(std::string source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the keys of `context` (an object) as variables.
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Renders a chat template as transformers' apply_chat_template(tokenize=False)
// does: variables messages, tools (null when empty/absent), documents (null),
// add_generation_prompt and every key of extra_variables (bos_token,
// enable_thinking, ...). OpenAI-style tool calls whose function.arguments is a
// JSON string are parsed to a mapping first, and reasoning aliases
// (reasoning_content / thinking / reasoning) are filled as transformers does.
std::string render_chat_template(const std::string& source, const nlohmann::ordered_json& messages,
                                 const nlohmann::ordered_json& tools, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra_variables);

}  // namespace glm::jinja
