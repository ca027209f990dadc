// End-to-end checks against the recorded references of tests/fixtures/ (made
// by tools/make_fixtures.py from transformers' Glm4MoeForCausalLM and mlx-lm):
// logits at every prompt position, greedy continuations, KV-cache decoding vs
// full recompute, a ragged mixed batch vs each sequence alone, and a 2-way
// tensor-parallel split vs the unsharded model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/engine.h"
#include "engine/generate.h"
#include "io/npy.h"
#include "../common/reference_fixtures.h"

namespace glm {
namespace {

namespace fs = std::filesystem;

using namespace testing_fixtures;


EngineOptions options_with_context(int64_t tokens) {
  EngineOptions options;
  options.max_context = tokens;
  options.block_size = 4;  // small blocks so every test crosses block boundaries
  return options;
}

class Reference : public ::testing::TestWithParam<std::string> {};

TEST_P(Reference, LogitsMatchTransformersAndMlx) {
  const nlohmann::json meta = load_meta(GetParam());
  Engine engine(case_dir(GetParam()).string(), options_with_context(512));
  for (size_t p = 0; p < meta["prompts"].size(); ++p) {
    const auto& prompt = meta["prompts"][p];
    const std::vector<int32_t> ids = ids_of(prompt);
    const std::vector<float> logits = all_logits(engine, ids);
    const NpyArray expected =
        read_npy((case_dir(GetParam()) / "reference" / prompt["transformers_logits"].get<std::string>()).string());
    ASSERT_EQ(expected.shape, (Shape{static_cast<int64_t>(ids.size()), engine.config().vocab_size}));
    EXPECT_LT(relative_l2(logits, expected.values), 1e-4) << "prompt " << p << " vs transformers";

    if (!prompt["mlx_logits"].is_string()) continue;
    const NpyArray mlx =
        read_npy((case_dir(GetParam()) / "reference" / prompt["mlx_logits"].get<std::string>()).string());
    const bool rules_disagree = !prompt["mask_rule_disagreements"].empty();
    if (rules_disagree) {
      // mlx-lm masks pruned groups with 0 and picks other experts here; we follow -inf.
      EXPECT_GT(relative_l2(logits, mlx.values), 1e-3) << "prompt " << p << " should differ from mlx-lm";
    } else {
      EXPECT_LT(relative_l2(logits, mlx.values), 1e-4) << "prompt " << p << " vs mlx-lm";
    }
  }
}

TEST_P(Reference, GreedyTokensMatchTransformers) {
  const nlohmann::json meta = load_meta(GetParam());
  Engine engine(case_dir(GetParam()).string(), options_with_context(512));
  for (const auto& prompt : meta["prompts"]) {
    GenerationRequest request;
    request.prompt = ids_of(prompt);
    request.max_tokens = static_cast<int64_t>(prompt["greedy_ids"].size());
    request.sampling.temperature = 0.0;
    request.ignore_eos = true;
    request.prefill_chunk = 7;  // several chunks: the result must not depend on chunking
    const GenerationResult result = generate(engine, request);
    EXPECT_EQ(result.tokens, prompt["greedy_ids"].get<std::vector<int32_t>>());
  }
}

// Decoding token by token through the cache equals recomputing everything.
TEST_P(Reference, CachedDecodingEqualsFullRecompute) {
  const nlohmann::json meta = load_meta(GetParam());
  Engine engine(case_dir(GetParam()).string(), options_with_context(512));
  const std::vector<int32_t> ids = ids_of(meta["prompts"].back());
  const int64_t vocab = engine.config().vocab_size;
  const std::vector<float> full = all_logits(engine, ids);

  const int32_t sequence = engine.cache().create_sequence();
  const size_t prefix = ids.size() / 2;
  engine.step({SequenceWork{sequence, {ids.begin(), ids.begin() + prefix}, LogitsWanted::None}});
  for (size_t t = prefix; t < ids.size(); ++t) {
    auto results = engine.step({SequenceWork{sequence, {ids[t]}, LogitsWanted::Last}});
    std::span<const float> expected(full.data() + t * vocab, vocab);
    EXPECT_LT(relative_l2(results[0].logits, expected), 1e-5) << "position " << t;
    EXPECT_EQ(std::max_element(results[0].logits.begin(), results[0].logits.end()) - results[0].logits.begin(),
              std::max_element(expected.begin(), expected.end()) - expected.begin());
  }
}

// One step mixing a prompt chunk, a decode token and a mid-sequence chunk of
// three sequences gives each the logits it gets alone.
TEST_P(Reference, RaggedBatchEqualsSequencesAlone) {
  const nlohmann::json meta = load_meta(GetParam());
  Engine engine(case_dir(GetParam()).string(), options_with_context(1024));
  const std::vector<int32_t> a = ids_of(meta["prompts"][1]);
  const std::vector<int32_t> b = ids_of(meta["prompts"][2]);
  const std::vector<int32_t> c(b.rbegin(), b.rbegin() + 12);

  // Alone: A whole; B's first 20 tokens then its 21st; C's first 5 then 7 more.
  PagedKvCache& cache = engine.cache();
  const int32_t a_alone = cache.create_sequence(), b_alone = cache.create_sequence(),
                c_alone = cache.create_sequence();
  auto a_expected = engine.step({SequenceWork{a_alone, a, LogitsWanted::All}})[0].logits;
  engine.step({SequenceWork{b_alone, {b.begin(), b.begin() + 20}, LogitsWanted::None}});
  auto b_expected = engine.step({SequenceWork{b_alone, {b[20]}, LogitsWanted::Last}})[0].logits;
  engine.step({SequenceWork{c_alone, {c.begin(), c.begin() + 5}, LogitsWanted::None}});
  auto c_expected = engine.step({SequenceWork{c_alone, {c.begin() + 5, c.end()}, LogitsWanted::All}})[0].logits;

  const int32_t a_mixed = cache.create_sequence(), b_mixed = cache.create_sequence(),
                c_mixed = cache.create_sequence();
  engine.step({SequenceWork{b_mixed, {b.begin(), b.begin() + 20}, LogitsWanted::None},
               SequenceWork{c_mixed, {c.begin(), c.begin() + 5}, LogitsWanted::None}});
  auto mixed = engine.step({SequenceWork{b_mixed, {b[20]}, LogitsWanted::Last},
                            SequenceWork{a_mixed, a, LogitsWanted::All},
                            SequenceWork{c_mixed, {c.begin() + 5, c.end()}, LogitsWanted::All}});
  ASSERT_EQ(mixed.size(), 3u);
  EXPECT_EQ(mixed[0].sequence, b_mixed);
  for (auto [actual, expected] : {std::pair{&mixed[1].logits, &a_expected}, std::pair{&mixed[0].logits, &b_expected},
                                  std::pair{&mixed[2].logits, &c_expected}}) {
    ASSERT_EQ(actual->size(), expected->size());
    for (size_t i = 0; i < expected->size(); ++i) ASSERT_NEAR((*actual)[i], (*expected)[i], 1e-6) << "index " << i;
  }
}

// Two ranks, each holding half the heads, half the MLP width and half the
// experts, joined by the all-reduce op, equal the unsharded model.
TEST_P(Reference, TwoWayTensorParallelEqualsUnsharded) {
  const nlohmann::json meta = load_meta(GetParam());
  const std::string dir = case_dir(GetParam()).string();
  const Glm4MoeConfig config = load_config(dir);
  if (config.num_key_value_heads % 2 != 0) GTEST_SKIP() << "KV heads not divisible by 2";
  const std::vector<int32_t> ids = ids_of(meta["prompts"][1]);
  Engine whole(dir, options_with_context(64));
  const std::vector<float> expected = all_logits(whole, ids);

  const auto logits = two_rank_logits(dir, options_with_context(64), ids);
  for (int rank = 0; rank < 2; ++rank)
    EXPECT_LT(relative_l2(logits[rank], expected), 1e-5) << "rank " << rank;
  EXPECT_EQ(logits[0], logits[1]);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Reference, ::testing::ValuesIn(fixture_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace glm
