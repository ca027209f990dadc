// Choosing the next token from logits: greedy, or sampling with temperature,
// top-k, top-p and min-p applied in that order (transformers' order). The
// random draw is counter-based — a pure function of (seed, sequence, step) —
// so any backend, and any batch composition, draws the same token.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "model/config.h"

namespace glm {

struct SamplingParams {
  double temperature = 1.0;  // 0 means greedy
  int64_t top_k = 0;         // 0 disables
  double top_p = 1.0;        // 1 disables
  double min_p = 0.0;        // 0 disables
  uint64_t seed = 0;
  bool greedy() const { return temperature <= 0.0; }
};

// transformers' defaults where generation_config.json is silent (top_k 50 when
// sampling, as GenerationConfig sets it); an explicit temperature 0 or
// do_sample false means greedy.
SamplingParams sampling_defaults(const GenerationDefaults& generation);

// A uniform number in [0, 1) determined by (seed, sequence, step).
double counter_uniform(uint64_t seed, uint64_t sequence, uint64_t step);

// Index of the largest logit (the first one on ties, as torch.argmax).
int32_t argmax(std::span<const float> logits);

// The chosen token id for one row of logits.
int32_t sample_token(std::span<const float> logits, const SamplingParams& params, uint64_t sequence, uint64_t step);

}  // namespace glm
