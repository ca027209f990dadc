// Prompt chunking: the default chunk per device (generate and chat use it),
// and on the CPU the same greedy continuation whatever the chunk (the CPU ops
// give a token the same bits whatever else is in its step).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/generate.h"

namespace glm {
namespace {

TEST(PrefillChunk, DefaultIsLongOnAGpuAndShortOnTheCpu) {
  EXPECT_EQ(default_prefill_chunk("cuda"), 4096);
  EXPECT_EQ(default_prefill_chunk("cuda:1"), 4096);
  EXPECT_EQ(default_prefill_chunk("cpu"), 512);
}

TEST(PrefillChunk, GreedyTokensDoNotDependOnTheChunk) {
  EngineOptions options;
  options.max_context = 256;
  Engine engine(std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes", options);
  GenerationRequest request;
  for (int32_t i = 0; i < 60; ++i) request.prompt.push_back(100 + (i * 37) % 3000);
  request.max_tokens = 8;
  request.sampling.temperature = 0.0;
  request.ignore_eos = true;
  request.prefill_chunk = 4096;
  const std::vector<int32_t> whole = generate(engine, request).tokens;
  ASSERT_EQ(whole.size(), 8u);
  for (int64_t chunk : {1, 7, 59}) {
    request.prefill_chunk = chunk;
    EXPECT_EQ(generate(engine, request).tokens, whole) << "chunk " << chunk;
  }
}

}  // namespace
}  // namespace glm
