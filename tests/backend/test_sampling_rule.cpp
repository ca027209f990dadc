// The sampling rule of backend/sampling_rule.h and its reference
// (backend/sampling.cpp): the counter RNG's pinned bits, the exp every backend
// computes alike, the reference against a literal mask-by-mask reading of the
// rule (the "mass ranked before" form the CUDA kernel uses) and against the
// warpers over a comparison sort (the reference radix-sorts), the tie and
// boundary semantics, and the CPU backend's sample op.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "backend/backend.h"
#include "backend/sampling_rule.h"
#include "../common/random_values.h"

namespace glm {
namespace {

TEST(SamplingRule, SplitMixAndCounterBitsArePinned) {
  // SplitMix64's published outputs for state 0 (its first two draws).
  EXPECT_EQ(splitmix64(0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(splitmix64(0x9e3779b97f4a7c15ull), 0x6e789e6aa1b965f4ull);
  const uint64_t bits = splitmix64(splitmix64(splitmix64(7) ^ 3) ^ 11);
  EXPECT_EQ(counter_uniform(7, 3, 11), static_cast<double>(bits >> 11) / 9007199254740992.0);
}

TEST(SamplingRule, ExpIsAccurateAndExactAtZero) {
  EXPECT_EQ(exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(exp_nonpositive(-INFINITY), 0.0f);
  EXPECT_EQ(exp_nonpositive(-40.0f), 0.0f);
  double worst = 0.0;
  for (float y = -31.9f; y <= 0.0f; y += 0.0137f) {
    const double exact = std::exp(static_cast<double>(y));
    worst = std::max(worst, std::abs(exp_nonpositive(y) - exact) / exact);
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(sampling_mass(2.5f, 2.5f, 123.0f), uint64_t{1} << 44);  // the best token, any temperature
}

TEST(SamplingRule, OrderKeysFollowTheLogits) {
  const std::vector<float> values = {-INFINITY, -1e30f, -2.0f, -1e-30f, 0.0f, 1e-30f, 0.5f, 3.0f, 1e30f, INFINITY};
  for (size_t i = 0; i + 1 < values.size(); ++i) EXPECT_LT(order_key(values[i]), order_key(values[i + 1]));
  EXPECT_EQ(order_key(-0.0f), order_key(0.0f));
  for (float value : values) EXPECT_EQ(key_value(order_key(value)), value);
}

// Token ids by logit descending, equal logits in id order.
std::vector<int32_t> stable_order(const std::vector<float>& x) {
  std::vector<int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  return order;
}

// The rule read literally, one mask per warper, in the form the GPU kernel
// relies on: top-p keeps a token when the mass ranked before it is below the
// kept mass, rather than walking the ascending cumulative sum.
int32_t literal_rule(const std::vector<float>& x, const SamplingRequest& request) {
  const int64_t vocab = static_cast<int64_t>(x.size());
  const SamplingRule rule = make_sampling_rule(request, vocab);
  const std::vector<int32_t> order = stable_order(x);
  if (rule.greedy) return order[0];
  const float best = x[order[0]];
  std::vector<bool> keep(x.size(), true);
  if (rule.top_k > 0)
    for (int64_t i = 0; i < vocab; ++i) keep[i] = x[i] >= x[order[rule.top_k - 1]];
  std::vector<uint64_t> mass(x.size());
  for (int64_t i = 0; i < vocab; ++i) mass[i] = sampling_mass(x[i], best, rule.inverse_temperature);
  if (rule.top_p_on) {
    uint64_t total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += keep[i] ? mass[i] : 0;
    const uint64_t kept_mass = top_p_kept_mass(total, rule);
    uint64_t before = 0;
    std::vector<bool> after_top_p = keep;
    for (size_t rank = 0; rank < order.size(); ++rank) {
      const int32_t id = order[rank];
      if (!keep[id]) continue;
      if (rank > 0 && before >= kept_mass) after_top_p[id] = false;
      before += mass[id];
    }
    keep = after_top_p;
  }
  for (int64_t i = 0; i < vocab; ++i)
    if (rule.min_p > 0.0f && sampling_weight(x[i], best, rule.inverse_temperature) < rule.min_p) keep[i] = false;
  uint64_t total = 0;
  for (int64_t i = 0; i < vocab; ++i) total += keep[i] ? mass[i] : 0;
  const uint64_t target = draw_target(rule, total);
  uint64_t cumulative = 0;
  for (int32_t id : order) {
    if (!keep[id]) continue;
    cumulative += mass[id];
    if (cumulative > target) return id;
  }
  ADD_FAILURE() << "no token drawn";
  return -1;
}

// transformers' warpers as they are written: sort every token, keep the
// top-k, walk the ascending cumulative mass from the worst token dropping
// while it is <= total - kept mass, zero the masses under min-p, draw.
int32_t sorted_warpers(const std::vector<float>& x, const SamplingRequest& request) {
  const int64_t vocab = static_cast<int64_t>(x.size());
  const SamplingRule rule = make_sampling_rule(request, vocab);
  const std::vector<int32_t> order = stable_order(x);
  if (rule.greedy) return order[0];
  int64_t kept = vocab;
  if (rule.top_k > 0)
    while (kept > rule.top_k && x[order[kept - 1]] < x[order[rule.top_k - 1]]) --kept;
  const float best = x[order[0]];
  std::vector<uint64_t> mass(static_cast<size_t>(kept));
  for (int64_t i = 0; i < kept; ++i) mass[i] = sampling_mass(x[order[i]], best, rule.inverse_temperature);
  if (rule.top_p_on) {
    const uint64_t total = std::accumulate(mass.begin(), mass.end(), uint64_t{0});
    const uint64_t limit = total - top_p_kept_mass(total, rule);
    uint64_t walked = 0;
    while (kept > 1 && walked + mass[kept - 1] <= limit) walked += mass[--kept];
  }
  for (int64_t i = 1; i < kept; ++i)
    if (rule.min_p > 0.0f && sampling_weight(x[order[i]], best, rule.inverse_temperature) < rule.min_p) mass[i] = 0;
  const uint64_t total = std::accumulate(mass.begin(), mass.begin() + kept, uint64_t{0});
  const uint64_t target = draw_target(rule, total);
  uint64_t cumulative = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cumulative += mass[i];
    if (cumulative > target) return order[i];
  }
  ADD_FAILURE() << "no token drawn";
  return -1;
}

// Random logits with many exact ties: values on a coarse grid.
std::vector<float> tied_logits(size_t count, unsigned seed, float step) {
  std::vector<float> x = testing_random::random_values(count, seed, 2.0f);
  for (float& value : x) value = std::round(value / step) * step;
  return x;
}

TEST(SamplingRule, ReferenceEqualsTheLiteralRule) {
  const std::vector<SamplingParams> settings = {
      {1.0, 0, 1.0, 0.0, 1},     {0.7, 5, 1.0, 0.0, 2},    {1.0, 0, 0.9, 0.0, 3},    {1.3, 0, 1.0, 0.05, 4},
      {0.8, 20, 0.9, 0.02, 5},   {1.0, 1, 1.0, 0.0, 6},    {1.0, 0, 0.0, 0.0, 7},    {1.0, 0, 1.0, 1.0, 8},
      {1e-40, 0, 1.0, 0.0, 9},   {1e30, 0, 1.0, 0.0, 10},  {5.0, 63, 0.5, 0.3, 11},  {0.0, 0, 1.0, 0.0, 12},
      {1.0, 100, 0.999, 0.0, 13}};
  int checked = 0;
  for (size_t s = 0; s < settings.size(); ++s) {
    for (unsigned trial = 0; trial < 6; ++trial) {
      const size_t vocab = trial % 3 == 0 ? 64 : 257;
      const std::vector<float> x =
          trial % 2 == 0 ? tied_logits(vocab, 100 * s + trial, 0.5f) : testing_random::random_values(vocab, 7 + trial);
      for (uint64_t step = 0; step < 40; ++step) {
        const SamplingRequest request{settings[s], trial, step};
        ASSERT_EQ(sample_token(x, request), literal_rule(x, request))
            << "setting " << s << " trial " << trial << " step " << step;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, static_cast<int>(settings.size()) * 6 * 40);
}

// Without top-k the reference sorts the vocabulary by a radix sort on the
// logits' order keys. On 20000-token rows: normal, tied on a grid (equal
// logits must stay in id order), flat (every pass skipped), masked (-inf),
// peaked.
TEST(SamplingRule, RadixRankingDrawsWhatSortingAllDraws) {
  const size_t vocab = 20000;
  const std::vector<SamplingParams> settings = {
      {1.0, 0, 1.0, 0.0, 1},   {0.6, 0, 0.95, 0.0, 2},  {1.0, 0, 0.999, 0.0, 3}, {1.5, 0, 1.0, 0.02, 4},
      {0.8, 0, 0.9, 0.05, 5},  {1.0, 0, 0.0, 0.0, 6},   {4.0, 0, 0.99, 0.0, 7},  {0.7, 3000, 0.97, 0.0, 8},
      {1e30, 0, 0.5, 0.0, 9}};
  for (int kind = 0; kind < 5; ++kind) {
    std::vector<float> x = testing_random::random_values(vocab, 40 + kind, 3.0f);
    if (kind == 1) x = tied_logits(vocab, 41, 0.25f);                   // ties everywhere
    if (kind == 2) std::fill(x.begin(), x.end(), 0.5f);                 // flat
    if (kind == 3) for (size_t i = 0; i < vocab; i += 3) x[i] = -INFINITY;  // masked
    if (kind == 4) x[777] = 40.0f, x[12345] = 39.0f;                    // peaked
    for (size_t s = 0; s < settings.size(); ++s) {
      for (uint64_t step = 0; step < 8; ++step) {
        const SamplingRequest request{settings[s], 5, step};
        const int32_t token = sample_token(x, request);
        ASSERT_EQ(token, sorted_warpers(x, request)) << "kind " << kind << " setting " << s << " step " << step;
        ASSERT_EQ(token, literal_rule(x, request)) << "kind " << kind << " setting " << s << " step " << step;
      }
    }
  }
}

std::set<int32_t> drawn(const std::vector<float>& x, const SamplingParams& params, int draws = 400) {
  std::set<int32_t> seen;
  for (int step = 0; step < draws; ++step) seen.insert(sample_token(x, SamplingRequest{params, 0, uint64_t(step)}));
  return seen;
}

TEST(SamplingRule, TiesAndBoundaries) {
  SamplingParams params;
  params.top_k = 2;  // every token tied with the 2nd stays
  EXPECT_EQ(drawn({3.0f, 2.0f, 2.0f, 2.0f, 1.0f}, params), (std::set<int32_t>{0, 1, 2, 3}));

  // Four equal tokens, top-p 0.5: from the worst (highest id) up, ids 3 and 2
  // bring the cumulative mass to exactly half and go; 1 and 0 stay.
  params = SamplingParams{};
  params.top_p = 0.5;
  EXPECT_EQ(drawn({1.0f, 1.0f, 1.0f, 1.0f}, params), (std::set<int32_t>{0, 1}));
  params.top_p = 0.0;  // only the best, the first of equals
  EXPECT_EQ(drawn({0.0f, 2.0f, 2.0f, 1.0f}, params), (std::set<int32_t>{1}));

  params = SamplingParams{};
  params.min_p = 1.0;  // only the tokens tied with the best
  EXPECT_EQ(drawn({0.0f, 2.0f, 1.9f, 2.0f}, params), (std::set<int32_t>{1, 3}));

  params = SamplingParams{};
  params.temperature = 1e-40;  // 1 / T overflows f32: a greedy draw among the best
  EXPECT_EQ(drawn({0.0f, 2.0f, 1.99999f, 2.0f}, params), (std::set<int32_t>{1, 3}));
  params.temperature = 1e30;  // flat
  EXPECT_EQ(drawn({-50.0f, 2.0f, 1.0f, 30.0f}, params), (std::set<int32_t>{0, 1, 2, 3}));

  params = SamplingParams{};  // -inf logits (masked tokens) are never drawn
  EXPECT_EQ(drawn({-INFINITY, 0.0f, -INFINITY, 0.5f}, params), (std::set<int32_t>{1, 3}));
}

TEST(SamplingRule, ParametersOutOfRangeAreRejected) {
  const std::vector<float> x = {0.0f, 1.0f};
  auto request = [](double temperature, int64_t top_k, double top_p, double min_p) {
    return SamplingRequest{SamplingParams{temperature, top_k, top_p, min_p, 0}, 0, 0};
  };
  EXPECT_THROW(sample_token(x, request(1.0, -1, 1.0, 0.0)), Error);
  EXPECT_THROW(sample_token(x, request(1.0, 0, 1.5, 0.0)), Error);
  EXPECT_THROW(sample_token(x, request(1.0, 0, 1.0, -0.1)), Error);
  EXPECT_THROW(sample_token(x, request(NAN, 0, 1.0, 0.0)), Error);
  EXPECT_THROW(sample_token(x, request(INFINITY, 0, 1.0, 0.0)), Error);
  EXPECT_EQ(sample_token(x, request(1.0, 5, 1.0, 0.0)) >= 0, true);  // top-k past the vocabulary: off
}

TEST(SamplingRule, CpuBackendSamplesEachRowByTheReference) {
  auto backend = make_cpu_backend();
  const int64_t rows = 5, vocab = 1000;
  Tensor logits = backend->scratch({rows, vocab});
  const std::vector<float> values = testing_random::random_values(static_cast<size_t>(rows * vocab), 3, 3.0f);
  std::memcpy(logits.data, values.data(), values.size() * sizeof(float));
  std::vector<SamplingRequest> requests = {
      {{0.0, 0, 1.0, 0.0, 0}, 0, 0},  {{0.9, 40, 0.95, 0.0, 1}, 4, 17}, {{1.0, 0, 0.8, 0.0, 2}, 1, 3},
      {{1.2, 0, 1.0, 0.1, 3}, 2, 9},  {{0.6, 10, 0.9, 0.05, 4}, 3, 1}};
  std::vector<int32_t> tokens(rows, -1);
  backend->sample(tokens, logits, requests);
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_EQ(tokens[r], sample_token(std::span<const float>(values.data() + r * vocab, vocab), requests[r]))
        << "row " << r;
  EXPECT_EQ(tokens[0], argmax(std::span<const float>(values.data(), vocab)));
  requests[3].params.top_p = 2.0;
  EXPECT_THROW(backend->sample(tokens, logits, requests), Error);  // on the calling thread
}

}  // namespace
}  // namespace glm
