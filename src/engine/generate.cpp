// The single-sequence generation loop.
#include "engine/generate.h"

#include <algorithm>
#include <chrono>

namespace glm {

std::vector<float> prefill(Engine& engine, int32_t sequence, std::span<const int32_t> tokens, int64_t chunk) {
  GLM_CHECK(!tokens.empty(), "prefill needs at least one token");
  chunk = std::max<int64_t>(1, chunk);
  std::vector<float> logits;
  for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(chunk)) {
    const size_t end = std::min(tokens.size(), begin + static_cast<size_t>(chunk));
    SequenceWork work{sequence, {tokens.begin() + begin, tokens.begin() + end},
                      end == tokens.size() ? LogitsWanted::Last : LogitsWanted::None};
    logits = std::move(engine.step({work})[0].logits);
  }
  return logits;
}

GenerationResult generate(Engine& engine, const GenerationRequest& request, const TokenCallback& on_token) {
  GLM_CHECK(!request.prompt.empty(), "the prompt is empty: give at least one token");
  GLM_CHECK(request.max_tokens >= 0, "max tokens must not be negative");
  using Clock = std::chrono::steady_clock;
  PagedKvCache& cache = engine.cache();
  const int32_t sequence = cache.create_sequence();
  struct Release {
    PagedKvCache& cache;
    int32_t sequence;
    ~Release() { cache.release_sequence(sequence); }
  } release{cache, sequence};

  GenerationResult result;
  result.finish_reason = "length";
  if (request.max_tokens == 0) return result;

  auto start = Clock::now();
  std::vector<float> logits = prefill(engine, sequence, request.prompt, request.prefill_chunk);
  result.prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  start = Clock::now();
  // The decode loop reuses one plan, one result list and two logits buffers
  // (swapped each step), and the token list has room for every token it may
  // get: nothing is allocated per step.
  std::vector<SequenceWork> plan{SequenceWork{sequence, {0}, LogitsWanted::Last}};
  std::vector<SequenceResult> results;
  result.tokens.reserve(static_cast<size_t>(
      std::min<int64_t>(request.max_tokens, cache.shape().n_blocks * cache.shape().block_size)));
  for (int64_t step = 0; step < request.max_tokens; ++step) {
    const int32_t token = sample_token(logits, request.sampling, request.random_stream,
                                       static_cast<uint64_t>(step));
    result.tokens.push_back(token);
    if (on_token && !on_token(token)) {
      result.finish_reason = "stopped";
      break;
    }
    if (!request.ignore_eos &&
        std::find(request.eos_token_ids.begin(), request.eos_token_ids.end(), token) != request.eos_token_ids.end()) {
      result.finish_reason = "eos";
      break;
    }
    if (step + 1 == request.max_tokens) break;
    plan[0].tokens[0] = token;
    engine.step(plan, results);
    logits.swap(results[0].logits);
  }
  result.generation_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace glm
