// The terminal side of `glm4moe chat`: reading (multi-line) input, streaming
// the reply with reasoning dimmed, Ctrl-C to stop a reply without leaving.
// The conversation logic itself is glm::ChatSession (engine/chat.h).
#include "app/chat_command.h"

#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>

#include "engine/chat.h"
#include "engine/generate.h"

namespace glm::app {
namespace {

std::atomic<bool> interrupt_requested{false};

void on_interrupt(int) { interrupt_requested = true; }

// "key=value": the value as JSON when it parses (true, 3, {"a":1}), else as a string.
std::pair<std::string, nlohmann::ordered_json> parse_template_argument(const std::string& text) {
  const size_t equals = text.find('=');
  GLM_CHECK(equals != std::string::npos && equals > 0, "--chat-template-arg \"", text, "\" is not key=value");
  const std::string value = text.substr(equals + 1);
  auto parsed = nlohmann::ordered_json::parse(value, nullptr, false);
  return {text.substr(0, equals), parsed.is_discarded() ? nlohmann::ordered_json(value) : parsed};
}

// One user message: lines ending in a backslash continue on the next line.
// Returns false at end of input.
bool read_message(std::string& message, bool interactive) {
  message.clear();
  std::string line;
  if (interactive) std::fputs("\n> ", stderr);
  while (true) {
    if (!std::getline(std::cin, line)) {
      if (std::cin.eof()) return !message.empty();
      std::cin.clear();  // interrupted by Ctrl-C while typing
      interrupt_requested = false;
      std::fputs("\n(Ctrl-D or /exit to leave)\n> ", stderr);
      message.clear();
      continue;
    }
    if (!line.empty() && line.back() == '\\') {
      message += line.substr(0, line.size() - 1) + "\n";
      if (interactive) std::fputs(". ", stderr);
      continue;
    }
    message += line;
    return true;
  }
}

}  // namespace

int run_chat(const ChatCommandOptions& options) {
  if (options.threads > 0) omp_set_num_threads(options.threads);
  EngineOptions engine_options;
  engine_options.max_context = options.max_context;
  engine_options.device = options.device;
  Engine engine(options.model, engine_options);
  const Tokenizer tokenizer = Tokenizer::from_file(options.model);

  ChatOptions chat;
  chat.system = options.system;
  chat.enable_thinking = !options.no_think;
  for (const std::string& argument : options.template_arguments) {
    auto [key, value] = parse_template_argument(argument);
    chat.template_arguments[key] = value;
  }
  chat.sampling = sampling_defaults(engine.generation_defaults());
  if (options.temperature >= 0.0) chat.sampling.temperature = options.temperature;
  if (options.top_k >= 0) chat.sampling.top_k = options.top_k;
  if (options.top_p >= 0.0) chat.sampling.top_p = options.top_p;
  if (options.min_p >= 0.0) chat.sampling.min_p = options.min_p;
  chat.sampling.seed = options.seed;
  chat.max_tokens = options.max_tokens;
  chat.prefill_chunk = options.prefill_chunk > 0 ? options.prefill_chunk : default_prefill_chunk(options.device);
  chat.eos_token_ids = engine.config().eos_token_ids;
  chat.stop_strings = options.stop_strings;
  ChatSession session(engine, tokenizer, ChatFormat::from_model_directory(options.model), chat);

  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a Ctrl-C while typing ends the read
  sigaction(SIGINT, &action, nullptr);

  const bool interactive = isatty(STDIN_FILENO);
  const bool styled = isatty(STDOUT_FILENO);
  if (interactive)
    std::fprintf(stderr, "glm4moe chat: %s. End a line with \\ to continue it; /reset, /exit; Ctrl-C stops a reply.\n",
                 options.model.c_str());
  std::string message;
  while (read_message(message, interactive)) {
    if (message == "/exit" || message == "/quit") break;
    if (message == "/reset") {
      session.reset();
      continue;
    }
    if (message.empty()) continue;
    interrupt_requested = false;
    bool in_reasoning = false;
    auto show = [&](const ParsedDelta& delta) {
      if (!delta.reasoning.empty() && !options.hide_reasoning) {
        if (!in_reasoning && styled) std::fputs("\x1b[2m", stdout);
        in_reasoning = true;
        std::fputs(delta.reasoning.c_str(), stdout);
      }
      if (!delta.content.empty() || !delta.tool_calls.empty()) {
        if (in_reasoning) std::fputs(styled ? "\x1b[0m\n" : "\n", stdout);
        in_reasoning = false;
        std::fputs(delta.content.c_str(), stdout);
        for (const ToolCall& call : delta.tool_calls)
          std::printf("\n[tool call %s(%s)]", call.name.c_str(), call.arguments.dump().c_str());
      }
      std::fflush(stdout);
    };
    const ChatReply reply = session.send(message, show, [] { return interrupt_requested.load(); });
    if (in_reasoning && styled) std::fputs("\x1b[0m", stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
    if (interactive)
      std::fprintf(stderr, "[%lld prompt tokens (%lld reused), %lld generated, %.1f tok/s, %s]\n",
                   static_cast<long long>(reply.prompt_tokens), static_cast<long long>(reply.reused_tokens),
                   static_cast<long long>(reply.generated_tokens),
                   reply.generation_seconds > 0 ? reply.generated_tokens / reply.generation_seconds : 0.0,
                   reply.finish_reason.c_str());
  }
  return 0;
}

}  // namespace glm::app
