// Streaming split of GLM-4 MoE output into reasoning, content and tool calls;
// the rules are documented in output_parser.h. Two layers run in order: stop
// strings cut the raw text, then a tag scanner drives a three-state machine
// (content, reasoning, inside a tool call). Each layer only holds back a
// suffix that could still complete a stop string or a tag, which is what makes
// the result independent of how the text is split into chunks.
#include "text/output_parser.h"

#include <algorithm>
#include <optional>
#include <set>
#include <utility>

#include "core/error.h"

namespace glm {

namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolOpen = "<tool_call>";
constexpr std::string_view kToolClose = "</tool_call>";
constexpr std::string_view kKeyOpen = "<arg_key>";
constexpr std::string_view kKeyClose = "</arg_key>";
constexpr std::string_view kValueOpen = "<arg_value>";
constexpr std::string_view kValueClose = "</arg_value>";

constexpr std::string_view kWhitespace = " \t\r\n";

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(kWhitespace);
  return text.substr(first, last - first + 1);
}

std::string_view skip_whitespace(std::string_view text) {
  const auto first = text.find_first_not_of(kWhitespace);
  return first == std::string_view::npos ? std::string_view{} : text.substr(first);
}

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

bool contains_argument_tag(std::string_view text) {
  return contains(text, kKeyOpen) || contains(text, kKeyClose) || contains(text, kValueOpen) ||
         contains(text, kValueClose);
}

// Length of the longest proper prefix of `pattern` that `text` ends with.
std::size_t partial_match_at_end(std::string_view text, std::string_view pattern) {
  const std::size_t longest = std::min(text.size(), pattern.size() - 1);
  for (std::size_t length = longest; length > 0; --length) {
    if (text.substr(text.size() - length) == pattern.substr(0, length)) return length;
  }
  return 0;
}

// The JSON types a property schema declares: "type" (a name or a list), the
// members of anyOf/oneOf, and an enum of strings without a type.
void collect_declared_types(const json& schema, std::set<std::string>& types) {
  if (!schema.is_object()) return;
  if (auto type = schema.find("type"); type != schema.end()) {
    if (type->is_string()) types.insert(type->get<std::string>());
    if (type->is_array()) {
      for (const auto& name : *type)
        if (name.is_string()) types.insert(name.get<std::string>());
    }
  } else if (auto values = schema.find("enum"); values != schema.end() && values->is_array() &&
                                                 !values->empty()) {
    if (std::all_of(values->begin(), values->end(), [](const json& v) { return v.is_string(); }))
      types.insert("string");
  }
  for (const char* combinator : {"anyOf", "oneOf"}) {
    if (auto members = schema.find(combinator); members != schema.end() && members->is_array()) {
      for (const auto& member : *members) collect_declared_types(member, types);
    }
  }
}

bool has_declared_type(const json& value, const std::set<std::string>& types) {
  if (value.is_null()) return types.count("null") > 0;
  if (value.is_boolean()) return types.count("boolean") > 0;
  if (value.is_number_integer()) return types.count("integer") > 0 || types.count("number") > 0;
  if (value.is_number()) return types.count("number") > 0;
  if (value.is_object()) return types.count("object") > 0;
  if (value.is_array()) return types.count("array") > 0;
  return types.count("string") > 0;
}

// `property_schema` is null when the tool or the argument is unknown.
json decode_argument(const std::string& raw, const json* property_schema) {
  std::set<std::string> declared;
  if (property_schema) collect_declared_types(*property_schema, declared);
  if (declared.size() == 1 && declared.count("string")) return raw;  // common case: no parse

  json parsed = json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return raw;
  if (declared.empty() || !declared.count("string")) return parsed;
  // A string is declared: only another declared, non-string type beats the raw text.
  if (!parsed.is_string() && has_declared_type(parsed, declared)) return parsed;
  return raw;
}

// Parses the text between <tool_call> and </tool_call>; nullopt when malformed.
std::optional<ToolCall> parse_tool_call_body(std::string_view body, const json* properties) {
  const auto first_key = body.find(kKeyOpen);
  const std::string_view name = trim(body.substr(0, first_key));
  if (name.empty() || name.find_first_of(" \t\r\n<>") != std::string_view::npos) return std::nullopt;

  ToolCall call;
  call.name = std::string(name);
  std::string_view rest = first_key == std::string_view::npos ? std::string_view{}
                                                              : body.substr(first_key);
  while (!(rest = skip_whitespace(rest)).empty()) {
    if (!rest.starts_with(kKeyOpen)) return std::nullopt;
    rest.remove_prefix(kKeyOpen.size());
    const auto key_end = rest.find(kKeyClose);
    if (key_end == std::string_view::npos) return std::nullopt;
    const std::string_view key = trim(rest.substr(0, key_end));
    if (key.empty() || contains_argument_tag(key)) return std::nullopt;
    rest = skip_whitespace(rest.substr(key_end + kKeyClose.size()));

    if (!rest.starts_with(kValueOpen)) return std::nullopt;
    rest.remove_prefix(kValueOpen.size());
    const auto value_end = rest.find(kValueClose);
    if (value_end == std::string_view::npos) return std::nullopt;
    const std::string_view value = rest.substr(0, value_end);
    if (contains_argument_tag(value)) return std::nullopt;
    rest.remove_prefix(value_end + kValueClose.size());

    const json* property_schema = nullptr;
    if (properties) {
      if (auto found = properties->find(std::string(key)); found != properties->end())
        property_schema = &*found;
    }
    call.arguments[std::string(key)] = decode_argument(std::string(value), property_schema);
  }
  return call;
}

}  // namespace

void ParsedDelta::append(ParsedDelta&& later) {
  reasoning += later.reasoning;
  content += later.content;
  for (auto& call : later.tool_calls) tool_calls.push_back(std::move(call));
}

namespace detail {

void StrippedStream::append(std::string_view text, std::string& out) {
  if (!started_) {
    text = skip_whitespace(text);
    if (text.empty()) return;
    started_ = true;
  }
  const auto last = text.find_last_not_of(kWhitespace);
  if (last == std::string_view::npos) {
    held_whitespace_ += text;
    return;
  }
  out += held_whitespace_;
  held_whitespace_.assign(text.substr(last + 1));
  out.append(text.substr(0, last + 1));
}

}  // namespace detail

OutputParser::OutputParser(OutputParserOptions options) : options_(std::move(options)) {
  const json& tools = options_.tools;
  GLM_CHECK(tools.is_null() || tools.is_array(), "tools must be an array of tool objects, got ",
            tools.type_name());
  if (tools.is_array()) {
    for (std::size_t i = 0; i < tools.size(); ++i) {
      const json& tool = tools[i];
      GLM_CHECK(tool.is_object(), "tools[", i, "] must be an object, got ", tool.type_name());
      const json& function = tool.contains("function") ? tool["function"] : tool;
      if (!function.is_object() || !function.contains("name") || !function["name"].is_string())
        continue;  // nothing to decode by; its calls still parse with plain JSON decoding
      json properties = json::object();
      if (auto parameters = function.find("parameters");
          parameters != function.end() && parameters->is_object()) {
        if (auto found = parameters->find("properties");
            found != parameters->end() && found->is_object())
          properties = *found;
      }
      properties_by_tool_[function["name"].get<std::string>()] = std::move(properties);
    }
  }
  std::erase_if(options_.stop_strings, [](const std::string& s) { return s.empty(); });
  for (const auto& stop : options_.stop_strings)
    longest_stop_string_ = std::max(longest_stop_string_, stop.size());
  if (options_.starts_in_reasoning) {
    mode_ = Mode::reasoning;
    think_allowed_ = false;
  }
}

ParsedDelta OutputParser::push(std::string_view text_chunk) {
  ParsedDelta out;
  if (finished_) return out;
  if (options_.stop_strings.empty()) {
    consume(text_chunk, /*at_end=*/false, out);
    return out;
  }

  stop_buffer_ += text_chunk;
  // The stop string that completes first is the one a token-by-token stream
  // would see first; among those ending together the longest (earliest) wins.
  std::size_t best_start = std::string::npos, best_end = std::string::npos;
  for (const auto& stop : options_.stop_strings) {
    const auto start = stop_buffer_.find(stop);
    if (start == std::string::npos) continue;
    const auto end = start + stop.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
    }
  }
  if (best_start != std::string::npos) {
    consume(std::string_view(stop_buffer_).substr(0, best_start), /*at_end=*/true, out);
    stop_buffer_.clear();
    stopped_ = true;
    close_output(out);
    return out;
  }

  std::size_t held = 0;
  for (const auto& stop : options_.stop_strings)
    held = std::max(held, partial_match_at_end(stop_buffer_, stop));
  const std::size_t decided = stop_buffer_.size() - held;
  consume(std::string_view(stop_buffer_).substr(0, decided), /*at_end=*/false, out);
  stop_buffer_.erase(0, decided);
  return out;
}

ParsedDelta OutputParser::finish() {
  ParsedDelta out;
  if (finished_) return out;
  consume(stop_buffer_, /*at_end=*/true, out);
  stop_buffer_.clear();
  close_output(out);
  return out;
}

const std::vector<std::string_view>& OutputParser::active_tags() const {
  // <think> and </think> are scanned in content only so that they are never
  // shown half-written; handle_tag decides whether they mean anything there.
  static const std::vector<std::string_view> content_tags = {kThinkOpen, kThinkClose, kToolOpen};
  static const std::vector<std::string_view> reasoning_tags = {kThinkClose};
  static const std::vector<std::string_view> tool_call_tags = {kToolClose, kToolOpen};
  switch (mode_) {
    case Mode::reasoning: return reasoning_tags;
    case Mode::tool_call: return tool_call_tags;
    case Mode::content: break;
  }
  return content_tags;
}

void OutputParser::consume(std::string_view text, bool at_end, ParsedDelta& out) {
  tag_buffer_ += text;
  const std::string_view buffer = tag_buffer_;
  std::size_t position = 0;
  while (true) {
    std::size_t tag_start = std::string_view::npos;
    std::string_view tag;
    for (std::string_view candidate : active_tags()) {
      const auto found = buffer.find(candidate, position);
      if (found < tag_start) {
        tag_start = found;
        tag = candidate;
      }
    }
    if (tag_start == std::string_view::npos) break;
    emit_text(buffer.substr(position, tag_start - position), out);
    position = tag_start + tag.size();
    handle_tag(tag, out);  // may switch mode, and so the tags scanned next
  }

  std::size_t held = 0;
  if (!at_end) {
    const std::string_view unscanned = buffer.substr(position);
    for (std::string_view tag : active_tags())
      held = std::max(held, partial_match_at_end(unscanned, tag));
  }
  const std::size_t decided_end = buffer.size() - held;
  emit_text(buffer.substr(position, decided_end - position), out);
  tag_buffer_.erase(0, decided_end);
}

void OutputParser::emit_text(std::string_view text, ParsedDelta& out) {
  if (text.empty()) return;
  switch (mode_) {
    case Mode::reasoning: reasoning_.append(text, out.reasoning); break;
    case Mode::tool_call: tool_body_ += text; break;
    case Mode::content:
      content_.append(text, out.content);
      if (content_.started()) think_allowed_ = false;
      break;
  }
}

void OutputParser::handle_tag(std::string_view tag, ParsedDelta& out) {
  switch (mode_) {
    case Mode::reasoning:  // only </think> is scanned here
      reasoning_.end();
      mode_ = Mode::content;
      return;
    case Mode::tool_call:
      if (tag == kToolClose) {
        emit_tool_call_or_content(/*closed=*/true, out);
      } else {  // <tool_call> again before </tool_call>: the open one is broken
        emit_tool_call_or_content(/*closed=*/false, out);
        mode_ = Mode::tool_call;
      }
      return;
    case Mode::content:
      if (tag == kToolOpen) {
        mode_ = Mode::tool_call;
        think_allowed_ = false;
        tool_body_.clear();
      } else if (tag == kThinkOpen && think_allowed_) {
        mode_ = Mode::reasoning;
        think_allowed_ = false;
      } else {
        emit_text(tag, out);  // a stray <think> or </think> is content text
      }
      return;
  }
}

// Leaves mode_ at content; a well-formed call becomes a ToolCall, anything
// else goes to content verbatim.
void OutputParser::emit_tool_call_or_content(bool closed, ParsedDelta& out) {
  mode_ = Mode::content;
  std::optional<ToolCall> call;
  if (closed) {
    const json* properties = nullptr;
    const std::string_view name = trim(std::string_view(tool_body_).substr(0, tool_body_.find(kKeyOpen)));
    if (auto found = properties_by_tool_.find(name); found != properties_by_tool_.end())
      properties = &found->second;
    call = parse_tool_call_body(tool_body_, properties);
  }
  if (call) {
    call->id = options_.tool_call_id_prefix + std::to_string(tool_calls_emitted_++);
    out.tool_calls.push_back(std::move(*call));
  } else {
    std::string verbatim = std::string(kToolOpen) + tool_body_;
    if (closed) verbatim += kToolClose;
    emit_text(verbatim, out);
  }
  tool_body_.clear();
}

void OutputParser::close_output(ParsedDelta& out) {
  if (mode_ == Mode::tool_call) emit_tool_call_or_content(/*closed=*/false, out);
  reasoning_.end();
  content_.end();
  finished_ = true;
}

}  // namespace glm
