// A check shared by the CPU and CUDA test programs: on a given engine, steps
// that sample on the backend choose the tokens that host sampling of the
// same rows' returned logits chooses. A plan mixes a sampled row whose
// logits also come back, a sampled row whose logits do not, and a row that
// only returns logits (so the sampled rows are gathered out of the logits),
// then decode steps where only ids come back. The same sequences run twice,
// once sampling and once returning logits, in identical plans: their logits
// are the same bits.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "engine/engine.h"

namespace glm::testing_fixtures {

inline SamplingRequest sampling_request(double temperature, int64_t top_k, double top_p, double min_p, uint64_t seed,
                                        uint64_t stream, uint64_t step) {
  return SamplingRequest{SamplingParams{temperature, top_k, top_p, min_p, seed}, stream, step};
}

inline void expect_step_sampling_matches_host(Engine& engine, const std::vector<std::vector<int32_t>>& prompts) {
  ASSERT_EQ(prompts.size(), 3u);
  PagedKvCache& cache = engine.cache();
  const SamplingRequest sampled = sampling_request(0.9, 40, 0.95, 0.0, 1, 0, 0);
  const SamplingRequest flat = sampling_request(1.5, 0, 1.0, 0.01, 2, 1, 0);
  int32_t a[3], b[3];
  for (int i = 0; i < 3; ++i) a[i] = cache.create_sequence(), b[i] = cache.create_sequence();
  const auto on_backend = engine.step({SequenceWork{a[0], prompts[0], LogitsWanted::Last, sampled},
                                       SequenceWork{a[1], prompts[1], LogitsWanted::None, flat},
                                       SequenceWork{a[2], prompts[2], LogitsWanted::All}});
  const auto logits = engine.step({SequenceWork{b[0], prompts[0], LogitsWanted::Last},
                                   SequenceWork{b[1], prompts[1], LogitsWanted::Last},
                                   SequenceWork{b[2], prompts[2], LogitsWanted::All}});
  EXPECT_EQ(on_backend[0].token, sample_token(logits[0].logits, sampled));
  EXPECT_EQ(on_backend[0].logits, logits[0].logits);
  EXPECT_EQ(on_backend[1].token, sample_token(logits[1].logits, flat));
  EXPECT_EQ(on_backend[1].rows, 0);
  EXPECT_TRUE(on_backend[1].logits.empty());
  EXPECT_EQ(on_backend[2].token, -1);
  EXPECT_EQ(on_backend[2].logits, logits[2].logits);

  int32_t next[2] = {on_backend[0].token, on_backend[1].token};
  for (uint64_t step = 1; step < 6; ++step) {
    const SamplingRequest one = sampling_request(0.7, 0, 0.8, 0.0, 3, 0, step);
    const SamplingRequest two = sampling_request(0.0, 0, 1.0, 0.0, 0, 1, step);
    const auto ids = engine.step({SequenceWork{a[0], {next[0]}, LogitsWanted::None, one},
                                  SequenceWork{a[1], {next[1]}, LogitsWanted::None, two}});
    const auto rows = engine.step({SequenceWork{b[0], {next[0]}, LogitsWanted::Last},
                                   SequenceWork{b[1], {next[1]}, LogitsWanted::Last}});
    EXPECT_EQ(ids[0].token, sample_token(rows[0].logits, one)) << "step " << step;
    EXPECT_EQ(ids[1].token, argmax(rows[1].logits)) << "step " << step;
    EXPECT_TRUE(ids[0].logits.empty() && ids[1].logits.empty());
    next[0] = ids[0].token, next[1] = ids[1].token;
  }
  for (int i = 0; i < 3; ++i) cache.release_sequence(a[i]), cache.release_sequence(b[i]);
}

}  // namespace glm::testing_fixtures
