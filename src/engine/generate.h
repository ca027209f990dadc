// Generating a continuation of one prompt: the prompt is processed in chunks
// (matrix-matrix), then one token per step until an eos id or the token limit.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/sampling.h"

namespace glm {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  bool ignore_eos = false;
  std::vector<int64_t> eos_token_ids;
  int64_t prefill_chunk = 512;  // prompt tokens per step (default_prefill_chunk)
  uint64_t random_stream = 0;   // keys the sampler's draws with the seed (not the cache slot)
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (prompt excluded)
  std::string finish_reason;    // "eos", "length" or "stopped"
  double prompt_seconds = 0.0;
  double generation_seconds = 0.0;
};

// Prompt tokens per step for a device: a GPU's tensor cores want long
// chunks (full-depth GLM-4.5-Air int4 on an H200: 6394 tok/s at 4096 tokens a
// step against 3142 at 512); on a CPU 512 keeps the step's scratch small at
// no cost in speed.
int64_t default_prefill_chunk(const std::string& device);

// Appends `tokens` to `sequence` in steps of at most `chunk` tokens
// (matrix-matrix prompt processing) and returns the logits of the last one.
std::vector<float> prefill(Engine& engine, int32_t sequence, std::span<const int32_t> tokens, int64_t chunk);
// The same, where the last chunk's step returns `logits` of its last token
// and, with `sample`, the next token chosen on the backend.
SequenceResult prefill(Engine& engine, int32_t sequence, std::span<const int32_t> tokens, int64_t chunk,
                       LogitsWanted logits, const std::optional<SamplingRequest>& sample);

// Called with each new token; returning false stops generation ("stopped").
using TokenCallback = std::function<bool(int32_t token)>;

GenerationResult generate(Engine& engine, const GenerationRequest& request, const TokenCallback& on_token = {});

}  // namespace glm
