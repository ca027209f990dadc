// Reference dequantization: any weight format to f32 values, one row at a
// time. Plain and obviously correct on purpose; it is the oracle for the
// SIMD kernels, and it reproduces mlx's and transformers' arithmetic bit for
// bit:
//   affine (mlx):  value = scale * q + bias, a rounded product then a rounded
//                  sum (mx.dequantize does not fuse them), scale and bias
//                  widened from the model dtype;
//   FP8 e4m3:      value = float(q) * scale, as the "dequantize, then run in
//                  float" reference does.
#include "backend/cpu/cpu_ops.h"

// A fused multiply-add would round once where mlx rounds twice; -ffp-contract
// (on by default in GNU mode, and with -march=native there are FMA units) must
// not change the oracle's results.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace glm::cpu {

namespace {

// Row `row` of an mlx affine weight. The row's `bits`-bit integers are one
// little-endian bit stream over its 32-bit words: value i occupies bits
// [i * bits, (i + 1) * bits), so with 3, 5, 6 or 7 bits some values straddle
// two words.
void dequantize_affine_row(const Weight& weight, int64_t row, float* out) {
  const WeightFormat& format = weight.format;
  const int64_t width = weight.dim(-1);
  const int bits = format.bits;
  const int64_t group = format.group_size;
  const uint32_t mask = (1u << bits) - 1u;
  const uint32_t* words = static_cast<const uint32_t*>(weight.view.row(row));  // [width * bits / 32]
  const void* scales = format.scales.row(row);                                // [width / group]
  const void* biases = format.biases.row(row);                                // [width / group]
  for (int64_t g = 0; g < width / group; ++g) {
    const float scale = load_as_f32(scales, format.scales.dtype, static_cast<size_t>(g));
    const float bias = load_as_f32(biases, format.biases.dtype, static_cast<size_t>(g));
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      const int64_t bit = i * bits;
      const int64_t word = bit / 32;
      const int shift = static_cast<int>(bit % 32);
      uint64_t window = words[word];
      if (shift + bits > 32) window |= static_cast<uint64_t>(words[word + 1]) << 32;
      const uint32_t q = static_cast<uint32_t>(window >> shift) & mask;
      const float scaled = scale * static_cast<float>(q);
      out[i] = scaled + bias;
    }
  }
}

// The scale of FP8 element (row, column) for the weight's scale layout.
float fp8_scale(const WeightFormat& format, int64_t row, int64_t column) {
  const TensorView& scales = format.scales;
  switch (format.fp8_scale) {
    case WeightFormat::Fp8Scale::Tensor: return load_as_f32(scales.data, scales.dtype, 0);  // [] or [1]
    case WeightFormat::Fp8Scale::Channel:                                                    // [out] or [out, 1]
      return scales.rank() == 2 ? load_as_f32(scales.row(row), scales.dtype, 0)
                                : load_as_f32(scales.data, scales.dtype, static_cast<size_t>(row));
    case WeightFormat::Fp8Scale::Block:  // [ceil(out / block_rows), ceil(in / block_cols)]
      return load_as_f32(scales.row(row / format.block_rows), scales.dtype,
                         static_cast<size_t>(column / format.block_cols));
  }
  return 0.0f;
}

void dequantize_fp8_row(const Weight& weight, int64_t row, float* out) {
  const int64_t width = weight.dim(-1);
  const uint8_t* values = static_cast<const uint8_t*>(weight.view.row(row));  // [width] e4m3
  for (int64_t i = 0; i < width; ++i) out[i] = f8_e4m3_to_f32(values[i]) * fp8_scale(weight.format, row, i);
}

}  // namespace

void dequantize_row(const Weight& weight, int64_t row, float* out) {
  switch (weight.format.kind) {
    case WeightFormat::Kind::Float: load_row_f32(weight.view, row, out); return;
    case WeightFormat::Kind::Affine: dequantize_affine_row(weight, row, out); return;
    case WeightFormat::Kind::Fp8: dequantize_fp8_row(weight, row, out); return;
  }
  fail(weight.name, ": ", weight.format.describe(), " weights are not supported");
}

float weight_element(const Weight& weight, int64_t index) {
  GLM_CHECK(weight.format.kind == WeightFormat::Kind::Float, weight.name, ": expected a float vector, found ",
            weight.format.describe());
  return load_as_f32(weight.view.data, weight.view.dtype, static_cast<size_t>(index));
}

}  // namespace glm::cpu
