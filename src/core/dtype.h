// Element types the engine reads from checkpoints and computes in, with the
// scalar conversions to f32 that the reference (CPU) path uses.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace glm {

// The safetensors dtype names, plus nothing else: every checkpoint dtype maps here.
enum class DType : uint8_t {
  F64, F32, F16, BF16, F8_E4M3, F8_E5M2,
  I64, I32, I16, I8, U64, U32, U16, U8, BOOL,
};

// Bytes per element.
size_t dtype_size(DType dtype);
// The safetensors spelling ("BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype string; returns false for an unknown one.
bool parse_dtype(std::string_view name, DType* out);
// True for the float types that the reference matmul reads directly.
bool dtype_is_float(DType dtype);

// bf16 is the top half of an f32: widening is a shift.
inline float bf16_to_f32(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

// Round-to-nearest-even narrowing, as torch does when casting f32 to bf16.
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t bits);
// Round-to-nearest-even narrowing to IEEE half (overflow gives infinity).
uint16_t f32_to_f16(float value);
// OCP FP8 E4M3 ("e4m3fn"): no infinities, 0x7f/0xff are NaN, max 448.
float f8_e4m3_to_f32(uint8_t bits);
float f8_e5m2_to_f32(uint8_t bits);

// Reads element `index` of a buffer of float dtype as f32.
float load_as_f32(const void* data, DType dtype, size_t index);

}  // namespace glm
