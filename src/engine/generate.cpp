// The single-sequence generation loop.
#include "engine/generate.h"

#include <algorithm>
#include <chrono>

namespace glm {

int64_t default_prefill_chunk(const std::string& device) { return device.rfind("cuda", 0) == 0 ? 4096 : 512; }

SequenceResult prefill(Engine& engine, int32_t sequence, std::span<const int32_t> tokens, int64_t chunk,
                       LogitsWanted logits, const std::optional<SamplingRequest>& sample) {
  GLM_CHECK(!tokens.empty(), "prefill needs at least one token");
  chunk = std::max<int64_t>(1, chunk);
  SequenceResult last;
  for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(chunk)) {
    const size_t end = std::min(tokens.size(), begin + static_cast<size_t>(chunk));
    const bool final_chunk = end == tokens.size();
    SequenceWork work{sequence, {tokens.begin() + begin, tokens.begin() + end},
                      final_chunk ? logits : LogitsWanted::None, final_chunk ? sample : std::nullopt};
    last = std::move(engine.step({work})[0]);
  }
  return last;
}

std::vector<float> prefill(Engine& engine, int32_t sequence, std::span<const int32_t> tokens, int64_t chunk) {
  return std::move(prefill(engine, sequence, tokens, chunk, LogitsWanted::Last, std::nullopt).logits);
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

  // Every token is chosen on the backend from the step that computed its
  // logits: only its id comes back.
  SamplingRequest sampling{request.sampling, request.random_stream, 0};
  auto start = Clock::now();
  int32_t token = prefill(engine, sequence, request.prompt, request.prefill_chunk, LogitsWanted::None, sampling).token;
  result.prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  start = Clock::now();
  // The decode loop reuses one plan and one result list, and the token list
  // has room for every token it may get: nothing is allocated per step.
  std::vector<SequenceWork> plan{SequenceWork{sequence, {0}, LogitsWanted::None, sampling}};
  std::vector<SequenceResult> results;
  result.tokens.reserve(static_cast<size_t>(
      std::min<int64_t>(request.max_tokens, cache.shape().n_blocks * cache.shape().block_size)));
  for (int64_t step = 0; step < request.max_tokens; ++step) {
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
    plan[0].sample->step = static_cast<uint64_t>(step + 1);
    engine.step(plan, results);
    token = results[0].token;
  }
  result.generation_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace glm
