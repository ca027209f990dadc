// A chat conversation over the engine: each turn re-renders the whole
// conversation with the checkpoint's own template (GLM templates rewrite
// history, e.g. they drop past reasoning), reuses the KV cache for the
// longest common token prefix with what is already cached, processes only
// the rest, and streams the reply through the output parser (reasoning,
// content, tool calls).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/sampling.h"
#include "text/chat_format.h"
#include "text/output_parser.h"
#include "text/tokenizer.h"

namespace glm {

struct ChatOptions {
  std::string system;                          // system message, when not empty
  bool enable_thinking = true;                 // the GLM templates' switch
  nlohmann::ordered_json template_arguments = nlohmann::ordered_json::object();  // other keyword arguments
  nlohmann::ordered_json tools = nullptr;      // OpenAI tools list
  SamplingParams sampling;
  int64_t max_tokens = 1024;
  int64_t prefill_chunk = 512;                 // prompt tokens per step (default_prefill_chunk)
  std::vector<int64_t> eos_token_ids;
  std::vector<std::string> stop_strings;
};

struct ChatReply {
  ParsedDelta message;         // the whole reply: reasoning, content, tool calls
  std::vector<int32_t> tokens; // every sampled token, the eos that ended the reply included
  std::string finish_reason;   // "eos", "stop", "length" or "interrupted"
  int64_t prompt_tokens = 0;   // tokens of the rendered conversation
  int64_t reused_tokens = 0;   // of those, found in the KV cache
  int64_t generated_tokens = 0;
  double prompt_seconds = 0.0;
  double generation_seconds = 0.0;
};

class ChatSession {
 public:
  ChatSession(Engine& engine, const Tokenizer& tokenizer, ChatFormat format, ChatOptions options);
  ~ChatSession();

  // Adds a user message and generates the assistant's reply. `on_delta` gets
  // each piece as it becomes final; `interrupted` is polled every token and
  // stops the reply when it returns true (what was generated so far is kept
  // in the conversation).
  ChatReply send(const std::string& user_text, const std::function<void(const ParsedDelta&)>& on_delta = {},
                 const std::function<bool()>& interrupted = {});

  // The conversation prompt as it would be rendered now, with the generation prompt.
  std::string render_prompt() const;
  const nlohmann::ordered_json& messages() const { return messages_; }
  void reset();

 private:
  Engine& engine_;
  const Tokenizer& tokenizer_;
  ChatFormat format_;
  ChatOptions options_;
  nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
  int32_t sequence_;
  std::vector<int32_t> cached_tokens_;  // exactly the tokens whose K/V the cache holds
  uint64_t turn_ = 0;
};

}  // namespace glm
