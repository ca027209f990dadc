// Sliding-window perplexity; log-probabilities from a max-shifted log-sum-exp
// in double precision.
#include "engine/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace glm {

PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& tokens, int64_t context, int64_t stride) {
  GLM_CHECK(tokens.size() >= 2, "perplexity needs at least 2 tokens, the text has ", tokens.size());
  GLM_CHECK(context >= 2, "--context must be at least 2");
  GLM_CHECK(stride >= 1 && stride <= context, "--stride must be between 1 and --context");
  const auto start = std::chrono::steady_clock::now();
  const int64_t total = static_cast<int64_t>(tokens.size()), vocab = engine.config().vocab_size;
  PerplexityResult result;
  int64_t previous_end = 0;
  for (int64_t begin = 0; begin < total; begin += stride) {
    const int64_t end = std::min(begin + context, total);
    // Targets are the tokens in [max(previous_end, begin + 1), end).
    const int64_t first_target = std::max(previous_end, begin + 1);
    const int32_t sequence = engine.cache().create_sequence();
    auto results = engine.step({SequenceWork{sequence, {tokens.begin() + begin, tokens.begin() + end},
                                             LogitsWanted::All}});
    engine.cache().release_sequence(sequence);
    result.processed_tokens += end - begin;
    const std::vector<float>& logits = results[0].logits;
    for (int64_t target = first_target; target < end; ++target) {
      const float* row = logits.data() + (target - 1 - begin) * vocab;  // predicts `target`
      const float max_logit = *std::max_element(row, row + vocab);
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max_logit);
      result.total_nll -= static_cast<double>(row[tokens[target]]) - max_logit - std::log(sum);
      ++result.scored_tokens;
    }
    previous_end = end;
    if (end == total) break;
  }
  result.perplexity = std::exp(result.total_nll / static_cast<double>(result.scored_tokens));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace glm
