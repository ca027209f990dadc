// Names, sizes and scalar conversions of the checkpoint element types.
#include "core/dtype.h"

#include <cmath>

#include "core/error.h"

namespace glm {

namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
  bool is_float;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8, true},       {DType::F32, "F32", 4, true},
    {DType::F16, "F16", 2, true},       {DType::BF16, "BF16", 2, true},
    {DType::F8_E4M3, "F8_E4M3", 1, true}, {DType::F8_E5M2, "F8_E5M2", 1, true},
    {DType::I64, "I64", 8, false},      {DType::I32, "I32", 4, false},
    {DType::I16, "I16", 2, false},      {DType::I8, "I8", 1, false},
    {DType::U64, "U64", 8, false},      {DType::U32, "U32", 4, false},
    {DType::U16, "U16", 2, false},      {DType::U8, "U8", 1, false},
    {DType::BOOL, "BOOL", 1, false},
};
const DTypeInfo& info(DType dtype) {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry;
  fail("internal error: unknown dtype code ", static_cast<int>(dtype));
}
}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
std::string_view dtype_name(DType dtype) { return info(dtype).name; }
bool dtype_is_float(DType dtype) { return info(dtype).is_float; }

bool parse_dtype(std::string_view name, DType* out) {
  for (const auto& entry : kDTypes) {
    if (entry.name == name) {
      *out = entry.dtype;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = (bits >> 15) & 1u;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign ? -magnitude : magnitude;
}

uint16_t f32_to_f16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;           // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;          // rounds past 65504: infinity
  if (magnitude < 0x38800000u) {                                // below the smallest normal half
    const float scaled = std::fabs(value) * 16777216.0f;         // units of 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));  // nearest-even (default rounding mode)
  }
  uint32_t half = ((magnitude >> 13) - (112u << 10));             // rebias exponent 127 -> 15
  const uint32_t remainder = magnitude & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

float f8_e4m3_to_f32(uint8_t bits) {
  const uint32_t sign = bits >> 7;
  const uint32_t exponent = (bits >> 3) & 0xfu;
  const uint32_t mantissa = bits & 0x7u;
  float magnitude;
  if (exponent == 15 && mantissa == 7) {
    magnitude = NAN;  // e4m3fn has no infinities
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x8u), static_cast<int>(exponent) - 10);
  }
  return sign ? -magnitude : magnitude;
}

float f8_e5m2_to_f32(uint8_t bits) {
  // e5m2 is the top byte of an f16.
  return f16_to_f32(static_cast<uint16_t>(bits) << 8);
}

float load_as_f32(const void* data, DType dtype, size_t index) {
  switch (dtype) {
    case DType::F32: return static_cast<const float*>(data)[index];
    case DType::F64: return static_cast<float>(static_cast<const double*>(data)[index]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[index]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[index]);
    case DType::F8_E4M3: return f8_e4m3_to_f32(static_cast<const uint8_t*>(data)[index]);
    case DType::F8_E5M2: return f8_e5m2_to_f32(static_cast<const uint8_t*>(data)[index]);
    default: fail("cannot read dtype ", dtype_name(dtype), " as a float");
  }
}

}  // namespace glm
