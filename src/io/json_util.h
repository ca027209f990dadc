// JSON helpers shared by the readers of untrusted JSON (safetensors headers,
// checkpoint indexes, config.json): they turn every nlohmann exception into a
// glm::Error that names the source, and render values briefly for messages.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace glm {

// Parses JSON text. A syntax error becomes glm::Error
// "<what>: invalid JSON[ in <subject>]: <parser's explanation>".
nlohmann::json parse_json(std::string_view text, const std::string& what, const std::string& subject = "");

// The whole content of a file; throws naming the path.
std::string read_text_file(const std::string& path);

// A value as it would appear in the JSON, cut to `max_chars` so a huge or
// hostile value cannot flood an error message.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = 80);

// "string", "integer", "array", ... for messages about a wrong type.
std::string json_type_name(const nlohmann::json& value);

// Strict integer: an integer literal that fits int64 (no floats, no bools).
bool json_exact_int64(const nlohmann::json& value, int64_t* out);

// Lenient integer: also an integral float literal such as 128.0, which some
// config writers emit for integer fields.
bool json_integral_int64(const nlohmann::json& value, int64_t* out);

}  // namespace glm
