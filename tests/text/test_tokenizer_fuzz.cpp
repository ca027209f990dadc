// Seeded fuzzing of the tokenizer inside the test suite: corrupted
// tokenizer.json files must load or fail with glm::Error (never another
// exception, a crash or a hang), and arbitrary bytes and ids must encode and
// decode without error. Bounded so the whole file runs in a few seconds; the
// open-ended libFuzzer harness is fuzz/tokenizer_encode.cpp.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/json_util.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

const std::string kFixtures = std::string(GLM_SOURCE_DIR) + "/tests/text/fixtures/";

// Fragments that steer random text towards the interesting paths: added
// tokens (whole and cut), flags' whitespace, multi-byte and invalid UTF-8.
const std::vector<std::string> kFragments = {
    "<|user|>", "<|user", "|>", "[gMASK]", "<sop>", "<think>", "</think>", "<lstrip>", "<rstrip>", "<both>",
    "word", "caf\xC3\xA9", "cafe\xCC\x81", "e\xCC\x81t\xC3\xA9", "\xE4\xB8\xAD\xE6\x96\x87", " ", "  ", "\n", "\r\n",
    "\t", "'s", "'LL", "123", "\xF0\x9F\x98\x80", "\xE2\x80\x8D", "\xC2\xA0", "\xE3\x80\x80", "\xFF", "\xC3", "\xE4\xB8",
    "\xED\xA0\x80", "a", "Z", "\xC4\xA0space", "\x00",
};

std::string random_text(std::mt19937& rng) {
  std::string text;
  const int parts = std::uniform_int_distribution<int>(0, 24)(rng);
  for (int i = 0; i < parts; ++i) {
    if (rng() % 3 == 0) {
      const int length = std::uniform_int_distribution<int>(1, 6)(rng);
      for (int j = 0; j < length; ++j) text.push_back(static_cast<char>(rng() & 0xFF));
    } else {
      text += kFragments[rng() % kFragments.size()];
    }
  }
  return text;
}

std::vector<int32_t> random_ids(std::mt19937& rng, const glm::Tokenizer& tokenizer) {
  std::vector<int32_t> ids(std::uniform_int_distribution<int>(0, 16)(rng));
  const auto limit = static_cast<int32_t>(tokenizer.vocab_size()) + 5;
  for (int32_t& id : ids) id = std::uniform_int_distribution<int32_t>(-3, limit)(rng);
  return ids;
}

// Runs every entry point on random input; anything but glm::Error fails the test.
void exercise(const glm::Tokenizer& tokenizer, std::mt19937& rng, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    const std::string text = random_text(rng);
    const auto ids = tokenizer.encode(text, round % 2 == 0);
    for (const int32_t id : ids) ASSERT_LT(static_cast<size_t>(id), tokenizer.vocab_size());
    const std::string decoded = tokenizer.decode(ids, round % 3 == 0);
    ASSERT_TRUE(glm::text::is_valid_utf8(decoded));
    const auto noise = random_ids(rng, tokenizer);
    glm::StreamingDecoder stream(tokenizer, round % 2 == 1);
    std::string streamed;
    for (const int32_t id : noise) streamed += stream.push(id);
    streamed += stream.flush();
    ASSERT_EQ(streamed, tokenizer.decode(noise, round % 2 == 1));
  }
}

TEST(TokenizerFuzz, RandomBytesEncodeAndDecode) {
  std::mt19937 rng(20240611);
  for (const char* name : {"glm_pairs.json", "glm_flags.json", "bytelevel_regex.json", "glm_template.json"}) {
    const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + name);
    exercise(tokenizer, rng, 2000);
  }
}

TEST(TokenizerFuzz, ValidTextRoundTripsThroughByteLevelBpe) {
  std::mt19937 rng(7);
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + "glm_pairs.json");
  for (int round = 0; round < 3000; ++round) {
    const std::string text = glm::text::to_valid_utf8(random_text(rng));
    ASSERT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

// A random JSON value of any type, including ones that are out of range.
nlohmann::json random_value(std::mt19937& rng) {
  switch (rng() % 10) {
    case 0: return nullptr;
    case 1: return static_cast<int64_t>(rng() % 3) - 1;
    case 2: return static_cast<int64_t>(1) << (rng() % 63);
    case 3: return 1e300;
    case 4: return rng() % 2 == 0;
    case 5: return nlohmann::json::array();
    case 6: return nlohmann::json::object();
    case 7: return std::string("(?<=x*)[");
    case 8: return nlohmann::json::array({"Ġ", "t"});
    default: return kFragments[rng() % kFragments.size()];
  }
}

// Replaces one randomly chosen node of `value` (walking down at random).
void mutate_structure(nlohmann::json& value, std::mt19937& rng) {
  nlohmann::json* node = &value;
  while ((node->is_object() || node->is_array()) && !node->empty() && rng() % 4 != 0) {
    auto it = node->begin();
    std::advance(it, rng() % node->size());
    node = &*it;
  }
  *node = random_value(rng);
}

void mutate_bytes(std::string& text, std::mt19937& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < edits && !text.empty(); ++i) {
    const size_t pos = rng() % text.size();
    switch (rng() % 3) {
      case 0: text[pos] = static_cast<char>(rng() & 0xFF); break;
      case 1: text.erase(pos, 1 + rng() % 8); break;
      default: text.insert(pos, kFragments[rng() % kFragments.size()]); break;
    }
  }
}

TEST(TokenizerFuzz, CorruptedTokenizerJsonFailsCleanly) {
  const std::string original = glm::read_text_file(kFixtures + "glm_flags.json");
  const nlohmann::json parsed = nlohmann::json::parse(original);
  std::mt19937 rng(12345);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  int loaded = 0;
  int rejected = 0;
  for (int round = 0; round < 600 && std::chrono::steady_clock::now() < deadline; ++round) {
    std::string candidate;
    if (round % 2 == 0) {
      nlohmann::json mutated = parsed;
      // Most mutations target the small, behaviour-bearing parts of the file.
      const char* section = std::array{"normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens",
                                       "model"}[rng() % 6];
      if (rng() % 5 == 0) {
        mutate_structure(mutated, rng);
      } else if (std::string(section) == "model") {
        mutated["model"][std::array{"merges", "ignore_merges", "unk_token", "type", "dropout", "fuse_unk"}[rng() % 6]] =
            random_value(rng);
      } else {
        mutate_structure(mutated[section], rng);
      }
      candidate = mutated.dump(-1, ' ', false, nlohmann::json::error_handler_t::ignore);
    } else {
      candidate = original;
      mutate_bytes(candidate, rng);
    }
    try {
      const glm::Tokenizer tokenizer = glm::Tokenizer::from_json(candidate);
      ++loaded;
      exercise(tokenizer, rng, 3);
    } catch (const glm::Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
