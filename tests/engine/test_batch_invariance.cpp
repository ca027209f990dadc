// On the CPU a token's logits are the same bits whatever else is in its step:
// one step mixing a prompt, a decode token and a mid-sequence chunk of three
// sequences of the bundled trained model, against each sequence run alone,
// compared with memcmp (the model tests allow 1e-6; the CPU ops promise the
// bits), under 1, 2 and 3 threads; and the last layer's rows cut to the logit
// rows, against every row.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>

#include "engine/engine.h"

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(BatchInvariance, RaggedBatchGivesEachSequenceItsLogitsAloneToTheBit) {
  EngineOptions options;
  options.max_context = 2048;
  Engine engine(kModel, options);
  PagedKvCache& cache = engine.cache();
  // 70 tokens cross the attention's 64-position key chunks.
  std::vector<int32_t> a(70), b(30), c(12);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>((i * 37 + 5) % 4000);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int32_t>((i * 91 + 17) % 4000);
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<int32_t>((i * 53 + 400) % 4000);

  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    // Alone: A whole; B's first 20 tokens then its 21st; C's first 5 then 7 more.
    const int32_t a_alone = cache.create_sequence(), b_alone = cache.create_sequence(),
                  c_alone = cache.create_sequence();
    const auto a_expected = engine.step({SequenceWork{a_alone, a, LogitsWanted::All}})[0].logits;
    engine.step({SequenceWork{b_alone, {b.begin(), b.begin() + 20}, LogitsWanted::None}});
    const auto b_expected = engine.step({SequenceWork{b_alone, {b[20]}, LogitsWanted::Last}})[0].logits;
    engine.step({SequenceWork{c_alone, {c.begin(), c.begin() + 5}, LogitsWanted::None}});
    const auto c_expected =
        engine.step({SequenceWork{c_alone, {c.begin() + 5, c.end()}, LogitsWanted::All}})[0].logits;

    const int32_t a_mixed = cache.create_sequence(), b_mixed = cache.create_sequence(),
                  c_mixed = cache.create_sequence();
    engine.step({SequenceWork{b_mixed, {b.begin(), b.begin() + 20}, LogitsWanted::None},
                 SequenceWork{c_mixed, {c.begin(), c.begin() + 5}, LogitsWanted::None}});
    const auto mixed = engine.step({SequenceWork{b_mixed, {b[20]}, LogitsWanted::Last},
                                    SequenceWork{a_mixed, a, LogitsWanted::All},
                                    SequenceWork{c_mixed, {c.begin() + 5, c.end()}, LogitsWanted::All}});
    ASSERT_EQ(mixed.size(), 3u);
    EXPECT_TRUE(same_bits(mixed[1].logits, a_expected)) << "prompt A, " << threads << " threads";
    EXPECT_TRUE(same_bits(mixed[0].logits, b_expected)) << "decode token of B, " << threads << " threads";
    EXPECT_TRUE(same_bits(mixed[2].logits, c_expected)) << "chunk of C, " << threads << " threads";
    for (int32_t sequence : {a_alone, b_alone, c_alone, a_mixed, b_mixed, c_mixed}) cache.release_sequence(sequence);
  }
  omp_set_num_threads(saved_threads);
}

// The last layer runs o_proj and the feed-forward block on the logit rows
// only (model/glm4moe.cpp). A prompt asking for its last token's logits
// gets the bits of the last row of the same prompt asking for all of them,
// and a prompt whose first chunk asked for none (so that chunk's last layer
// only wrote its k and v) continues to the bits of the unchunked prompt.
TEST(BatchInvariance, LastLayerOnLogitRowsOnlyGivesTheBitsOfEveryRow) {
  EngineOptions options;
  options.max_context = 2048;
  Engine engine(kModel, options);
  PagedKvCache& cache = engine.cache();
  const int64_t vocab = engine.config().vocab_size;
  std::vector<int32_t> prompt(70);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 41 + 9) % 4000);
  const int64_t split = 40;

  const int32_t all = cache.create_sequence(), last = cache.create_sequence(), chunked = cache.create_sequence();
  const auto every_row = engine.step({SequenceWork{all, prompt, LogitsWanted::All}})[0].logits;
  ASSERT_EQ(every_row.size(), prompt.size() * static_cast<size_t>(vocab));
  const auto last_row = engine.step({SequenceWork{last, prompt, LogitsWanted::Last}})[0].logits;
  EXPECT_TRUE(same_bits(last_row, {every_row.end() - vocab, every_row.end()})) << "LogitsWanted::Last";

  engine.step({SequenceWork{chunked, {prompt.begin(), prompt.begin() + split}, LogitsWanted::None}});
  const auto rest = engine.step({SequenceWork{chunked, {prompt.begin() + split, prompt.end()}, LogitsWanted::All}})[0].logits;
  EXPECT_TRUE(same_bits(rest, {every_row.begin() + split * vocab, every_row.end()})) << "after a chunk without logits";
  // And the next decode token reads the cache the Last prompt left.
  const int32_t next = prompt.back();
  const auto decode_all = engine.step({SequenceWork{all, {next}, LogitsWanted::Last}})[0].logits;
  const auto decode_last = engine.step({SequenceWork{last, {next}, LogitsWanted::Last}})[0].logits;
  EXPECT_TRUE(same_bits(decode_last, decode_all)) << "decode after a Last prompt";
  for (int32_t sequence : {all, last, chunked}) cache.release_sequence(sequence);
}

}  // namespace
}  // namespace glm
