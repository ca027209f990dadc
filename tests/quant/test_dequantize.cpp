// The affine and FP8 reference paths against their oracles: mlx's
// mx.quantize / mx.dequantize (tests/fixtures/quant_rows, every bit width mlx
// writes and group sizes 32/64/128, bf16/f16/f32 scales), values that
// straddle 32-bit words, and the slicing of quantized weights for tensor
// parallelism and stacked experts.
#include <cstring>
#include <random>
#include <set>

#include "backend/cpu/cpu_ops.h"
#include "engine/quantize.h"
#include "helpers.h"

namespace glm {
namespace {

using namespace quant_test;

const SafetensorsFile& rows_file() {
  static const SafetensorsFile file((fixture("quant_rows") / "rows.safetensors").string());
  return file;
}

// The case keys of rows.safetensors ("b4_g64_bf16", ...).
std::vector<std::string> row_cases() {
  std::vector<std::string> cases;
  for (const SafetensorsEntry& entry : rows_file().entries()) {
    const std::string suffix = ".input";
    if (entry.name.size() > suffix.size() && entry.name.ends_with(suffix))
      cases.push_back(entry.name.substr(0, entry.name.size() - suffix.size()));
  }
  return cases;
}

void parse_case(const std::string& key, int* bits, int64_t* group) {
  ASSERT_EQ(std::sscanf(key.c_str(), "b%d_g%ld", bits, group), 2) << key;
}

Weight affine_weight(const std::string& name, const TensorView& packed, const TensorView& scales,
                     const TensorView& biases, int bits, int64_t group) {
  Weight weight;
  weight.name = name;
  weight.shape = {packed.dim(0), packed.dim(1) * 32 / bits};
  weight.view = packed;
  weight.format.kind = WeightFormat::Kind::Affine;
  weight.format.dtype = DType::U32;
  weight.format.bits = bits;
  weight.format.group_size = group;
  weight.format.scales = scales;
  weight.format.biases = biases;
  return weight;
}

std::vector<uint8_t> to_dtype(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> out(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else if (dtype == DType::BF16) {
      const uint16_t half = f32_to_bf16(values[i]);
      std::memcpy(out.data() + 2 * i, &half, 2);
    } else {
      // The nearest half (ties to even), found through the reader's own widening.
      uint16_t best = 0;
      float best_error = INFINITY;
      for (uint32_t h = 0; h < 0x10000; ++h) {
        const float error = std::fabs(f16_to_f32(static_cast<uint16_t>(h)) - values[i]);
        if (error < best_error || (error == best_error && (best & 1u) && !(h & 1u)))
          best_error = error, best = static_cast<uint16_t>(h);
      }
      std::memcpy(out.data() + 2 * i, &best, 2);
    }
  }
  return out;
}

TEST(AffineOracle, FixtureCoversEveryMlxWidthAndGroup) {
  std::set<std::pair<int, int64_t>> seen;
  for (const std::string& key : row_cases()) {
    int bits = 0;
    int64_t group = 0;
    parse_case(key, &bits, &group);
    seen.insert({bits, group});
  }
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int64_t group : {32, 64, 128}) EXPECT_TRUE(seen.count({bits, group})) << bits << "-bit g" << group;
}

// Our quantizer reproduces mx.quantize bit for bit: packed words, and the
// scales and biases after the cast to the input's dtype.
TEST(AffineOracle, QuantizeRowIsBitIdenticalToMxQuantize) {
  for (const std::string& key : row_cases()) {
    SCOPED_TRACE(key);
    int bits = 0;
    int64_t group = 0;
    parse_case(key, &bits, &group);
    const TensorView input = rows_file().view(key + ".input");
    const TensorView packed = rows_file().view(key + ".weight");
    const TensorView scales = rows_file().view(key + ".scales");
    const TensorView biases = rows_file().view(key + ".biases");
    const int64_t width = input.dim(1);
    ASSERT_EQ(packed.dtype, DType::U32);
    ASSERT_EQ(packed.dim(1), width * bits / 32);
    std::vector<float> values(width), row_scales(width / group), row_biases(width / group);
    std::vector<uint32_t> words(width * bits / 32);
    for (int64_t r = 0; r < input.dim(0); ++r) {
      cpu::load_row_f32(input, r, values.data());
      quantize_row_affine(values.data(), width, bits, group, words.data(), row_scales.data(), row_biases.data());
      EXPECT_EQ(std::memcmp(words.data(), packed.row(r), words.size() * 4), 0) << "row " << r << " packed";
      const std::vector<uint8_t> s = to_dtype(row_scales, scales.dtype), b = to_dtype(row_biases, biases.dtype);
      EXPECT_EQ(std::memcmp(s.data(), scales.row(r), s.size()), 0) << "row " << r << " scales";
      EXPECT_EQ(std::memcmp(b.data(), biases.row(r), b.size()), 0) << "row " << r << " biases";
    }
  }
}

// dequantize_row of mlx's packed weights equals mx.dequantize exactly.
TEST(AffineOracle, DequantizeRowEqualsMxDequantize) {
  for (const std::string& key : row_cases()) {
    SCOPED_TRACE(key);
    int bits = 0;
    int64_t group = 0;
    parse_case(key, &bits, &group);
    const Weight weight = affine_weight(key, rows_file().view(key + ".weight"), rows_file().view(key + ".scales"),
                                        rows_file().view(key + ".biases"), bits, group);
    const TensorView expected = rows_file().view(key + ".dequantized");
    std::vector<float> row(weight.dim(1));
    for (int64_t r = 0; r < weight.dim(0); ++r) {
      cpu::dequantize_row(weight, r, row.data());
      EXPECT_EQ(std::memcmp(row.data(), expected.row(r), row.size() * 4), 0) << "row " << r;
    }
  }
}

// Every width from 2 to 8 (7 is readable though mlx does not write it; 3, 5,
// 6 and 7 straddle words): unpacking returns the integers packing wrote,
// i.e. dequantize_row gives scale * q + bias with q computed independently.
TEST(AffineOracle, EveryWidthUnpacksWhatWasPacked) {
  std::mt19937 random(7);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  const int64_t width = 384, group = 32;
  std::vector<float> values(width);
  for (float& v : values) v = normal(random);
  for (int bits = 2; bits <= 8; ++bits) {
    SCOPED_TRACE(bits);
    std::vector<uint32_t> words(width * bits / 32);
    std::vector<float> scales(width / group), biases(width / group), back(width);
    quantize_row_affine(values.data(), width, bits, group, words.data(), scales.data(), biases.data());
    const TensorView packed(words.data(), DType::U32, {1, width * bits / 32});
    const Weight weight = affine_weight("w", packed, TensorView(scales.data(), DType::F32, {1, width / group}),
                                        TensorView(biases.data(), DType::F32, {1, width / group}), bits, group);
    cpu::dequantize_row(weight, 0, back.data());
    for (int64_t i = 0; i < width; ++i) {
      const float scale = scales[i / group], bias = biases[i / group];
      const float q = std::min(std::max(std::rint((values[i] - bias) / scale), 0.0f), float((1 << bits) - 1));
      const float product = scale * q;
      ASSERT_EQ(back[i], product + bias) << "column " << i;
    }
  }
}

// Column slices (o_proj / down_proj shards) read the same values as the
// whole row; misaligned slices are refused by name.
TEST(AffineSlicing, ColumnRowAndExpertSlicesReadTheSameValues) {
  const std::string key = "b3_g32_bf16";
  const Weight whole = affine_weight(key, rows_file().view(key + ".weight"), rows_file().view(key + ".scales"),
                                     rows_file().view(key + ".biases"), 3, 32);
  const int64_t width = whole.dim(1);
  std::vector<float> full(width), part(width);
  const Weight columns = whole.slice_columns(32 * 3, 32 * 7);  // 3-bit: 32 values = 3 whole words
  const Weight rows = whole.slice_rows(2, 5);
  for (int64_t r = 0; r < whole.dim(0); ++r) {
    cpu::dequantize_row(whole, r, full.data());
    cpu::dequantize_row(columns, r, part.data());
    for (int64_t i = 0; i < columns.dim(1); ++i) ASSERT_EQ(part[i], full[96 + i]) << "row " << r << " column " << i;
    if (r >= 2 && r < 5) {
      cpu::dequantize_row(rows, r - 2, part.data());
      for (int64_t i = 0; i < width; ++i) ASSERT_EQ(part[i], full[i]);
    }
  }
  expect_error([&] { whole.slice_columns(16, 64); }, {key, "groups of 32"});

  // A stacked [E, out, in] table: expert e is a view of slice e, scales included.
  const TensorView packed = rows_file().view(key + ".weight"), scales = rows_file().view(key + ".scales"),
                   biases = rows_file().view(key + ".biases");
  Weight stacked = affine_weight("stacked", TensorView(packed.data, DType::U32, {2, 3, packed.dim(1)}),
                                 TensorView(scales.data, scales.dtype, {2, 3, scales.dim(1)}),
                                 TensorView(biases.data, biases.dtype, {2, 3, biases.dim(1)}), 3, 32);
  stacked.shape = {2, 3, width};
  const Weight expert = stacked.slice_first(1);
  ASSERT_EQ(expert.shape, (Shape{3, width}));
  for (int64_t r = 0; r < 3; ++r) {
    cpu::dequantize_row(whole, 3 + r, full.data());
    cpu::dequantize_row(expert, r, part.data());
    for (int64_t i = 0; i < width; ++i) ASSERT_EQ(part[i], full[i]);
  }
}

// FP8 e4m3: value = float(q) * scale with per-tensor, per-channel ([out] or
// [out, 1]) and per-block scales (ceil-sized at ragged edges), also sliced.
TEST(Fp8Reference, EveryScaleLayoutAndSliceDequantizes) {
  const int64_t out = 40, in = 72;
  std::vector<uint8_t> q(out * in);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  for (uint8_t& byte : q)
    if ((byte & 0x7f) == 0x7f) byte = 0x10;  // e4m3fn's NaN patterns: avoid
  std::vector<float> channel(out), block(2 * 3);
  for (int64_t r = 0; r < out; ++r) channel[r] = 0.01f * (r + 1);
  for (size_t i = 0; i < block.size(); ++i) block[i] = 0.5f + i;
  const float tensor_scale = 0.125f;

  auto make = [&](WeightFormat::Fp8Scale kind, TensorView scales) {
    Weight weight;
    weight.name = "fp8";
    weight.shape = {out, in};
    weight.view = TensorView(q.data(), DType::F8_E4M3, {out, in});
    weight.format.kind = WeightFormat::Kind::Fp8;
    weight.format.dtype = DType::F8_E4M3;
    weight.format.fp8_scale = kind;
    weight.format.block_rows = 32;
    weight.format.block_cols = 32;
    weight.format.scales = scales;
    return weight;
  };
  auto expected = [&](WeightFormat::Fp8Scale kind, int64_t r, int64_t c) {
    const float value = f8_e4m3_to_f32(q[r * in + c]);
    if (kind == WeightFormat::Fp8Scale::Tensor) return value * tensor_scale;
    if (kind == WeightFormat::Fp8Scale::Channel) return value * channel[r];
    return value * block[(r / 32) * 3 + c / 32];
  };
  const std::vector<std::pair<WeightFormat::Fp8Scale, TensorView>> layouts = {
      {WeightFormat::Fp8Scale::Tensor, TensorView(&tensor_scale, DType::F32, {})},
      {WeightFormat::Fp8Scale::Channel, TensorView(channel.data(), DType::F32, {out})},
      {WeightFormat::Fp8Scale::Channel, TensorView(channel.data(), DType::F32, {out, 1})},
      {WeightFormat::Fp8Scale::Block, TensorView(block.data(), DType::F32, {2, 3})},
  };
  std::vector<float> row(in);
  for (const auto& [kind, scales] : layouts) {
    const Weight weight = make(kind, scales);
    for (int64_t r = 0; r < out; ++r) {
      cpu::dequantize_row(weight, r, row.data());
      for (int64_t c = 0; c < in; ++c) ASSERT_EQ(row[c], expected(kind, r, c)) << r << "," << c;
    }
    // Shards on block boundaries: rows [32, 40), columns [32, 72).
    const Weight rows = weight.slice_rows(32, 40);
    const Weight columns = weight.slice_columns(32, 72);
    for (int64_t r = 0; r < 8; ++r) {
      cpu::dequantize_row(rows, r, row.data());
      for (int64_t c = 0; c < in; ++c) ASSERT_EQ(row[c], expected(kind, 32 + r, c));
    }
    for (int64_t r = 0; r < out; ++r) {
      cpu::dequantize_row(columns, r, row.data());
      for (int64_t c = 0; c < 40; ++c) ASSERT_EQ(row[c], expected(kind, r, 32 + c));
    }
  }
  expect_error([&] { make(WeightFormat::Fp8Scale::Block, layouts[3].second).slice_rows(16, 40); },
               {"fp8", "FP8 blocks of 32"});
}

}  // namespace
}  // namespace glm
