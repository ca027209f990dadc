// Tests of glm::OutputParser on recorded model-like outputs (tests/parser/
// fixtures/*.json, broken ones included): each output is fed whole, byte by
// byte and in 200 seeded random chunkings, and every way of feeding must give
// the expected reasoning, content and tool calls. A seeded fuzz test feeds
// random mixes of tag fragments and checks that nothing but glm::Error can
// escape and that chunking never changes the result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/output_parser.h"

namespace {

using json = nlohmann::ordered_json;

struct RecordedCase {
  std::string file;
  std::string name;
  glm::OutputParserOptions options;
  std::string output;
  json expected;
};

// Everything a whole turn produced, in a form gtest can compare and print.
struct TurnResult {
  std::string reasoning;
  std::string content;
  json tool_calls = json::array();  // [{"name","arguments","id"}]
  bool stopped = false;

  bool operator==(const TurnResult&) const = default;
};

std::ostream& operator<<(std::ostream& out, const TurnResult& result) {
  json shown = {{"reasoning", result.reasoning},
                {"content", result.content},
                {"tool_calls", result.tool_calls},
                {"stopped", result.stopped}};
  return out << shown.dump(-1, ' ', false, json::error_handler_t::replace);
}

void add_delta(TurnResult& result, const glm::ParsedDelta& delta) {
  result.reasoning += delta.reasoning;
  result.content += delta.content;
  for (const auto& call : delta.tool_calls)
    result.tool_calls.push_back({{"name", call.name}, {"arguments", call.arguments}, {"id", call.id}});
}

TurnResult feed(const glm::OutputParserOptions& options, std::string_view text,
                const std::vector<std::size_t>& chunk_sizes) {
  glm::OutputParser parser(options);
  TurnResult result;
  std::size_t position = 0;
  for (std::size_t size : chunk_sizes) {
    add_delta(result, parser.push(text.substr(position, size)));
    position += size;
  }
  add_delta(result, parser.push(text.substr(position)));
  add_delta(result, parser.finish());
  EXPECT_TRUE(parser.finish().empty()) << "a second finish() must return nothing";
  result.stopped = parser.stopped();
  return result;
}

TurnResult feed_whole(const glm::OutputParserOptions& options, std::string_view text) {
  return feed(options, text, {});
}

TurnResult feed_bytewise(const glm::OutputParserOptions& options, std::string_view text) {
  return feed(options, text, std::vector<std::size_t>(text.size(), 1));
}

// Chunk sizes mostly small (as tokens are) with some long runs and empty pushes.
std::vector<std::size_t> random_chunking(std::size_t length, std::mt19937& random) {
  std::vector<std::size_t> sizes;
  std::size_t covered = 0;
  while (covered < length) {
    std::size_t size = random() % 4 == 0 ? random() % 24 : random() % 5;
    size = std::min(size, length - covered);
    sizes.push_back(size);
    covered += size;
  }
  return sizes;
}

std::vector<RecordedCase> load_recorded_cases() {
  std::vector<RecordedCase> cases;
  const std::filesystem::path folder = std::filesystem::path(GLM_SOURCE_DIR) / "tests/parser/fixtures";
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    std::ifstream in(path);
    const json document = json::parse(in);
    for (const auto& item : document.at("cases")) {
      RecordedCase recorded;
      recorded.file = path.filename().string();
      recorded.name = item.at("name").get<std::string>();
      recorded.options.tools = item.contains("tools") ? item["tools"] : document.value("tools", json());
      if (item.contains("options")) {
        const json& options = item["options"];
        recorded.options.starts_in_reasoning = options.value("starts_in_reasoning", false);
        if (options.contains("stop_strings"))
          recorded.options.stop_strings = options["stop_strings"].get<std::vector<std::string>>();
      }
      recorded.output = item.at("output").get<std::string>();
      recorded.expected = item.at("expected");
      cases.push_back(std::move(recorded));
    }
  }
  return cases;
}

const std::vector<RecordedCase>& recorded_cases() {
  static const std::vector<RecordedCase> cases = load_recorded_cases();
  return cases;
}

TurnResult expected_result(const RecordedCase& recorded) {
  TurnResult expected;
  expected.reasoning = recorded.expected.at("reasoning").get<std::string>();
  expected.content = recorded.expected.at("content").get<std::string>();
  std::size_t index = 0;
  for (const auto& call : recorded.expected.at("tool_calls"))
    expected.tool_calls.push_back({{"name", call.at("name")},
                                   {"arguments", call.at("arguments")},
                                   {"id", "call_" + std::to_string(index++)}});
  expected.stopped = recorded.expected.value("stopped", false);
  return expected;
}

class RecordedOutput : public ::testing::TestWithParam<std::size_t> {};

TEST(RecordedOutputs, FixturesAreLoaded) {
  EXPECT_GE(recorded_cases().size(), 50u);
}

TEST_P(RecordedOutput, WholeBytewiseAndRandomChunkingsAgree) {
  const RecordedCase& recorded = recorded_cases().at(GetParam());
  SCOPED_TRACE(recorded.file + ": " + recorded.name);
  const TurnResult expected = expected_result(recorded);

  EXPECT_EQ(feed_whole(recorded.options, recorded.output), expected) << "fed whole";
  EXPECT_EQ(feed_bytewise(recorded.options, recorded.output), expected) << "fed byte by byte";
  std::mt19937 random(1234 + GetParam());
  for (int round = 0; round < 200; ++round) {
    const auto sizes = random_chunking(recorded.output.size(), random);
    const TurnResult chunked = feed(recorded.options, recorded.output, sizes);
    ASSERT_EQ(chunked, expected) << "random chunking round " << round;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RecordedOutput,
                         ::testing::Range<std::size_t>(0, recorded_cases().size()),
                         [](const ::testing::TestParamInfo<std::size_t>& info) {
                           const auto& recorded = recorded_cases().at(info.param);
                           std::string name = recorded.file.substr(0, recorded.file.find('.')) +
                                              "_" + recorded.name;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

// --- Streaming behaviour that the fixtures cannot show -----------------------

TEST(OutputParserStreaming, HoldsBackOnlyPossibleTagStarts) {
  glm::OutputParser parser({});
  EXPECT_EQ(parser.push("Hello <tool").content, "Hello") << "the space may be trailing";
  EXPECT_EQ(parser.push("box> ok").content, " <toolbox> ok");
  EXPECT_EQ(parser.push(" <").content, "");
  const glm::ParsedDelta last = parser.push("tool_call>f</tool_call>");
  ASSERT_EQ(last.tool_calls.size(), 1u);
  EXPECT_EQ(last.tool_calls[0].name, "f");
  EXPECT_EQ(last.content, "");
  EXPECT_TRUE(parser.finish().empty());
}

TEST(OutputParserStreaming, ReasoningStreamsBeforeItCloses) {
  glm::OutputParserOptions options;
  options.starts_in_reasoning = true;
  glm::OutputParser parser(options);
  EXPECT_EQ(parser.push("Thinking a").reasoning, "Thinking a");
  EXPECT_EQ(parser.push("bout it</th").reasoning, "bout it");
  const glm::ParsedDelta closed = parser.push("ink>Answer");
  EXPECT_EQ(closed.reasoning, "");
  EXPECT_EQ(closed.content, "Answer");
}

TEST(OutputParserStreaming, ToolCallIdsUseThePrefix) {
  glm::OutputParserOptions options;
  options.tool_call_id_prefix = "call_req7_";
  glm::OutputParser parser(options);
  const glm::ParsedDelta delta = parser.push("<tool_call>a</tool_call><tool_call>b</tool_call>");
  ASSERT_EQ(delta.tool_calls.size(), 2u);
  EXPECT_EQ(delta.tool_calls[0].id, "call_req7_0");
  EXPECT_EQ(delta.tool_calls[1].id, "call_req7_1");
}

TEST(OutputParserStreaming, NothingAfterStop) {
  glm::OutputParserOptions options;
  options.stop_strings = {"<|user|>"};
  glm::OutputParser parser(options);
  EXPECT_EQ(parser.push("Hi <|us").content, "Hi");
  EXPECT_FALSE(parser.stopped());
  EXPECT_EQ(parser.push("er|> more").content, "");
  EXPECT_TRUE(parser.stopped());
  EXPECT_TRUE(parser.push("<tool_call>f</tool_call>").empty());
  EXPECT_TRUE(parser.finish().empty());
}

TEST(OutputParserStreaming, InvalidUtf8PassesThroughUnchanged) {
  glm::OutputParser parser({});
  TurnResult result;
  add_delta(result, parser.push("a\xff<tool_call>f<arg_key>k</arg_key><arg_value>\xfe</arg_value></tool_call>"));
  add_delta(result, parser.finish());
  EXPECT_EQ(result.content, "a\xff");
  ASSERT_EQ(result.tool_calls.size(), 1u);
  EXPECT_EQ(result.tool_calls[0]["arguments"]["k"].get<std::string>(), "\xfe");
}

TEST(OutputParserSetup, BadToolsListIsAnError) {
  glm::OutputParserOptions options;
  options.tools = json::object();
  EXPECT_THROW(glm::OutputParser{options}, glm::Error);
  options.tools = json::array({42});
  EXPECT_THROW(glm::OutputParser{options}, glm::Error);
  options.tools = json::array({json::object({{"type", "function"}})});  // no name: ignored
  EXPECT_NO_THROW(glm::OutputParser{options});
}

// --- Fuzz -------------------------------------------------------------------

TEST(OutputParserFuzz, RandomTagSoupNeverCrashesAndIgnoresChunking) {
  const std::vector<std::string> fragments = {
      "<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
      "</arg_value>", "<", "</", "<tool", "_call>", "<arg_", "think>", ">", "\n", " ", "\t", "f",
      "get_weather", "city", "{\"a\": [1, 2]}", "42", "\"s\"", "null", "true", "{", "]", "STOP",
      "ST", "OP", "\xe4\xbd\xa0", "\xff", "\xe4", "\xbd", "<|user|>", "ab", std::string(1, '\0'),
      // whole calls, so that well-formed ones are common enough to be exercised
      "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n</tool_call>",
      "<tool_call>get_weather<arg_key>n</arg_key><arg_value>7</arg_value></tool_call>",
      "<tool_call>ping</tool_call>"};
  const json tools = json::parse(R"([{"type":"function","function":{"name":"get_weather",
      "parameters":{"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"}}}}}])");
  std::mt19937 random(20240601);
  const auto started = std::chrono::steady_clock::now();
  int iterations = 0;
  std::size_t tool_calls_seen = 0;
  for (; iterations < 20000; ++iterations) {
    if (std::chrono::steady_clock::now() - started > std::chrono::milliseconds(2500)) break;
    std::string text;
    const int pieces = static_cast<int>(random() % 40);
    for (int i = 0; i < pieces; ++i) {
      if (random() % 8 == 0) {
        text.push_back(static_cast<char>(random() % 256));
      } else {
        const std::string& fragment = fragments[random() % fragments.size()];
        text += fragment;
      }
    }
    glm::OutputParserOptions options;
    options.starts_in_reasoning = random() % 2 == 0;
    if (random() % 2 == 0) options.tools = tools;
    if (random() % 3 == 0) options.stop_strings = {"STOP", "<|user|>"};
    try {
      const TurnResult whole = feed_whole(options, text);
      const TurnResult chunked = feed(options, text, random_chunking(text.size(), random));
      tool_calls_seen += whole.tool_calls.size();
      ASSERT_EQ(chunked, whole) << "input: " << json(text).dump(-1, ' ', true, json::error_handler_t::replace);
    } catch (const glm::Error&) {
      // a reported error is acceptable; anything else fails the test
    }
  }
  EXPECT_GT(iterations, 500);
  EXPECT_GT(tool_calls_seen, 100u) << "the fuzz should reach the tool-call path";
}

}  // namespace
