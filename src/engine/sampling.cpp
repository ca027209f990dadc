// Greedy and sampled token choice, with transformers' warpers reproduced:
// TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (drops the
// tokens whose ascending cumulative probability is <= 1 - top_p, keeping at
// least one) and MinPLogitsWarper (drops tokens below min_p times the top
// probability).
#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace glm {

SamplingParams sampling_defaults(const GenerationDefaults& generation) {
  SamplingParams params;
  const bool do_sample = generation.do_sample.value_or(false);
  params.temperature = do_sample ? generation.temperature.value_or(1.0) : 0.0;
  params.top_k = generation.top_k.value_or(50);
  params.top_p = generation.top_p.value_or(1.0);
  params.min_p = generation.min_p.value_or(0.0);
  return params;
}

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

double counter_uniform(uint64_t seed, uint64_t sequence, uint64_t step) {
  const uint64_t bits = splitmix64(splitmix64(splitmix64(seed) ^ sequence) ^ step);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;  // 53 random bits
}

int32_t argmax(std::span<const float> logits) {
  GLM_CHECK(!logits.empty(), "argmax of empty logits");
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& params, uint64_t sequence, uint64_t step) {
  if (params.greedy()) return argmax(logits);
  const int64_t vocab = static_cast<int64_t>(logits.size());

  // Per-thread buffers that keep their capacity: sampling a token allocates
  // nothing once they have grown to the vocabulary.
  thread_local std::vector<int32_t> order;
  thread_local std::vector<double> p;

  // Candidates sorted by logit, best first, lower id first on ties (the
  // order of a stable sort; the tie rule makes the in-place sorts below give
  // it without a stable sort's temporary buffer).
  const auto ranks_before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  order.resize(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  int64_t kept = vocab;
  if (params.top_k > 0 && params.top_k < vocab) {
    // top-k: keep the k best and every token tied with the k-th (the
    // reference's `logits < kth value` test). Only they can be drawn, so only
    // they are ordered.
    const auto kth_end = order.begin() + params.top_k;
    std::partial_sort(order.begin(), kth_end, order.end(), ranks_before);
    const float kth = logits[*(kth_end - 1)];
    const auto ties_end = std::partition(kth_end, order.end(), [&](int32_t id) { return logits[id] == kth; });
    std::sort(kth_end, ties_end);  // equal logits: ascending id
    kept = ties_end - order.begin();
  } else {
    std::sort(order.begin(), order.end(), ranks_before);
  }

  const double inverse_temperature = 1.0 / params.temperature;
  // p[0, count) = softmax of the `count` best logits at the temperature.
  auto probabilities = [&](int64_t count) {
    p.resize(static_cast<size_t>(count));
    const double best = logits[order[0]] * inverse_temperature;
    double total = 0.0;
    for (int64_t i = 0; i < count; ++i) total += p[i] = std::exp(logits[order[i]] * inverse_temperature - best);
    for (double& value : p) value /= total;
  };

  if (params.top_p < 1.0) {
    probabilities(kept);
    // Ascending cumulative mass from the worst token; drop while <= 1 - top_p.
    double cumulative = 0.0;
    int64_t dropped = 0;
    for (int64_t i = kept - 1; i > 0; --i) {
      cumulative += p[i];
      if (cumulative <= 1.0 - params.top_p) ++dropped;
      else break;
    }
    kept -= dropped;
  }
  if (params.min_p > 0.0) {
    probabilities(kept);
    const double threshold = params.min_p * p[0];
    int64_t count = 1;
    while (count < kept && p[count] >= threshold) ++count;
    kept = count;
  }

  probabilities(kept);
  const double u = counter_uniform(params.seed, sequence, step);
  double cumulative = 0.0;
  for (int64_t i = 0; i < kept; ++i) {
    cumulative += p[i];
    if (u < cumulative) return order[i];
  }
  return order[kept - 1];
}

}  // namespace glm
