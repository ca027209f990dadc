// Helpers shared by the chat-template tests: reading fixture JSON files and
// showing where two rendered strings first differ.
#pragma once

#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace glm::test {

inline nlohmann::ordered_json load_fixture(const std::string& name) {
  std::ifstream in(std::string(GLM_SOURCE_DIR) + "/tests/template/fixtures/" + name);
  if (!in) return nullptr;
  return nlohmann::ordered_json::parse(in);
}

// A short description of the first difference between expected and actual.
inline std::string first_difference(const std::string& expected, const std::string& actual) {
  size_t i = 0;
  while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
  size_t from = i > 40 ? i - 40 : 0;
  std::ostringstream out;
  out << "first difference at byte " << i << "\n  expected: ...\"" << expected.substr(from, 120)
      << "\"\n  actual:   ...\"" << actual.substr(from, 120) << "\"";
  return out.str();
}

// Fixtures embed the date they were generated on (strftime_now); substitute today's.
inline std::string with_today(std::string text, const nlohmann::ordered_json& today) {
  if (!today.is_object()) return text;
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  for (auto it = today.begin(); it != today.end(); ++it) {
    char buf[64];
    size_t n = std::strftime(buf, sizeof buf, it.key().c_str(), &tm);
    std::string then = it.value().get<std::string>(), now_s(buf, n);
    for (size_t p = text.find(then); p != std::string::npos; p = text.find(then, p + now_s.size()))
      text.replace(p, then.size(), now_s);
  }
  return text;
}

}  // namespace glm::test
