// The chat turn loop: render, reuse the cached prefix, prefill the rest,
// sample, decode incrementally, parse.
#include "engine/chat.h"

#include <algorithm>
#include <chrono>

#include "engine/generate.h"

namespace glm {

ChatSession::ChatSession(Engine& engine, const Tokenizer& tokenizer, ChatFormat format, ChatOptions options)
    : engine_(engine), tokenizer_(tokenizer), format_(std::move(format)), options_(std::move(options)) {
  sequence_ = engine_.cache().create_sequence();
  reset();
}

ChatSession::~ChatSession() { engine_.cache().release_sequence(sequence_); }

void ChatSession::reset() {
  messages_ = nlohmann::ordered_json::array();
  if (!options_.system.empty()) messages_.push_back({{"role", "system"}, {"content", options_.system}});
}

std::string ChatSession::render_prompt() const {
  nlohmann::ordered_json variables = options_.template_arguments;
  if (!variables.contains("enable_thinking")) variables["enable_thinking"] = options_.enable_thinking;
  return format_.render(messages_, options_.tools, true, variables);
}

ChatReply ChatSession::send(const std::string& user_text, const std::function<void(const ParsedDelta&)>& on_delta,
                            const std::function<bool()>& interrupted) {
  using Clock = std::chrono::steady_clock;
  messages_.push_back({{"role", "user"}, {"content", user_text}});
  const std::string prompt_text = render_prompt();
  // The rendered text carries its special tokens: encode without adding any.
  const std::vector<int32_t> prompt = tokenizer_.encode(prompt_text);
  GLM_CHECK(!prompt.empty(), "the chat template rendered an empty prompt");

  ChatReply reply;
  reply.prompt_tokens = static_cast<int64_t>(prompt.size());
  // Longest common prefix with the cache; at least one token must be run to
  // get logits for the next one.
  size_t common = 0;
  while (common < cached_tokens_.size() && common < prompt.size() && cached_tokens_[common] == prompt[common]) ++common;
  common = std::min(common, prompt.size() - 1);
  engine_.cache().truncate(sequence_, static_cast<int64_t>(common));
  cached_tokens_.resize(common);
  reply.reused_tokens = static_cast<int64_t>(common);

  auto start = Clock::now();
  const std::span<const int32_t> unseen(prompt.begin() + common, prompt.end());
  // The reply's random stream is the turn number; each token is chosen on the
  // backend from the step that computed its logits.
  const uint64_t stream = turn_ + 1;
  SamplingRequest sampling{options_.sampling, stream, 0};
  int32_t token = prefill(engine_, sequence_, unseen, options_.prefill_chunk, LogitsWanted::None, sampling).token;
  cached_tokens_.insert(cached_tokens_.end(), unseen.begin(), unseen.end());
  reply.prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  OutputParserOptions parser_options;
  // GLM-4.7's template opens <think> in the generation prompt when thinking is on.
  static const std::string think_open = "<think>";
  parser_options.starts_in_reasoning = prompt_text.size() >= think_open.size() &&
                                       prompt_text.compare(prompt_text.size() - think_open.size(), think_open.size(),
                                                           think_open) == 0;
  parser_options.tools = options_.tools;
  parser_options.stop_strings = options_.stop_strings;
  parser_options.tool_call_id_prefix = "call_" + std::to_string(turn_++) + "_";
  OutputParser parser(parser_options);
  StreamingDecoder decoder(tokenizer_);

  auto deliver = [&](ParsedDelta&& delta) {
    if (delta.empty()) return;
    if (on_delta) on_delta(delta);
    reply.message.append(std::move(delta));
  };

  start = Clock::now();
  reply.finish_reason = "length";
  // One plan and one result list for the whole reply: the engine step
  // allocates nothing per token.
  std::vector<SequenceWork> plan{SequenceWork{sequence_, {0}, LogitsWanted::None, sampling}};
  std::vector<SequenceResult> results;
  for (int64_t step = 0; step < options_.max_tokens; ++step) {
    ++reply.generated_tokens;
    reply.tokens.push_back(token);
    if (std::find(options_.eos_token_ids.begin(), options_.eos_token_ids.end(), token) !=
        options_.eos_token_ids.end()) {
      reply.finish_reason = "eos";
      break;
    }
    deliver(parser.push(decoder.push(token)));
    if (parser.stopped()) {
      reply.finish_reason = "stop";
      break;
    }
    if (interrupted && interrupted()) {
      reply.finish_reason = "interrupted";
      break;
    }
    if (step + 1 == options_.max_tokens) break;
    plan[0].tokens[0] = token;
    plan[0].sample->step = static_cast<uint64_t>(step + 1);
    engine_.step(plan, results);
    cached_tokens_.push_back(token);
    token = results[0].token;
  }
  deliver(parser.push(decoder.flush()));
  deliver(parser.finish());
  reply.generation_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  nlohmann::ordered_json assistant = {{"role", "assistant"}, {"content", reply.message.content}};
  if (!reply.message.reasoning.empty()) assistant["reasoning_content"] = reply.message.reasoning;
  if (!reply.message.tool_calls.empty()) {
    assistant["tool_calls"] = nlohmann::ordered_json::array();
    for (const ToolCall& call : reply.message.tool_calls)
      assistant["tool_calls"].push_back(
          {{"id", call.id},
           {"type", "function"},
           {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
  }
  messages_.push_back(std::move(assistant));
  return reply;
}

}  // namespace glm
