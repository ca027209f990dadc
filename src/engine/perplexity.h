// Perplexity of a token sequence with sliding windows, as the Hugging Face
// perplexity guide computes it: windows of `context` tokens start every
// `stride` tokens; each window scores only the tokens no earlier window
// scored, so every token after the first is scored exactly once, each with as
// much left context as its window gives.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/engine.h"

namespace glm {

struct PerplexityResult {
  int64_t scored_tokens = 0;
  double total_nll = 0.0;  // natural log
  double perplexity = 0.0;
  double seconds = 0.0;
  int64_t processed_tokens = 0;  // tokens run through the model (windows overlap)
};

PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& tokens, int64_t context, int64_t stride);

}  // namespace glm
