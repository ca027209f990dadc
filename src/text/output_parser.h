// Reading what a GLM-4 MoE model writes: a streaming parser, one per request,
// that splits the generated text into reasoning (`<think>…</think>`), visible
// content and tool calls, and cuts the output at user-given stop strings.
//
// It works on decoded text: the special tokens <think>, </think>, <tool_call>,
// </tool_call>, <arg_key>, </arg_key>, <arg_value>, </arg_value> arrive as
// their text. End-of-sequence token ids (<|user|>, <|observation|>, eos) are
// the engine's business; it calls finish() when generation ends.
//
// Both tool-call forms are accepted, and anything in between:
//   GLM-4.5/4.6: <tool_call>name\n<arg_key>k</arg_key>\n<arg_value>v</arg_value>\n</tool_call>
//   GLM-4.7:     <tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>
// Whitespace between the name and the argument tags and between pairs is
// ignored, so spaced variants (`name <arg_key>…`) parse too.
//
// Rules, chosen to match how the chat templates render an assistant turn
// into history (so a parsed turn re-renders to what the model wrote):
//  * Reasoning is the text between <think> and </think>, with leading and
//    trailing whitespace removed (the templates write reasoning.strip()).
//    <think> opens reasoning only before anything else was written (leading
//    whitespace aside); with starts_in_reasoning the output begins inside
//    reasoning (the GLM-4.7 generation prompt ends with <think>). Reasoning
//    never closed is still reasoning at finish(). Inside reasoning only
//    </think> is a tag: a <tool_call> there is reasoning text.
//  * Content is everything outside reasoning and tool calls, with leading and
//    trailing whitespace of the whole turn removed (the templates write
//    content.strip() and put "\n" around tags in the 4.5 form). Whitespace
//    inside content, including around tool calls that sit between content
//    text, is kept. A stray <think> after output started, or a </think> in
//    content, is kept as content text.
//  * A tool call's name is trimmed and must be non-empty and contain no
//    whitespace, '<' or '>'; argument keys are trimmed; argument values are
//    kept byte for byte (the templates write them raw).
//  * Argument values are decoded by the tool's JSON schema (OpenAI tools
//    list): a property whose declared types include "string" stays the raw
//    string unless it JSON-decodes to another declared type (so "42" stays
//    "42" for {"type":"string"}, and "null" becomes null for
//    {"type":["string","null"]}); any other property, an unknown argument or
//    an unknown tool gets the JSON-decoded value when the text parses as JSON,
//    else the raw string. Repeated keys: the last value wins.
//  * A malformed tool call (bad name, text outside the key/value tags, a key
//    without a value, an argument tag inside a key or value, a new
//    <tool_call> before </tool_call>, or no </tool_call> by finish()) is
//    returned verbatim as content: never dropped, never an exception.
//  * Stop strings are matched on the raw generated text (reasoning and tool
//    calls included), as other OpenAI-style servers do. The first one to
//    complete ends the output: the text before it is parsed as if generation
//    had finished there, the stop string and everything after are dropped.
//
// Streaming: push() returns only what became final. Text that may still be
// the start of a tag or of a stop string is held back until decided, as is
// a run of whitespace (it may turn out to be trailing and then be dropped).
// Tool calls are returned whole, when </tool_call> arrives. Concatenating
// every delta gives exactly what feeding the whole text at once gives, for
// any split of the input into chunks, at any byte. Bytes pass through
// unchanged and the parser only cuts at ASCII tags, ASCII whitespace and stop
// strings, so if every pushed chunk is valid UTF-8 (as the engine's streaming
// decoder gives), so is every delta.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace glm {

struct ToolCall {
  std::string name;
  nlohmann::ordered_json arguments = nlohmann::ordered_json::object();
  std::string id;  // tool_call_id_prefix + index of the call in this output
};

// What became final during one push() or finish().
struct ParsedDelta {
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;

  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
  // Accumulates a later delta into this one (the sum of all deltas is the turn).
  void append(ParsedDelta&& later);
};

struct OutputParserOptions {
  // The prompt already opened reasoning (ends with <think>, as GLM-4.7's
  // generation prompt does when thinking is on).
  bool starts_in_reasoning = false;
  // OpenAI tools list: [{"type":"function","function":{"name":…,"parameters":
  // {JSON schema}}}, …]; entries of the bare {"name":…,"parameters":…} shape
  // are accepted too. null or an empty array means no schemas.
  nlohmann::ordered_json tools = nullptr;
  // Empty strings are ignored.
  std::vector<std::string> stop_strings;
  // Tool call ids are this prefix followed by 0, 1, …; the engine passes a
  // per-request prefix so ids stay unique across a conversation.
  std::string tool_call_id_prefix = "call_";
};

namespace detail {
// A text stream whose leading and trailing whitespace is removed while it
// streams: leading whitespace is dropped, a whitespace run is held until
// non-whitespace follows it, and dropped if the stream ends first.
class StrippedStream {
 public:
  void append(std::string_view text, std::string& out);
  bool started() const { return started_; }  // something non-whitespace was written
  void end() { held_whitespace_.clear(); }

 private:
  bool started_ = false;
  std::string held_whitespace_;
};
}  // namespace detail

class OutputParser {
 public:
  // Throws glm::Error when options.tools is not null or an array of objects.
  explicit OutputParser(OutputParserOptions options);

  // Feeds the next piece of generated text (any split, even inside a UTF-8
  // sequence or a tag). After a stop string or finish(), returns nothing.
  ParsedDelta push(std::string_view text_chunk);
  // Generation ended: releases everything held back and closes what is open.
  // Calling it again returns nothing.
  ParsedDelta finish();

  // A stop string was seen; text after it was dropped and the parser is done.
  bool stopped() const { return stopped_; }
  bool finished() const { return finished_; }

 private:
  enum class Mode { content, reasoning, tool_call };

  void consume(std::string_view text, bool at_end, ParsedDelta& out);
  void emit_text(std::string_view text, ParsedDelta& out);
  void handle_tag(std::string_view tag, ParsedDelta& out);
  void emit_tool_call_or_content(bool closed, ParsedDelta& out);
  void close_output(ParsedDelta& out);
  const std::vector<std::string_view>& active_tags() const;

  OutputParserOptions options_;
  std::map<std::string, nlohmann::ordered_json, std::less<>> properties_by_tool_;
  std::size_t longest_stop_string_ = 0;

  Mode mode_ = Mode::content;
  bool think_allowed_ = true;  // a <think> here still opens reasoning
  bool stopped_ = false;
  bool finished_ = false;
  std::size_t tool_calls_emitted_ = 0;

  std::string stop_buffer_;  // raw text that may be the start of a stop string
  std::string tag_buffer_;   // text that may be the start of a tag
  std::string tool_body_;    // text after <tool_call>, until </tool_call>
  detail::StrippedStream reasoning_;
  detail::StrippedStream content_;
};

}  // namespace glm
