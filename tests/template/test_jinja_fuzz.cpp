// Seeded fuzz test of the Jinja interpreter: mutated copies of the reference
// templates (and of random token soup) are parsed and rendered with mutated
// contexts. Only glm::Error may escape; no crash, hang or other exception.
// The whole test is time-bounded to stay under a few seconds.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "fixture_util.h"
#include "text/jinja/template.h"

namespace {

using json = nlohmann::ordered_json;

const char* kFragments[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "(", ")", "[", "]", "{", "}", "'", "\"",
                            "|", ".", ",", ":", "~", "*", "**", "/", "//", "%", "==", "!=", "<", ">", "=", " if ",
                            " else ", " endif ", " for ", " in ", " endfor ", " not ", " and ", " or ", " is ",
                            " set ", " macro ", " endmacro ", " call ", " endcall ", " loop.index ", " messages ",
                            " x ", " tojson ", " items() ", " none ", " 0 ", " -1 ", " 1.5 ", "\n", "\\", " break ",
                            " namespace( ", " raise_exception ", " range(3) ", "[::-1]", " filter ", " raw ", " endraw "};

std::string mutate(std::string s, std::mt19937& rng) {
  int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    size_t pos = rng() % (s.size() + 1);
    switch (rng() % 4) {
      case 0: s.erase(pos, 1 + rng() % 8); break;
      case 1: s.insert(pos, kFragments[rng() % (sizeof kFragments / sizeof *kFragments)]); break;
      case 2: {  // duplicate a slice
        size_t len = rng() % 40;
        size_t from = rng() % s.size();
        s.insert(pos, s.substr(from, len));
        break;
      }
      default:
        if (pos < s.size()) s[pos] = static_cast<char>(rng() % 128);
    }
  }
  return s;
}

json mutate_json(const json& j, std::mt19937& rng, int depth = 0) {
  if (depth > 4) return j;
  switch (rng() % 12) {
    case 0: return nullptr;
    case 1: return static_cast<int>(rng() % 7) - 3;
    case 2: return "str\n" + std::to_string(rng() % 10);
    case 3: return json::array({1, "a"});
    case 4: return 0.5;
    default: break;
  }
  if (j.is_object()) {
    json out = json::object();
    for (auto it = j.begin(); it != j.end(); ++it)
      if (rng() % 10) out[it.key()] = mutate_json(it.value(), rng, depth + 1);
    return out;
  }
  if (j.is_array()) {
    json out = json::array();
    for (const auto& e : j)
      if (rng() % 10) out.push_back(mutate_json(e, rng, depth + 1));
    return out;
  }
  return j;
}

TEST(JinjaFuzz, OnlyGlmErrorsEscape) {
  std::vector<std::string> sources;
  for (const char* name : {"glm-4.5-4.6", "glm-4.7", "Qwen-Qwen3-0.6B", "openai-gpt-oss-120b",
                           "google-gemma-4-31B-it-interleaved", "mistralai-Mistral-Small-3.1-24B-Instruct-2503"}) {
    auto f = glm::test::load_fixture(std::string(name) + ".json");
    if (!f.is_null()) sources.push_back(f["source"].get<std::string>());
  }
  auto glm_fixture = glm::test::load_fixture("glm-4.7.json");
  ASSERT_FALSE(glm_fixture.is_null());
  std::vector<json> contexts;
  for (const auto& c : glm_fixture["cases"]) {
    json ctx = c["extra"];
    ctx["messages"] = c["messages"];
    ctx["tools"] = c["tools"];
    ctx["add_generation_prompt"] = c["add_generation_prompt"];
    contexts.push_back(ctx);
  }
  std::mt19937 rng(12345);
  auto start = std::chrono::steady_clock::now();
  int runs = 0, errors = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3) && runs < 3000) {
    std::string src;
    if (rng() % 5 == 0) {
      for (int i = 0; i < 30; ++i) src += kFragments[rng() % (sizeof kFragments / sizeof *kFragments)];
    } else {
      src = mutate(sources[rng() % sources.size()], rng);
    }
    json ctx = contexts[rng() % contexts.size()];
    if (rng() % 2) ctx = mutate_json(ctx, rng);
    try {
      glm::jinja::Template t(src);
      (void)t.render(ctx);
    } catch (const glm::Error&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-glm exception " << e.what() << " for source:\n" << src;
      break;
    }
    ++runs;
  }
  EXPECT_GT(runs, 100);
  RecordProperty("runs", runs);
  RecordProperty("errors", errors);
}

}  // namespace
