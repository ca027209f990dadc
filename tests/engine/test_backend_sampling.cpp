// Sampling inside the step (SequenceWork::sample -> StepInput::sample_rows ->
// Backend::sample) chooses exactly the tokens that host sampling of the
// returned logits chooses, in mixed plans (sampled rows with and without
// their logits returned beside rows that only return logits) and through
// generate, on the bundled trained model.
#include <gtest/gtest.h>

#include "engine/generate.h"
#include "../common/step_sampling.h"

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

EngineOptions small_cache() {
  EngineOptions options;
  options.max_context = 512;
  return options;
}

TEST(BackendSampling, StepSamplesWhatItsLogitsGive) {
  Engine engine(kModel, small_cache());
  testing_fixtures::expect_step_sampling_matches_host(engine, {{12, 400, 33, 901}, {7, 250, 1200}, {64, 5, 77, 300, 2}});
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
