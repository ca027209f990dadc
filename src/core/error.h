// Error reporting for the whole engine: one exception type whose message names
// the problem (the file, field or tensor and the value found), so the command
// line can print it and exit non-zero instead of crashing.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace glm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename First, typename... Rest>
void append_all(std::ostringstream& out, const First& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces and throws glm::Error.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream out;
  detail::append_all(out, parts...);
  throw Error(out.str());
}

}  // namespace glm

// GLM_CHECK(condition, message pieces...): throws glm::Error when condition is false.
#define GLM_CHECK(condition, ...)                     \
  do {                                                \
    if (!(condition)) ::glm::fail(__VA_ARGS__);       \
  } while (0)
