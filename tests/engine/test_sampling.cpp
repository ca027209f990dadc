// Token choice: greedy, the transformers-ordered warpers (temperature, top-k,
// top-p, min-p) and the counter-based random draw.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "engine/sampling.h"

namespace glm {
namespace {

TEST(Sampling, GreedyIsArgmaxWithFirstIndexOnTies) {
  const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  SamplingParams greedy;
  greedy.temperature = 0.0;
  EXPECT_EQ(sample_token(logits, greedy, 0, 0), 1);
}

TEST(Sampling, CounterRandomIsAPureFunction) {
  EXPECT_EQ(counter_uniform(1, 2, 3), counter_uniform(1, 2, 3));
  EXPECT_NE(counter_uniform(1, 2, 3), counter_uniform(1, 2, 4));
  EXPECT_NE(counter_uniform(1, 2, 3), counter_uniform(2, 2, 3));
  double mean = 0.0;
  for (int step = 0; step < 10000; ++step) {
    const double u = counter_uniform(7, 0, step);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    mean += u / 10000;
  }
  EXPECT_NEAR(mean, 0.5, 0.02);
}

std::map<int32_t, double> frequencies(const std::vector<float>& logits, const SamplingParams& params, int draws) {
  std::map<int32_t, double> counts;
  for (int step = 0; step < draws; ++step) counts[sample_token(logits, params, 0, step)] += 1.0 / draws;
  return counts;
}

TEST(Sampling, TemperatureOneFollowsSoftmax) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams params;
  params.temperature = 1.0;
  const auto counts = frequencies(logits, params, 20000);
  EXPECT_NEAR(counts.at(0), 0.5, 0.02);
  EXPECT_NEAR(counts.at(1), 0.3, 0.02);
  EXPECT_NEAR(counts.at(2), 0.2, 0.02);
}

TEST(Sampling, TopKKeepsTheKBest) {
  const std::vector<float> logits = {1.0f, 4.0f, 3.0f, 2.0f};
  SamplingParams params;
  params.temperature = 1.0;
  params.top_k = 2;
  std::set<int32_t> seen;
  for (int step = 0; step < 2000; ++step) seen.insert(sample_token(logits, params, 0, step));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2}));
}

// Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps {0, 1} (the tail 0.2 <= 1 - 0.8 is dropped).
TEST(Sampling, TopPDropsTheTailBelowOneMinusP) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams params;
  params.temperature = 1.0;
  params.top_p = 0.8;
  const auto counts = frequencies(logits, params, 5000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts.at(0), 0.5 / 0.8, 0.03);
}

// min_p 0.4 with top probability 0.5 drops everything below 0.2.
TEST(Sampling, MinPDropsTokensBelowAFractionOfTheBest) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams params;
  params.temperature = 1.0;
  params.min_p = 0.4;
  std::set<int32_t> seen;
  for (int step = 0; step < 3000; ++step) seen.insert(sample_token(logits, params, 0, step));
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
}

TEST(Sampling, LowTemperatureSharpens) {
  const std::vector<float> logits = {1.0f, 0.0f};
  SamplingParams params;
  params.temperature = 0.05;
  const auto counts = frequencies(logits, params, 2000);
  EXPECT_GT(counts.at(0), 0.99);
}

TEST(Sampling, DefaultsFollowGenerationConfig) {
  GenerationDefaults generation;
  EXPECT_TRUE(sampling_defaults(generation).greedy());  // do_sample absent: greedy, as transformers
  generation.do_sample = true;
  generation.temperature = 0.6;
  generation.top_p = 0.95;
  const SamplingParams params = sampling_defaults(generation);
  EXPECT_DOUBLE_EQ(params.temperature, 0.6);
  EXPECT_EQ(params.top_k, 50);
  EXPECT_DOUBLE_EQ(params.top_p, 0.95);
}

}  // namespace
}  // namespace glm
