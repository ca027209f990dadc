// JSON helpers for untrusted input: parse errors and value rendering.
#include "io/json_util.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace glm {

nlohmann::json parse_json(std::string_view text, const std::string& what, const std::string& subject) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& error) {
    // Drop the library's "[json.exception.parse_error.101] " tag: users need the position, not the code.
    std::string detail = error.what();
    if (!detail.empty() && detail.front() == '[') {
      const size_t close = detail.find("] ");
      if (close != std::string::npos) detail.erase(0, close + 2);
    }
    fail(what, ": invalid JSON", subject.empty() ? "" : " in " + subject, ": ", detail);
  }
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open: ", std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail(path, ": read error: ", std::strerror(errno));
  return content.str();
}

std::string json_excerpt(const nlohmann::json& value, size_t max_chars) {
  // `replace` because a string built outside the parser may hold invalid UTF-8, which dump() would throw on.
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > max_chars) text = text.substr(0, max_chars) + "...";
  return text;
}

std::string json_type_name(const nlohmann::json& value) {
  if (value.is_number_float()) return "float";
  if (value.is_number()) return "integer";
  return value.type_name();
}

bool json_exact_int64(const nlohmann::json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(unsigned_value);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return true;
  }
  return false;
}

bool json_integral_int64(const nlohmann::json& value, int64_t* out) {
  if (json_exact_int64(value, out)) return true;
  if (!value.is_number_float()) return false;
  const double number = value.get<double>();
  // 2^63 is exactly representable; anything at or past it does not fit.
  constexpr double kTwoPow63 = 9223372036854775808.0;
  if (!std::isfinite(number) || std::trunc(number) != number || number >= kTwoPow63 || number < -kTwoPow63)
    return false;
  *out = static_cast<int64_t>(number);
  return true;
}

}  // namespace glm
