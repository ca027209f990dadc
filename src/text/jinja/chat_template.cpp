// render_chat_template: prepares messages the way transformers'
// render_jinja_template does (reasoning-field aliases) plus the engine's own
// conversion of OpenAI tool-call argument strings into mappings, then renders.
#include "core/error.h"
#include "text/jinja/template.h"

namespace glm::jinja {
namespace {

using json = nlohmann::ordered_json;

// GLM templates iterate `tc.arguments.items()`, so a JSON-string argument
// (the OpenAI wire format) must become a mapping. Strings that are not a JSON
// object are left alone, as the template may print them verbatim.
void parse_tool_call_arguments(json& message) {
  if (!message.is_object() || !message.contains("tool_calls") || !message["tool_calls"].is_array()) return;
  for (auto& call : message["tool_calls"]) {
    if (!call.is_object()) continue;
    json* holder = call.contains("function") && call["function"].is_object() ? &call["function"] : &call;
    if (!holder->contains("arguments") || !(*holder)["arguments"].is_string()) continue;
    json parsed = json::parse((*holder)["arguments"].get<std::string>(), nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object()) (*holder)["arguments"] = std::move(parsed);
  }
}

// transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}.
json alias_reasoning(const json& message) {
  if (!message.is_object()) return message;
  const json* reasoning = nullptr;
  for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
    auto it = message.find(key);
    if (it != message.end() && !it->is_null()) {
      reasoning = &*it;
      break;
    }
  }
  if (!reasoning) return message;
  json out = json::object();
  out["thinking"] = *reasoning;
  for (auto it = message.begin(); it != message.end(); ++it) out[it.key()] = it.value();
  out["reasoning_content"] = *reasoning;
  return out;
}

}  // namespace

std::string render_chat_template(const std::string& source, const json& messages, const json& tools,
                                 bool add_generation_prompt, const json& extra_variables) {
  GLM_CHECK(messages.is_array(), "chat template: messages must be a JSON array");
  json prepared = json::array();
  for (const auto& m : messages) {
    GLM_CHECK(m.is_object(), "chat template: each message must be a JSON object");
    json copy = alias_reasoning(m);
    parse_tool_call_arguments(copy);
    prepared.push_back(std::move(copy));
  }
  json context = json::object();
  context["messages"] = std::move(prepared);
  context["tools"] = tools.is_null() ? json(nullptr) : tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  if (extra_variables.is_object())
    for (auto it = extra_variables.begin(); it != extra_variables.end(); ++it) context[it.key()] = it.value();
  else
    GLM_CHECK(extra_variables.is_null(), "chat template: extra variables must be a JSON object");
  return Template(source).render(context);
}

}  // namespace glm::jinja
