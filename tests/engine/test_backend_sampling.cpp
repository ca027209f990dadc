// Sampling inside the step (SequenceWork::sample -> StepInput::sample_rows ->
// Backend::sample) chooses exactly the tokens that host sampling of the
// returned logits chooses, in mixed plans (sampled rows with and without
// their logits returned beside rows that only return logits) and through
// generate, on the bundled trained model.
#include <gtest/gtest.h>

#include "engine/generate.h"

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

EngineOptions small_cache() {
  EngineOptions options;
  options.max_context = 512;
  return options;
}

SamplingRequest request_of(double temperature, int64_t top_k, double top_p, double min_p, uint64_t seed,
                           uint64_t stream, uint64_t step) {
  return SamplingRequest{SamplingParams{temperature, top_k, top_p, min_p, seed}, stream, step};
}

TEST(BackendSampling, StepSamplesWhatItsLogitsGive) {
  Engine engine(kModel, small_cache());
  PagedKvCache& cache = engine.cache();
  const std::vector<int32_t> first = {12, 400, 33, 901}, second = {7, 250, 1200}, third = {64, 5, 77, 300, 2};
  const SamplingRequest sampled = request_of(0.9, 40, 0.95, 0.0, 1, 0, 0);
  const SamplingRequest flat = request_of(1.5, 0, 1.0, 0.01, 2, 1, 0);

  // The same three sequences twice: once sampling on the backend, once returning logits.
  int32_t a[3], b[3];
  for (int i = 0; i < 3; ++i) a[i] = cache.create_sequence(), b[i] = cache.create_sequence();
  const auto on_backend = engine.step({SequenceWork{a[0], first, LogitsWanted::Last, sampled},
                                       SequenceWork{a[1], second, LogitsWanted::None, flat},
                                       SequenceWork{a[2], third, LogitsWanted::All}});
  const auto logits = engine.step({SequenceWork{b[0], first, LogitsWanted::Last},
                                   SequenceWork{b[1], second, LogitsWanted::Last},
                                   SequenceWork{b[2], third, LogitsWanted::All}});
  EXPECT_EQ(on_backend[0].token, sample_token(logits[0].logits, sampled));
  EXPECT_EQ(on_backend[0].logits, logits[0].logits);
  EXPECT_EQ(on_backend[1].token, sample_token(logits[1].logits, flat));
  EXPECT_EQ(on_backend[1].rows, 0);
  EXPECT_TRUE(on_backend[1].logits.empty());
  EXPECT_EQ(on_backend[2].token, -1);
  EXPECT_EQ(on_backend[2].logits, logits[2].logits);

  // A decode step where nothing comes back but the ids.
  for (int step = 1; step < 6; ++step) {
    const SamplingRequest one = request_of(0.7, 0, 0.8, 0.0, 3, 0, step), two = request_of(0.0, 0, 1.0, 0.0, 0, 1, step);
    const auto ids = engine.step({SequenceWork{a[0], {on_backend[0].token}, LogitsWanted::None, one},
                                  SequenceWork{a[1], {on_backend[1].token}, LogitsWanted::None, two}});
    const auto rows = engine.step({SequenceWork{b[0], {on_backend[0].token}, LogitsWanted::Last},
                                   SequenceWork{b[1], {on_backend[1].token}, LogitsWanted::Last}});
    EXPECT_EQ(ids[0].token, sample_token(rows[0].logits, one)) << "step " << step;
    EXPECT_EQ(ids[1].token, argmax(rows[1].logits)) << "step " << step;
    EXPECT_TRUE(ids[0].logits.empty() && ids[1].logits.empty());
  }
  for (int i = 0; i < 3; ++i) cache.release_sequence(a[i]), cache.release_sequence(b[i]);
}

TEST(BackendSampling, GenerateEqualsHostSamplingOfTheLogits) {
  Engine engine(kModel, small_cache());
  for (const SamplingParams& params : {SamplingParams{0.8, 40, 0.9, 0.02, 5}, SamplingParams{1.0, 0, 1.0, 0.0, 6},
                                       SamplingParams{0.0, 0, 1.0, 0.0, 0}}) {
    GenerationRequest request;
    request.prompt = {12, 400, 33, 901, 7, 250, 1200, 64};
    request.max_tokens = 30;
    request.ignore_eos = true;
    request.prefill_chunk = 3;
    request.sampling = params;
    request.random_stream = 9;
    const std::vector<int32_t> generated = generate(engine, request).tokens;

    const int32_t sequence = engine.cache().create_sequence();
    std::vector<float> logits = prefill(engine, sequence, request.prompt, request.prefill_chunk);
    std::vector<int32_t> expected;
    for (int64_t step = 0; step < request.max_tokens; ++step) {
      expected.push_back(sample_token(logits, params, request.random_stream, static_cast<uint64_t>(step)));
      logits = engine.step({SequenceWork{sequence, {expected.back()}, LogitsWanted::Last}})[0].logits;
    }
    engine.cache().release_sequence(sequence);
    EXPECT_EQ(generated, expected) << "temperature " << params.temperature;
  }
}

}  // namespace
}  // namespace glm
