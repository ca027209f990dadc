// The bundled trained model (models/glm4moe-tiny-fortunes) against
// transformers: its tokenizer on the held-out text, logits and greedy tokens
// of a raw and a chat prompt, and sliding-window perplexity within 0.1%.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/perplexity.h"
#include "io/npy.h"
#include "text/tokenizer.h"

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";
const std::string kFixtures = std::string(GLM_SOURCE_DIR) + "/tests/fixtures/trained";

nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(TrainedModel, TokenizerCountsTheHeldOutTextLikeTheReference) {
  const nlohmann::json reference = load_json(kFixtures + "/reference.json");
  const Tokenizer tokenizer = Tokenizer::from_file(kModel);
  EXPECT_EQ(static_cast<int64_t>(tokenizer.encode(read_text(kFixtures + "/heldout.txt")).size()),
            reference["perplexity"]["n_tokens"].get<int64_t>());
  for (const auto& chat : reference["chat"])
    EXPECT_EQ(tokenizer.encode(chat["rendered"].get<std::string>()), chat["ids"].get<std::vector<int32_t>>());
}

TEST(TrainedModel, LogitsAndGreedyTokensMatchTransformers) {
  const nlohmann::json reference = load_json(kFixtures + "/reference.json");
  EngineOptions options;
  options.max_context = 256;
  Engine engine(kModel, options);
  for (size_t p = 0; p < reference["greedy"].size(); ++p) {
    const auto& prompt = reference["greedy"][p];
    std::vector<int32_t> ids = prompt["prompt_ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> expected_tokens = prompt["greedy_ids"].get<std::vector<int32_t>>();

    GenerationRequest request;
    request.prompt = ids;
    request.max_tokens = static_cast<int64_t>(expected_tokens.size());
    request.sampling.temperature = 0.0;
    request.ignore_eos = true;
    EXPECT_EQ(generate(engine, request).tokens, expected_tokens) << "prompt " << p;

    // The recorded logits cover the prompt and the continuation.
    ids.insert(ids.end(), expected_tokens.begin(), expected_tokens.end());
    const NpyArray expected = read_npy(kFixtures + "/p" + std::to_string(p) + "_logits.npy");
    const int32_t sequence = engine.cache().create_sequence();
    const std::vector<int32_t> inputs(ids.begin(), ids.begin() + expected.shape[0]);
    const auto logits = engine.step({SequenceWork{sequence, inputs, LogitsWanted::All}})[0].logits;
    engine.cache().release_sequence(sequence);
    ASSERT_EQ(logits.size(), expected.values.size());
    double difference = 0.0, norm = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) {
      difference += std::pow(logits[i] - expected.values[i], 2);
      norm += std::pow(expected.values[i], 2);
    }
    EXPECT_LT(std::sqrt(difference / norm), 1e-4) << "prompt " << p;
  }
}

TEST(TrainedModel, PerplexityMatchesTransformers) {
  const nlohmann::json reference = load_json(kFixtures + "/perplexity_prefix.json");
  const Tokenizer tokenizer = Tokenizer::from_file(kModel);
  std::vector<int32_t> tokens = tokenizer.encode(read_text(kFixtures + "/heldout.txt"));
  tokens.resize(reference["max_tokens"].get<size_t>());
  const int64_t context = reference["context"], stride = reference["stride"];
  EngineOptions options;
  options.max_context = context;
  Engine engine(kModel, options);
  const PerplexityResult result = perplexity(engine, tokens, context, stride);
  EXPECT_EQ(result.scored_tokens, reference["scored_tokens"].get<int64_t>());
  EXPECT_NEAR(result.perplexity / reference["perplexity"].get<double>(), 1.0, 1e-3);
}

}  // namespace
}  // namespace glm
