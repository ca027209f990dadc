// Chat sessions on the bundled trained model: the template renders as
// transformers rendered it, later turns reuse the cached prefix, and a reply
// with a reused cache equals a reply computed from scratch.
#include <gtest/gtest.h>

#include <fstream>

#include "engine/chat.h"
#include "engine/generate.h"

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

nlohmann::ordered_json reference() {
  std::ifstream in(std::string(GLM_SOURCE_DIR) + "/tests/fixtures/trained/reference.json");
  return nlohmann::ordered_json::parse(in);
}

TEST(ChatFormat, RendersLikeTransformers) {
  const ChatFormat format = ChatFormat::from_model_directory(kModel);
  for (const auto& chat : reference()["chat"]) {
    nlohmann::ordered_json variables = nlohmann::ordered_json::object();
    if (chat.contains("enable_thinking")) variables["enable_thinking"] = chat["enable_thinking"];
    EXPECT_EQ(format.render(chat["messages"], nullptr, chat["add_generation_prompt"].get<bool>(), variables),
              chat["rendered"].get<std::string>());
  }
}

TEST(ChatSession, SecondTurnReusesTheCacheAndEqualsAFreshComputation) {
  EngineOptions engine_options;
  engine_options.max_context = 1024;
  Engine engine(kModel, engine_options);
  const Tokenizer tokenizer = Tokenizer::from_file(kModel);
  ChatOptions options;
  options.system = "You are a helpful assistant.";
  options.sampling.temperature = 0.0;
  options.max_tokens = 24;
  options.eos_token_ids = engine.config().eos_token_ids;
  ChatSession session(engine, tokenizer, ChatFormat::from_model_directory(kModel), options);

  const ChatReply first = session.send("Hello, who are you?");
  EXPECT_EQ(first.reused_tokens, 0);
  ASSERT_GT(first.generated_tokens, 0);

  // The prompt of turn two, rendered from scratch.
  nlohmann::ordered_json history = session.messages();
  history.push_back({{"role", "user"}, {"content", "Tell me something about Linux."}});
  const std::string prompt_text = ChatFormat::from_model_directory(kModel).render(
      history, nullptr, true, {{"enable_thinking", true}});
  const ChatReply second = session.send("Tell me something about Linux.");
  EXPECT_GT(second.reused_tokens, first.prompt_tokens / 2);
  EXPECT_EQ(second.prompt_tokens, static_cast<int64_t>(tokenizer.encode(prompt_text).size()));

  GenerationRequest request;
  request.prompt = tokenizer.encode(prompt_text);
  request.max_tokens = options.max_tokens;
  request.sampling.temperature = 0.0;
  request.eos_token_ids = options.eos_token_ids;
  EXPECT_EQ(generate(engine, request).tokens, second.tokens);
  EXPECT_EQ(session.messages().back()["role"], "assistant");
}

TEST(ChatSession, InterruptKeepsWhatWasGenerated) {
  EngineOptions engine_options;
  engine_options.max_context = 512;
  Engine engine(kModel, engine_options);
  const Tokenizer tokenizer = Tokenizer::from_file(kModel);
  ChatOptions options;
  options.sampling.temperature = 0.0;
  options.max_tokens = 50;
  options.eos_token_ids = engine.config().eos_token_ids;
  ChatSession session(engine, tokenizer, ChatFormat::from_model_directory(kModel), options);
  int polls = 0;
  const ChatReply reply = session.send("Tell me something.", {}, [&] { return ++polls >= 5; });
  EXPECT_EQ(reply.finish_reason, "interrupted");
  EXPECT_EQ(reply.generated_tokens, 5);
  EXPECT_EQ(session.messages().size(), 2u);
}

}  // namespace
}  // namespace glm
