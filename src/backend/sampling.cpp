// The reference sampler: sort the candidates, then apply transformers'
// warpers literally — TemperatureLogitsWarper, TopKLogitsWarper,
// TopPLogitsWarper (drops the tokens whose ascending cumulative probability is
// <= 1 - top_p, keeping at least one) and MinPLogitsWarper (drops tokens below
// min_p times the top probability) — with the integer masses and weights of
// backend/sampling_rule.h. Without top-k the whole vocabulary is sorted, by a
// radix sort on the logits' order keys (rank_by_logit).
// Compiled with -ffp-contract=off (see sampling_rule.h).
#include "backend/sampling.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "backend/sampling_rule.h"
#include "core/error.h"

namespace glm {

int32_t argmax(std::span<const float> logits) {
  GLM_CHECK(!logits.empty(), "argmax of empty logits");
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

namespace {

// order = the token ids by logit descending, equal logits in ascending id:
// a stable least-significant-digit radix sort of the ids on their logits'
// order keys (sampling_rule.h), 8 bits a pass. 151552 tokens take ~1 ms,
// where std::sort with a comparator reading the logits took ~17 ms; a pass
// whose digit is the same for every token is skipped.
void rank_by_logit(std::span<const float> logits, std::vector<int32_t>& order) {
  thread_local std::vector<uint32_t> keys, sorted_keys;
  thread_local std::vector<int32_t> sorted_ids;
  const size_t count = logits.size();
  keys.resize(count);
  sorted_keys.resize(count);
  sorted_ids.resize(count);
  order.resize(count);
  for (size_t i = 0; i < count; ++i) keys[i] = ~order_key(logits[i]);  // ascending: the best logit first
  std::iota(order.begin(), order.end(), 0);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t start[257] = {};
    for (const uint32_t key : keys) ++start[((key >> shift) & 0xffu) + 1];
    if (std::find(start + 1, start + 257, count) != start + 257) continue;  // one digit for all
    for (int digit = 0; digit < 256; ++digit) start[digit + 1] += start[digit];
    for (size_t i = 0; i < count; ++i) {  // in the current order: stable
      const size_t slot = start[(keys[i] >> shift) & 0xffu]++;
      sorted_keys[slot] = keys[i];
      sorted_ids[slot] = order[i];
    }
    keys.swap(sorted_keys);
    order.swap(sorted_ids);
  }
}

}  // namespace

int32_t sample_token(std::span<const float> logits, const SamplingRequest& request) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const SamplingRule rule = make_sampling_rule(request, vocab);
  if (rule.greedy) return argmax(logits);

  // Per-thread buffers that keep their capacity: sampling a token allocates
  // nothing once they have grown to the vocabulary.
  thread_local std::vector<int32_t> order;
  thread_local std::vector<uint64_t> mass;

  // Candidates sorted by logit, best first, lower id first on ties (the
  // order of a stable sort; the tie rule makes the in-place sorts below give
  // it without a stable sort's temporary buffer).
  const auto ranks_before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t kept = vocab;
  if (rule.top_k > 0) {
    order.resize(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    // top-k: keep the k best and every token tied with the k-th (the
    // reference's `logits < kth value` test). Only they can be drawn, so only
    // they are ordered.
    const auto kth_end = order.begin() + rule.top_k;
    std::partial_sort(order.begin(), kth_end, order.end(), ranks_before);
    const float kth = logits[*(kth_end - 1)];
    const auto ties_end = std::partition(kth_end, order.end(), [&](int32_t id) { return logits[id] == kth; });
    std::sort(kth_end, ties_end);  // equal logits: ascending id
    kept = ties_end - order.begin();
  } else {
    rank_by_logit(logits, order);
  }

  // Temperature: the softmax numerators of the candidates, as integer masses.
  const float best = logits[order[0]];
  mass.resize(static_cast<size_t>(kept));
  for (int64_t i = 0; i < kept; ++i) mass[i] = sampling_mass(logits[order[i]], best, rule.inverse_temperature);

  if (rule.top_p_on) {
    // Ascending cumulative mass from the worst token; drop while <= the limit.
    const uint64_t total = std::accumulate(mass.begin(), mass.begin() + kept, uint64_t{0});
    const uint64_t limit = total - top_p_kept_mass(total, rule);
    uint64_t cumulative = 0;
    int64_t dropped = 0;
    for (int64_t i = kept - 1; i > 0; --i) {
      cumulative += mass[i];
      if (cumulative <= limit) ++dropped;
      else break;
    }
    kept -= dropped;
  }
  if (rule.min_p > 0.0f) {
    // Weights are relative to the best token already: w < min_p drops. A
    // dropped token keeps its place in the order with no mass.
    for (int64_t i = 1; i < kept; ++i)
      if (sampling_weight(logits[order[i]], best, rule.inverse_temperature) < rule.min_p) mass[i] = 0;
  }

  const uint64_t total = std::accumulate(mass.begin(), mass.begin() + kept, uint64_t{0});
  const uint64_t target = draw_target(rule, total);
  uint64_t cumulative = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cumulative += mass[i];
    if (cumulative > target) return order[i];
  }
  return order[0];  // unreachable: the best token's mass alone is 2^44 and target < total
}

void check_sampling_request(const SamplingRequest& request, int64_t vocab) { make_sampling_rule(request, vocab); }

}  // namespace glm
