// Renders every case of tests/template/fixtures/<template>.json (made by
// tools/templates/make_template_fixtures.py with Python jinja2 as transformers
// configures it) and requires byte-identical output, or a glm::Error where
// jinja2 raised.
#include <gtest/gtest.h>

#include "core/error.h"
#include "fixture_util.h"
#include "text/jinja/template.h"

namespace {

class ChatTemplateFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateFixture, RendersLikeJinja2) {
  auto fixture = glm::test::load_fixture(GetParam() + ".json");
  ASSERT_FALSE(fixture.is_null()) << "missing fixture " << GetParam();
  auto today = glm::test::load_fixture("today.json");
  const std::string source = fixture["source"].get<std::string>();
  int checked = 0;
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto render = [&] {
      return glm::jinja::render_chat_template(source, c["messages"], c["tools"], c["add_generation_prompt"].get<bool>(),
                                              c["extra"]);
    };
    if (c.contains("error")) {
      try {
        render();
        ADD_FAILURE() << "expected an error like jinja2's: " << c["error"].get<std::string>();
      } catch (const glm::Error& e) {
        EXPECT_FALSE(std::string(e.what()).empty());
      }
    } else {
      std::string expected = glm::test::with_today(c["expected"].get<std::string>(), today);
      std::string actual;
      try {
        actual = render();
      } catch (const glm::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
        continue;
      }
      EXPECT_EQ(expected, actual) << glm::test::first_difference(expected, actual);
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateFixture,
                         ::testing::Values("glm-4.5-4.6", "glm-4.7", "Qwen-Qwen3-0.6B", "deepseek-ai-DeepSeek-V3.1",
                                           "google-gemma-4-31B-it-interleaved", "meta-llama-Llama-3.2-3B-Instruct",
                                           "mistralai-Mistral-Small-3.1-24B-Instruct-2503", "openai-gpt-oss-120b"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

}  // namespace
