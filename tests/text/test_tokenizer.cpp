// Tests of the tokenizer against Hugging Face `tokenizers`: the fixtures in
// tests/text/fixtures/ were produced by tools/tokenizer/make_tokenizer_fixtures.py
// (small tokenizers trained with GLM's pre-tokenizer and special tokens, and the
// reference's encodings/decodings of hard inputs), and every result must match
// exactly. Also covers streaming decoding, file lookup and error messages.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/json_util.h"
#include "text/byte_level.h"
#include "text/normalizer.h"
#include "text/onig_regex.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(GLM_SOURCE_DIR) + "/tests/text/fixtures/";

const nlohmann::json& expected() {
  static const nlohmann::json data = glm::parse_json(glm::read_text_file(kFixtures + "expected.json"), "expected.json");
  return data;
}

std::string from_hex(const std::string& hex) {
  std::string bytes;
  for (size_t pos = 0; pos + 1 < hex.size(); pos += 2) bytes.push_back(static_cast<char>(std::stoi(hex.substr(pos, 2), nullptr, 16)));
  return bytes;
}

std::string printable(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) {
    if (c < 0x20 || c == 0x7F) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\x%02X", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::vector<std::string> variant_names() {
  std::vector<std::string> names;
  for (const auto& [name, value] : expected()["variants"].items()) names.push_back(name);
  return names;
}

class ReferenceVariant : public testing::TestWithParam<std::string> {
 protected:
  const nlohmann::json& variant() const { return expected()["variants"][GetParam()]; }
  glm::Tokenizer load() const { return glm::Tokenizer::from_file(kFixtures + variant()["file"].get<std::string>()); }
};

TEST_P(ReferenceVariant, EncodesLikeReference) {
  const glm::Tokenizer tokenizer = load();
  int checked = 0;
  for (const auto& sample : variant()["encode"]) {
    const std::string text =
        sample.contains("bytes_hex") ? from_hex(sample["bytes_hex"].get<std::string>()) : sample["text"].get<std::string>();
    const auto plain = sample["ids"].get<std::vector<int32_t>>();
    const auto with_special = sample["ids_with_special"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer.encode(text, false), plain) << "text: \"" << printable(text) << "\"";
    EXPECT_EQ(tokenizer.encode(text, true), with_special) << "text (special): \"" << printable(text) << "\"";
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST_P(ReferenceVariant, DecodesLikeReference) {
  const glm::Tokenizer tokenizer = load();
  for (const auto& sample : variant()["decode"]) {
    const auto ids = sample["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer.decode(ids, false), sample["text"].get<std::string>()) << sample["ids"].dump();
    EXPECT_EQ(tokenizer.decode(ids, true), sample["text_skip_special"].get<std::string>()) << sample["ids"].dump();
  }
}

TEST_P(ReferenceVariant, StreamingDecodeConcatenatesToDecode) {
  const glm::Tokenizer tokenizer = load();
  for (const bool skip : {false, true}) {
    for (const auto& sample : variant()["decode"]) {
      const auto ids = sample["ids"].get<std::vector<int32_t>>();
      glm::StreamingDecoder stream(tokenizer, skip);
      std::string joined;
      for (const int32_t id : ids) {
        const std::string chunk = stream.push(id);
        // Every chunk on its own is complete UTF-8: nothing is cut mid-character.
        EXPECT_TRUE(glm::text::is_valid_utf8(chunk)) << sample["ids"].dump();
        joined += chunk;
      }
      joined += stream.flush();
      EXPECT_EQ(joined, tokenizer.decode(ids, skip)) << sample["ids"].dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceVariant, testing::ValuesIn(variant_names()),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(Tokenizer, DecodeOfEncodeIsLosslessWithoutNormalization) {
  // Byte-level BPE loses nothing unless a normalizer or add_prefix_space changes the text.
  for (const std::string name : {"glm_pairs", "glm_strings", "glm_ignore_merges"}) {
    const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + name + ".json");
    for (const auto& sample : expected()["variants"][name]["encode"]) {
      if (!sample.contains("text")) continue;
      const std::string text = sample["text"].get<std::string>();
      EXPECT_EQ(tokenizer.decode(tokenizer.encode(text), false), text) << name << ": " << printable(text);
    }
  }
}

TEST(PreTokenizer, SplitsLikeReference) {
  const auto& data = expected()["pre_tokenizers"];
  const auto texts = data["texts"].get<std::vector<std::string>>();
  for (const auto& sample : data["cases"]) {
    const auto pre_tokenizer = glm::text::PreTokenizer::from_json(sample["config"]);
    for (size_t index = 0; index < texts.size(); ++index) {
      std::vector<std::string> pieces;
      auto collect = [&](std::string_view piece) { pieces.emplace_back(piece); };
      pre_tokenizer.run(texts[index], collect);
      EXPECT_EQ(pieces, sample["splits"][index].get<std::vector<std::string>>())
          << sample["config"].dump() << " on \"" << printable(texts[index]) << "\"";
    }
  }
}

TEST(Normalizer, NfcMatchesReference) {
  for (const auto& sample : expected()["nfc"])
    EXPECT_EQ(glm::text::to_nfc(sample["text"].get<std::string>()), sample["nfc"].get<std::string>()) << sample["text"];
}

TEST(Utf8, LossyRepairMatchesPython) {
  for (const auto& sample : expected()["lossy_utf8"]) {
    EXPECT_EQ(glm::text::to_valid_utf8(from_hex(sample["bytes_hex"].get<std::string>())), sample["text"].get<std::string>())
        << sample["bytes_hex"];
  }
}

TEST(Utf8, SettledPrefixHoldsBackOnlyAnUnfinishedCharacter) {
  EXPECT_EQ(glm::text::settled_prefix_length("ab\xE4\xB8"), 2u);
  EXPECT_EQ(glm::text::settled_prefix_length("ab\xE4\xB8\xAD"), 5u);
  EXPECT_EQ(glm::text::settled_prefix_length("ab\xE4x"), 4u);  // already invalid: U+FFFD then x
  EXPECT_EQ(glm::text::settled_prefix_length("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(glm::text::settled_prefix_length("\xFF"), 1u);
}

TEST(Tokenizer, SpecialTokenIdsFollowGlmLayout) {
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + "glm_pairs.json");
  const int32_t gmask = tokenizer.token_id("[gMASK]");
  ASSERT_GE(gmask, 0);
  EXPECT_EQ(tokenizer.token_id("<sop>"), gmask + 2);
  EXPECT_EQ(tokenizer.token_id("<|user|>"), gmask + 5);
  EXPECT_EQ(tokenizer.token_id("not a token"), -1);
  EXPECT_TRUE(tokenizer.is_special(tokenizer.token_id("<|assistant|>")));
  EXPECT_FALSE(tokenizer.is_special(tokenizer.token_id("<think>")));
  EXPECT_EQ(tokenizer.token_text(tokenizer.token_id("<|user|>")), "<|user|>");
  EXPECT_EQ(tokenizer.vocab_size(), static_cast<size_t>(tokenizer.token_id("/nothink") + 1));
  EXPECT_THROW(tokenizer.token_text(static_cast<int32_t>(tokenizer.vocab_size())), glm::Error);
  EXPECT_THROW(tokenizer.token_text(-1), glm::Error);
}

TEST(Tokenizer, StreamingNeverSplitsACharacter) {
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + "glm_pairs.json");
  // The single-byte tokens spelling U+1F600, pushed one at a time.
  std::vector<int32_t> ids;
  for (const char byte : std::string("\xF0\x9F\x98\x80")) {
    ids.push_back(tokenizer.token_id(glm::text::ByteLevelAlphabet::instance().encode_byte(static_cast<unsigned char>(byte))));
    ASSERT_GE(ids.back(), 0);
  }
  glm::StreamingDecoder stream(tokenizer);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "\xF0\x9F\x98\x80");
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(tokenizer.token_id("a")), std::string(glm::text::kReplacementCharacter) + "a");
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.flush(), glm::text::kReplacementCharacter);
  EXPECT_EQ(stream.flush(), "");
}

TEST(Tokenizer, FindsTokenizerJsonInModelDirectory) {
  const fs::path dir = fs::temp_directory_path() / ("glm_text_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(kFixtures + "glm_pairs.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  EXPECT_EQ(glm::find_tokenizer_json(dir.string()), (dir / "tokenizer.json").string());
  EXPECT_EQ(glm::find_tokenizer_json(kFixtures + "glm_pairs.json"), kFixtures + "glm_pairs.json");
  EXPECT_THROW(glm::find_tokenizer_json((dir / "missing").string()), glm::Error);

  const std::string text_file = (dir / "input.txt").string();
  {
    std::ofstream out(text_file, std::ios::binary);
    out << "Hello<|user|> \xE4\xB8\xAD\n";
  }
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(dir.string());
  const auto ids = tokenizer.encode("Hello<|user|> \xE4\xB8\xAD\n");
  const auto parsed = nlohmann::json::parse(glm::tokenize_file_to_json(dir.string(), text_file));
  EXPECT_EQ(parsed["ids"].get<std::vector<int32_t>>(), ids);
  fs::remove(dir / "tokenizer.json");
  EXPECT_THROW(glm::find_tokenizer_json(dir.string()), glm::Error);
  fs::remove_all(dir);
}

// The error for a bad tokenizer.json must name what is wrong.
void expect_load_error(const std::string& json_text, const std::string& fragment) {
  try {
    glm::Tokenizer::from_json(json_text);
    ADD_FAILURE() << "loaded without error; expected one mentioning \"" << fragment << "\"";
  } catch (const glm::Error& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
  }
}

std::string with_field(const std::string& key, const nlohmann::json& value) {
  nlohmann::json config = glm::parse_json(glm::read_text_file(kFixtures + "glm_pairs.json"), "fixture");
  nlohmann::json* target = &config;
  std::string path = key;
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.')) {
    target = &(*target)[path.substr(0, dot)];
    path = path.substr(dot + 1);
  }
  (*target)[path] = value;
  return config.dump();
}

TEST(Tokenizer, RejectsWhatItDoesNotImplement) {
  expect_load_error("{", "invalid JSON");
  expect_load_error("[]", "top level");
  expect_load_error("{}", "model");
  expect_load_error(with_field("normalizer", {{"type", "Lowercase"}}), "Lowercase");
  expect_load_error(with_field("pre_tokenizer", {{"type", "Metaspace"}}), "Metaspace");
  expect_load_error(with_field("post_processor", {{"type", "BertProcessing"}}), "BertProcessing");
  expect_load_error(with_field("decoder", {{"type", "WordPiece"}}), "WordPiece");
  expect_load_error(with_field("model.type", "Unigram"), "Unigram");
  expect_load_error(with_field("model.byte_fallback", true), "byte_fallback");
  expect_load_error(with_field("model.dropout", 0.1), "dropout");
  expect_load_error(with_field("truncation", {{"max_length", 5}}), "truncation");
  expect_load_error(with_field("padding", {{"strategy", "BatchLongest"}}), "padding");
  expect_load_error(with_field("version", "2.0"), "version");
  expect_load_error(with_field("model.merges", {"Ġ nosuchtoken"}), "nosuchtoken");
  expect_load_error(with_field("model.merges", {"a b c"}), "merge 1");
  expect_load_error(with_field("model.vocab", {{"a", -4}}), "\"a\"");
  expect_load_error(with_field("pre_tokenizer.pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                                                {"behavior", "Isolated"}, {"invert", false}}}),
                    "cannot compile regex");
  expect_load_error(with_field("pre_tokenizer.pretokenizers",
                               {{{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}, {"invert", false}}}),
                    "Sideways");
  expect_load_error(with_field("added_tokens", {{{"id", 5}}}), "content");
  EXPECT_THROW(glm::Tokenizer::from_file("/nonexistent/tokenizer.json"), glm::Error);
}

TEST(OnigRegex, WhitespaceAndWordClassesFollowOniguruma) {
  using glm::text::OnigRegex;
  auto matches = [](const std::string& pattern, const std::string& text) {
    OnigRegex regex(pattern, OnigRegex::Syntax::kOniguruma, "test");
    std::vector<glm::text::MatchSpan> found;
    regex.find_all(text, found);
    std::vector<std::string> out;
    for (const auto& span : found) out.push_back(text.substr(span.start, span.end - span.start));
    return out;
  };
  // U+180E is not White_Space (PCRE2's \s would take it); U+0085 is.
  EXPECT_EQ(matches("\\s", "a\xE1\xA0\x8E" "b\xC2\x85" "c"), std::vector<std::string>{"\xC2\x85"});
  EXPECT_EQ(matches("[^\\s]+", "a\xE1\xA0\x8E" "b c"), (std::vector<std::string>{"a\xE1\xA0\x8E" "b", "c"}));
  // Oniguruma's \w takes marks and all numbers.
  EXPECT_EQ(matches("\\w+", "e\xCC\x81\xC2\xB2_ x"), (std::vector<std::string>{"e\xCC\x81\xC2\xB2_", "x"}));
  EXPECT_EQ(matches("\\h+", "xFa0g"), std::vector<std::string>{"Fa0"});  // Ruby: hex digit
  EXPECT_EQ(matches("(?i:'s|'ll)", "'S'Ll's"), (std::vector<std::string>{"'S", "'Ll", "'s"}));
  EXPECT_EQ(matches("a$", "a\nab a"), (std::vector<std::string>{"a", "a"}));  // $ is a line anchor
  EXPECT_EQ(matches("(?m:a.b)", "a\nb"), std::vector<std::string>{"a\nb"});   // Ruby (?m) is dot-all
  // An empty match right after a match is skipped, as the onig crate does.
  EXPECT_EQ(matches("x*", "axx"), (std::vector<std::string>{"", "xx"}));
  EXPECT_THROW(matches("[a-z&&[^aeiou]]", "b"), glm::Error);
}

TEST(Tokenizer, EncodingIsThreadSafe) {
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(kFixtures + "glm_pairs.json");
  const std::string text = "Concurrent encoding of the same words, 中文 and 😀, again and again.";
  const auto reference = tokenizer.encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (tokenizer.encode(text) != reference) ++mismatches;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
