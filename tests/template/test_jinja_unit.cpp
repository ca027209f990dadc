// Unit tests of the Jinja interpreter: the small feature templates of
// fixtures/unit.json (expected outputs from Python jinja2), plus checks of
// error messages, line numbers, float printing and the chat helper.
#include <gtest/gtest.h>

#include "core/error.h"
#include "fixture_util.h"
#include "text/jinja/template.h"
#include "text/jinja/value.h"

namespace {

using json = nlohmann::ordered_json;

std::string render(const std::string& source, const json& context = json::object()) {
  return glm::jinja::Template(source).render(context);
}

std::string error_of(const std::string& source, const json& context = json::object()) {
  try {
    render(source, context);
  } catch (const glm::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(JinjaUnit, MatchesJinja2OnFeatureTemplates) {
  auto fixture = glm::test::load_fixture("unit.json");
  ASSERT_FALSE(fixture.is_null());
  for (const auto& c : fixture["cases"]) {
    const std::string source = c["source"].get<std::string>();
    SCOPED_TRACE(source);
    json context = c["context"];
    // render_jinja_template always passes these; keep the environment identical.
    context["messages"] = json::array();
    context["tools"] = nullptr;
    context["documents"] = nullptr;
    context["add_generation_prompt"] = false;
    if (c.contains("error")) {
      std::string err = error_of(source, context);
      EXPECT_NE(err, "<no error>") << "jinja2 raised " << c["error"].get<std::string>();
    } else {
      std::string expected = c["expected"].get<std::string>();
      try {
        std::string actual = render(source, context);
        EXPECT_EQ(expected, actual) << glm::test::first_difference(expected, actual);
      } catch (const glm::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
      }
    }
  }
}

TEST(JinjaUnit, FloatRepr) {
  using glm::jinja::float_repr;
  EXPECT_EQ(float_repr(1.0), "1.0");
  EXPECT_EQ(float_repr(0.1), "0.1");
  EXPECT_EQ(float_repr(1e-05), "1e-05");
  EXPECT_EQ(float_repr(0.0001), "0.0001");
  EXPECT_EQ(float_repr(1e16), "1e+16");
  EXPECT_EQ(float_repr(1234567890123456.0), "1234567890123456.0");
  EXPECT_EQ(float_repr(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(float_repr(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(float_repr(-0.0), "-0.0");
  EXPECT_EQ(float_repr(1e300 * 1e300), "inf");
}

TEST(JinjaUnit, RaiseExceptionCarriesMessage) {
  EXPECT_NE(error_of("{{ raise_exception('Only user and assistant roles!') }}").find("Only user and assistant roles!"),
            std::string::npos);
}

TEST(JinjaUnit, SyntaxErrorsNameTheLine) {
  EXPECT_NE(error_of("a\nb\n{% if x %}\n{{ 1 +* 2 }}\n{% endif %}").find("line 4"), std::string::npos);
  EXPECT_NE(error_of("a\n{% for x in y %}\nno end").find("endfor"), std::string::npos);
  EXPECT_NE(error_of("x\n\n{{ 'unterminated }}").find("line 3"), std::string::npos);
  EXPECT_NE(error_of("{% frobnicate %}").find("frobnicate"), std::string::npos);
  EXPECT_NE(error_of("{# never closed").find("comment"), std::string::npos);
  EXPECT_NE(error_of("one\n{{ x.y }}", json::object()).find("line 2"), std::string::npos);
}

TEST(JinjaUnit, RuntimeErrorsAreGlmErrors) {
  EXPECT_NE(error_of("{% break %}"), "<no error>");
  EXPECT_NE(error_of("{{ [1][0:1:0] }}"), "<no error>");
  EXPECT_NE(error_of("{% macro r(n) %}{{ r(n) }}{% endmacro %}{{ r(1) }}").find("recursion"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}"), "<no error>");
  EXPECT_NE(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"), "<no error>");
  EXPECT_NE(error_of("{{ x | tojson }}"), "<no error>");  // Undefined is not JSON serializable
  EXPECT_NE(error_of("{% set ns = namespace() %}{% set ns._x = 1 %}"), "<no error>");
}

TEST(JinjaUnit, ChatHelperParsesArgumentStrings) {
  const std::string tpl =
      "{% for m in messages %}{% for tc in m.tool_calls %}{% for k, v in tc.function.arguments.items() %}"
      "{{ k }}={{ v | tojson }};{% endfor %}{% endfor %}{% endfor %}{{ add_generation_prompt }}{{ bos_token }}"
      "{{ tools | length }}";
  json messages = json::parse(R"([{"role":"assistant","content":"",
      "tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\"a\": 1, \"b\": [\"x\"]}"}},
                    {"type":"function","function":{"name":"g","arguments":{"c":null}}}]}])");
  std::string out = glm::jinja::render_chat_template(tpl, messages, json::array({json::object()}), true,
                                                     json{{"bos_token", "<s>"}});
  EXPECT_EQ(out, "a=1;b=[\"x\"];c=null;True<s>1");
}

TEST(JinjaUnit, ReasoningAliases) {
  json messages = json::parse(R"([{"role":"assistant","content":"x","reasoning":"why"}])");
  std::string out = glm::jinja::render_chat_template(
      "{{ messages[0] | tojson }}", messages, nullptr, false, json::object());
  EXPECT_EQ(out, R"({"thinking": "why", "role": "assistant", "content": "x", "reasoning": "why", "reasoning_content": "why"})");
}

}  // namespace

namespace {

// A long conversation must stay well inside the interpreter's execution bounds.
TEST(JinjaUnit, LongConversationRenders) {
  auto fixture = glm::test::load_fixture("glm-4.7.json");
  ASSERT_FALSE(fixture.is_null());
  json messages = json::array();
  for (int i = 0; i < 2000; ++i) {
    messages.push_back({{"role", "user"}, {"content", "question " + std::to_string(i)}});
    messages.push_back({{"role", "assistant"}, {"content", "answer"}, {"reasoning_content", "because"}});
  }
  std::string out = glm::jinja::render_chat_template(fixture["source"].get<std::string>(), messages, nullptr, true,
                                                     json::object());
  EXPECT_NE(out.find("question 1999"), std::string::npos);
}

}  // namespace
