// UTF-8 decoding, lossy repair and stream settling (see utf8.h).
#include "text/utf8.h"

namespace glm::text {
namespace {

// How a lead byte constrains its sequence. The second byte has a narrower range
// than 80..BF for some leads so that overlong forms, surrogates and code points
// past U+10FFFF are rejected at the earliest byte, which is what decides where
// a "maximal subpart" of an invalid sequence ends.
struct LeadRule {
  int continuation_count;  // -1: the byte cannot start a character
  unsigned char second_min;
  unsigned char second_max;
};

LeadRule lead_rule(unsigned char lead) {
  if (lead < 0x80) return {0, 0, 0};
  if (lead >= 0xC2 && lead <= 0xDF) return {1, 0x80, 0xBF};
  if (lead == 0xE0) return {2, 0xA0, 0xBF};
  if (lead == 0xED) return {2, 0x80, 0x9F};
  if (lead >= 0xE1 && lead <= 0xEF) return {2, 0x80, 0xBF};
  if (lead == 0xF0) return {3, 0x90, 0xBF};
  if (lead == 0xF4) return {3, 0x80, 0x8F};
  if (lead >= 0xF1 && lead <= 0xF3) return {3, 0x80, 0xBF};
  return {-1, 0, 0};
}

enum class Scan { kValid, kInvalid, kTruncated };

// Examines the sequence at bytes[pos]: *consumed is its full length when valid,
// else the length of its maximal invalid subpart (at least 1).
Scan scan_sequence(std::string_view bytes, size_t pos, size_t* consumed) {
  const auto lead = static_cast<unsigned char>(bytes[pos]);
  const LeadRule rule = lead_rule(lead);
  *consumed = 1;
  if (rule.continuation_count == 0) return Scan::kValid;
  if (rule.continuation_count < 0) return Scan::kInvalid;
  for (int index = 1; index <= rule.continuation_count; ++index) {
    if (pos + index >= bytes.size()) return Scan::kTruncated;
    const auto next = static_cast<unsigned char>(bytes[pos + index]);
    const unsigned char low = index == 1 ? rule.second_min : 0x80;
    const unsigned char high = index == 1 ? rule.second_max : 0xBF;
    if (next < low || next > high) return Scan::kInvalid;
    ++*consumed;
  }
  return Scan::kValid;
}

}  // namespace

size_t decode_utf8(std::string_view text, size_t pos, char32_t* code_point) {
  size_t length = 0;
  if (pos >= text.size() || scan_sequence(text, pos, &length) != Scan::kValid) return 0;
  const auto lead = static_cast<unsigned char>(text[pos]);
  char32_t value = length == 1 ? lead : length == 2 ? (lead & 0x1F) : length == 3 ? (lead & 0x0F) : (lead & 0x07);
  for (size_t index = 1; index < length; ++index) value = (value << 6) | (static_cast<unsigned char>(text[pos + index]) & 0x3F);
  *code_point = value;
  return length;
}

void append_utf8(std::string& out, char32_t code_point) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t length = 0;
    if (scan_sequence(bytes, pos, &length) != Scan::kValid) return false;
    pos += length;
  }
  return true;
}

std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t length = 0;
    if (scan_sequence(bytes, pos, &length) == Scan::kValid) {
      out.append(bytes.substr(pos, length));
    } else {
      out.append(kReplacementCharacter);
    }
    pos += length;
  }
  return out;
}

size_t settled_prefix_length(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t length = 0;
    if (scan_sequence(bytes, pos, &length) == Scan::kTruncated) return pos;
    pos += length;
  }
  return pos;
}

}  // namespace glm::text
