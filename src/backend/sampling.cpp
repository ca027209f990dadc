// The reference sampler: rank the candidates, then apply transformers'
// warpers — TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
// (drops the tokens whose ascending cumulative probability is <= 1 - top_p,
// keeping at least one) and MinPLogitsWarper (drops tokens below min_p times
// the top probability) — with the integer masses and weights of
// backend/sampling_rule.h.
//
// Ranking all 151552 tokens costs ~20 ms a token, and a draw lands among the
// best few hundred unless the distribution is flat. So only a prefix of the
// order is ranked, grown (x4) until it holds the answer; std::partial_sort
// gives a prefix exactly the order a full sort would, so the token is the
// same. The warpers read as conditions on the ranked prefix:
//   top-p: walking from the worst token up and dropping while the mass walked
//     is <= total - kept mass drops exactly the tokens whose mass ranked
//     before them is >= the kept mass (the best always stays): the kept
//     tokens are the prefix up to the first rank where that mass is reached;
//   the draw: the first ranked token whose cumulative mass exceeds the target.
// Totals over the candidates are sums in any order.
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

int32_t sample_token(std::span<const float> logits, const SamplingRequest& request) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const SamplingRule rule = make_sampling_rule(request, vocab);
  if (rule.greedy) return argmax(logits);

  // Per-thread buffers that keep their capacity: sampling a token allocates
  // nothing once they have grown to the vocabulary.
  thread_local std::vector<int32_t> order;  // candidates, order[0, ranked) in rank order
  thread_local std::vector<uint64_t> mass;  // mass[i]: order[i]'s, for i < ranked

  // Rank order: logit descending, lower id first on ties (the order of a
  // stable sort; with the id as tie-break the order is total, so in-place
  // partial sorts give it without a stable sort's temporary buffer).
  const auto ranks_before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  order.resize(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  int64_t candidates = vocab;  // order[0, candidates): the tokens top-k keeps (all without it)
  int64_t ranked = 0;
  if (rule.top_k > 0) {
    // top-k: keep the k best and every token tied with the k-th (the
    // reference's `logits < kth value` test). Only they can be drawn, so only
    // they are ranked.
    const auto kth_end = order.begin() + rule.top_k;
    std::partial_sort(order.begin(), kth_end, order.end(), ranks_before);
    const float kth = logits[*(kth_end - 1)];
    const auto ties_end = std::partition(kth_end, order.end(), [&](int32_t id) { return logits[id] == kth; });
    std::sort(kth_end, ties_end);  // equal logits: ascending id
    candidates = ties_end - order.begin();
    ranked = candidates;
  }
  // Ranks the best n candidates (all when n reaches their count); the ones
  // ranked already stay where they are.
  const auto rank_up_to = [&](int64_t n) {
    n = std::min(n, candidates);
    if (n <= ranked) return;
    std::partial_sort(order.begin() + ranked, order.begin() + n, order.begin() + candidates, ranks_before);
    ranked = n;
  };
  rank_up_to(1024);
  const float best = logits[order[0]];
  // Temperature: the softmax numerators of the candidates, as integer masses.
  const auto mass_of = [&](int32_t id) { return sampling_mass(logits[id], best, rule.inverse_temperature); };
  const auto masses_up_to = [&](int64_t n) {  // rank the best n and fill their masses
    rank_up_to(n);
    for (int64_t i = static_cast<int64_t>(mass.size()); i < ranked; ++i) mass.push_back(mass_of(order[i]));
  };
  mass.clear();
  masses_up_to(ranked);

  int64_t drawable = candidates;  // order[0, drawable): the tokens top-p keeps
  if (rule.top_p_on) {
    uint64_t total = 0;
    for (int64_t i = 0; i < candidates; ++i) total += mass_of(order[i]);
    const uint64_t kept_mass = top_p_kept_mass(total, rule);
    // The first rank (after the best) where the mass ranked before it reaches
    // the kept mass; it always comes, since all the candidates' mass does.
    uint64_t before = mass[0];
    int64_t rank = 1;
    for (;; ++rank) {
      if (rank == candidates || before >= kept_mass) break;
      if (rank == ranked) masses_up_to(4 * ranked);
      before += mass[rank];
    }
    drawable = rank;  // (all ranked: mass[rank - 1] was read)
  }
  // min-p: weights are relative to the best token already: w < min_p drops.
  // A dropped token keeps its place in the order with no mass.
  const auto drawn_mass = [&](int64_t i) {
    if (i > 0 && rule.min_p > 0.0f &&
        sampling_weight(logits[order[i]], best, rule.inverse_temperature) < rule.min_p)
      return uint64_t{0};
    return mass[i];
  };
  uint64_t total = 0;
  if (drawable <= ranked) {
    for (int64_t i = 0; i < drawable; ++i) total += drawn_mass(i);
  } else {  // no top-p: every candidate, in any order (the best is order[0])
    total = mass[0];
    for (int64_t i = 1; i < candidates; ++i) {
      const int32_t id = order[i];
      if (rule.min_p > 0.0f && sampling_weight(logits[id], best, rule.inverse_temperature) < rule.min_p) continue;
      total += mass_of(id);
    }
  }
  const uint64_t target = draw_target(rule, total);
  uint64_t cumulative = 0;
  for (int64_t i = 0; i < drawable; ++i) {
    if (i == ranked) masses_up_to(4 * ranked);
    cumulative += drawn_mass(i);
    if (cumulative > target) return order[i];
  }
  return order[0];  // unreachable: the best token's mass alone is 2^44 and target < total
}

void check_sampling_request(const SamplingRequest& request, int64_t vocab) { make_sampling_rule(request, vocab); }

}  // namespace glm
