// Tests of the SIMD projection kernels (src/backend/cpu/kernels/) against
// cpu::linear_reference (and of linear_many, several projections per call): every weight format with a kernel (F32, BF16, F16,
// affine 4/8-bit with groups 32/64/128 and f32/bf16/f16 scales), every ISA
// path this CPU has, exact and fast (bf16/int8) activations, sizes that are
// not multiples of any SIMD width, 1/2/3 threads. Also that results are
// bit-identical across thread counts and for a token alone vs in a batch
// (the ragged-batch guarantee), and that unsupported formats fall back.
// Activation modes: exact (f32, within 1e-5 of the reference), fast (bf16 or
// int8) and int8 (int8 for affine weights only), within 1e-2 relative L2.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernel_args.h"  // the AVX2 panels' token threshold
#include "backend/cpu/kernels/kernels.h"
#include "../common/random_values.h"

namespace glm {
namespace {

using cpu::kernels::Activations;
using cpu::kernels::Isa;

using testing_random::random_values;

// f32 -> f16 bits, round to nearest even; normal range only (tests keep to it).
uint16_t f32_to_f16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
  const uint32_t mantissa = bits & 0x7fffff;
  if (exponent <= 0) return sign;
  if (exponent >= 31) return sign | 0x7c00;
  uint16_t half = static_cast<uint16_t>(sign | (exponent << 10) | (mantissa >> 13));
  const uint32_t rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;
  return half;
}

// Values stored in `dtype` (F32, BF16 or F16), kept alive with the weight.
struct Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // what the stored bits mean, as f32
};

Stored store(const std::vector<float>& values, DType dtype) {
  Stored s;
  s.bytes.resize(values.size() * dtype_size(dtype));
  s.values.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) {
      std::memcpy(s.bytes.data() + 4 * i, &values[i], 4);
      s.values[i] = values[i];
    } else {
      const uint16_t bits = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
      std::memcpy(s.bytes.data() + 2 * i, &bits, 2);
      s.values[i] = dtype == DType::BF16 ? bf16_to_f32(bits) : f16_to_f32(bits);
    }
  }
  return s;
}

// A weight under test with its exact f32 values (the oracle's input).
struct TestWeight {
  Weight weight;
  std::vector<float> dense;  // [out, in] f32 values of the weight
  Stored values, scales, biases;
  std::vector<uint32_t> words;
};

TestWeight float_test_weight(int64_t out, int64_t in, DType dtype, unsigned seed) {
  TestWeight t;
  t.values = store(random_values(static_cast<size_t>(out * in), seed, 0.5f), dtype);
  // f16 subnormals and zeros are part of the format; put some in.
  if (dtype == DType::F16)
    for (size_t i = 0; i < t.values.values.size(); i += 97) {
      const uint16_t bits = static_cast<uint16_t>(i % 3 == 0 ? 0 : 0x0001 + i % 0x3ff);
      std::memcpy(t.values.bytes.data() + 2 * i, &bits, 2);
      t.values.values[i] = f16_to_f32(bits);
    }
  t.dense = t.values.values;
  t.weight = float_weight("w", TensorView(t.values.bytes.data(), dtype, {out, in}));
  return t;
}

// mlx-lm affine quantization: `bits`-bit q packed little end first into U32
// words; value = scale * q + bias per `group` columns.
TestWeight affine_test_weight(int64_t out, int64_t in, int bits, int64_t group, DType scale_dtype, unsigned seed) {
  TestWeight t;
  std::mt19937 generator(seed);
  std::uniform_int_distribution<uint32_t> level(0, (1u << bits) - 1);
  const int64_t groups = in / group;
  std::vector<float> scales(static_cast<size_t>(out * groups)), biases(scales.size());
  std::uniform_real_distribution<float> uniform(0.5f, 1.5f);
  for (size_t i = 0; i < scales.size(); ++i) {
    scales[i] = uniform(generator) * 0.1f / static_cast<float>(1 << (bits - 4));
    biases[i] = -scales[i] * static_cast<float>((1 << bits) / 2) + 0.01f * (uniform(generator) - 1.0f);
  }
  t.scales = store(scales, scale_dtype);
  t.biases = store(biases, scale_dtype);
  const int64_t words_per_row = in * bits / 32;
  t.words.assign(static_cast<size_t>(out * words_per_row), 0u);
  t.dense.resize(static_cast<size_t>(out * in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const uint32_t q = level(generator);
      const int64_t bit = c * bits;
      t.words[r * words_per_row + bit / 32] |= q << (bit % 32);
      const float s = t.scales.values[r * groups + c / group], b = t.biases.values[r * groups + c / group];
      t.dense[r * in + c] = s * static_cast<float>(q) + b;
    }
  Weight& w = t.weight;
  w.name = "w";
  w.shape = {out, in};
  w.view = TensorView(t.words.data(), DType::U32, {out, words_per_row});
  w.format.kind = WeightFormat::Kind::Affine;
  w.format.dtype = DType::U32;
  w.format.bits = bits;
  w.format.group_size = group;
  w.format.scales = TensorView(t.scales.bytes.data(), scale_dtype, {out, groups});
  w.format.biases = TensorView(t.biases.bytes.data(), scale_dtype, {out, groups});
  return t;
}

// The oracle: the reference loop over the f32 values of the weight.
std::vector<float> oracle(const TestWeight& t, const std::vector<float>& x, int64_t n_tokens, const Weight* bias) {
  const int64_t out = t.weight.dim(0), in = t.weight.dim(1);
  const Weight dense = float_weight("dense", TensorView(t.dense.data(), DType::F32, {out, in}));
  std::vector<float> y(static_cast<size_t>(n_tokens * out));
  cpu::linear_reference(y.data(), x.data(), n_tokens, dense, bias);
  return y;
}

// Exact activations: max |a - b| / max |b| (every element within rounding).
double relative_error(const std::vector<float>& actual, const std::vector<float>& expected) {
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(actual[i]) - expected[i]));
    scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
  }
  return worst / scale;
}

// Fast activations: |a - b|_2 / |b|_2, as the fixture tests measure logits.
// Rounding x to bf16 or int8 is noise on every term; its sum is judged as a
// whole (a max-element bound would grade the noise's tail).
double relative_l2(const std::vector<float>& actual, const std::vector<float>& expected) {
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    difference += (actual[i] - static_cast<double>(expected[i])) * (actual[i] - static_cast<double>(expected[i]));
    norm += static_cast<double>(expected[i]) * expected[i];
  }
  return std::sqrt(difference / norm);
}

double error_of(bool fast, const std::vector<float>& actual, const std::vector<float>& expected) {
  return fast ? relative_l2(actual, expected) : relative_error(actual, expected);
}

// Runs cpu::linear under the given ISA, activation mode and thread count.
class KernelScope {
 public:
  KernelScope(Isa isa, Activations activations) : saved_(cpu::kernels::options()) {
    cpu::kernels::options().isa = isa;
    cpu::kernels::options().activations = activations;
  }
  ~KernelScope() {
    cpu::kernels::options() = saved_;
    omp_set_num_threads(threads_);
  }

 private:
  cpu::kernels::Options saved_;
  int threads_ = omp_get_max_threads();
};

std::vector<float> run_linear(const Weight& w, const std::vector<float>& x, int64_t n_tokens, const Weight* bias,
                              int threads) {
  omp_set_num_threads(threads);
  std::vector<float> y(static_cast<size_t>(n_tokens * w.dim(0)), NAN);
  cpu::linear(y.data(), x.data(), n_tokens, w, bias);
  return y;
}

// The batch's bits again for the same n_tokens of x on 2 and on 3 threads.
void expect_same_bits_on_more_threads(const Weight& w, const std::vector<float>& x, int64_t n_tokens,
                                      const Weight* bias, const std::vector<float>& batch) {
  for (int threads : {2, 3})
    EXPECT_EQ(std::memcmp(run_linear(w, x, n_tokens, bias, threads).data(), batch.data(), batch.size() * sizeof(float)),
              0)
        << threads << " threads changed bits";
}

// Whether tokens [first, first + n) of x, run alone on `threads` threads,
// get the bits those tokens have in `batch`.
bool part_has_batch_bits(const Weight& w, const std::vector<float>& x, int64_t first, int64_t n, const Weight* bias,
                         int threads, const std::vector<float>& batch) {
  const int64_t in = w.dim(1), out = w.dim(0);
  const std::vector<float> part(x.begin() + first * in, x.begin() + (first + n) * in);
  const std::vector<float> y = run_linear(w, part, n, bias, threads);
  return std::memcmp(y.data(), batch.data() + first * out, y.size() * sizeof(float)) == 0;
}

std::vector<Isa> available_isas() {
  std::vector<Isa> isas;
  if (cpu::kernels::supported_isa() >= Isa::Avx2) isas.push_back(Isa::Avx2);
  if (cpu::kernels::supported_isa() >= Isa::Avx512) isas.push_back(Isa::Avx512);
  return isas;
}

// A batch past every one-token path (AVX2 4-bit weights take passes of a
// few tokens up to int8_avx2_gemv_tokens(4) tokens), so that it runs the
// prompt kernels the tokens alone and in small calls are compared with.
constexpr int64_t kBatch = 70;
static_assert(kBatch > cpu::kernels::avx2::int8_avx2_gemv_tokens(4) && kBatch > cpu::kernels::avx2::int8_avx2_gemv_tokens(8));

// Every activation mode: exact, fast (bf16/int8) and int8 (affine only).
constexpr Activations kModes[] = {Activations::Exact, Activations::Fast, Activations::Int8};

std::string mode_name(Activations mode) { return cpu::kernels::activations_name(mode); }

// Whether a fast (bf16/int8-activation) kernel runs for this weight now.
bool fast_kernel_runs(const Weight& w, Isa isa) {
  const char* name = cpu::kernels::kernel_name(w, 17);
  return isa != Isa::Reference && name && std::string(name).find("exact") == std::string::npos;
}

// Checks one weight on every ISA, every activation mode, 1/2/3 threads and
// 1/2/3/kBatch tokens; bit-identity across threads and batch sizes.
void check_weight(const TestWeight& t, double exact_tolerance, double fast_tolerance, const Weight* bias = nullptr,
                  const std::string& label = "") {
  const int64_t in = t.weight.dim(1);
  const std::vector<float> x = random_values(static_cast<size_t>(kBatch * in), 99);
  const std::vector<float> expected = oracle(t, x, kBatch, bias);
  for (Isa isa : available_isas())
    for (Activations mode : kModes) {
      KernelScope scope(isa, mode);
      const bool fast = mode != Activations::Exact && fast_kernel_runs(t.weight, isa);
      const double tolerance = fast ? fast_tolerance : exact_tolerance;
      SCOPED_TRACE(label + " isa " + cpu::kernels::isa_name(isa) + " " + mode_name(mode) + " kernel " +
                   (cpu::kernels::kernel_name(t.weight, kBatch) ? cpu::kernels::kernel_name(t.weight, kBatch) : "none"));
      ASSERT_NE(cpu::kernels::kernel_name(t.weight, kBatch), nullptr);
      const std::vector<float> batch = run_linear(t.weight, x, kBatch, bias, 1);
      EXPECT_LE(error_of(fast, batch, expected), tolerance);
      expect_same_bits_on_more_threads(t.weight, x, kBatch, bias, batch);
      // Tokens alone and in batches of 2 and 3 give the whole batch's bits.
      for (int64_t n : {1, 2, 3})
        for (int64_t first : {int64_t{0}, int64_t{5}, kBatch - n})
          EXPECT_TRUE(part_has_batch_bits(t.weight, x, first, n, bias, n == 1 ? 2 : 3, batch))
              << n << " tokens from " << first << " differ from the same tokens in a batch of " << kBatch;
    }
}

// ---- float weights ----

TEST(KernelsFloat, F32Bf16F16OddSizes) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (int64_t in : {int64_t{4100}, int64_t{37}, int64_t{5}}) {
      const TestWeight t = float_test_weight(37, in, dtype, 1 + static_cast<unsigned>(in));
      check_weight(t, 1e-5, 1e-2, nullptr, std::string(dtype_name(dtype)) + " in " + std::to_string(in));
    }
}

TEST(KernelsFloat, BiasOfAnyFloatType) {
  const TestWeight t = float_test_weight(37, 300, DType::BF16, 3);
  for (DType dtype : {DType::F32, DType::BF16}) {
    const Stored b = store(random_values(37, 4), dtype);
    const Weight bias = float_weight("b", TensorView(b.bytes.data(), dtype, {37}));
    check_weight(t, 1e-5, 1e-2, &bias, std::string("bias ") + std::string(dtype_name(dtype)));
  }
}

TEST(KernelsFloat, StridedColumnSliceOfAMatrix) {
  const TestWeight full = float_test_weight(37, 4100, DType::BF16, 5);
  TestWeight t;
  t.weight = full.weight.slice_columns(1000, 3021);
  for (int64_t r = 0; r < 37; ++r)
    t.dense.insert(t.dense.end(), full.dense.begin() + r * 4100 + 1000, full.dense.begin() + r * 4100 + 3021);
  check_weight(t, 1e-5, 1e-2, nullptr, "column slice");
}

TEST(KernelsFloat, ManyTokensAndRowsCoverEveryTile) {
  // 70 tokens x 76 rows x 2100 columns: full and partial tiles of every
  // kernel (76 rows leave a remainder for tiles of 2, 3 and 4 rows), several
  // row blocks; the batch against tokens alone, bit for bit.
  const TestWeight t = float_test_weight(76, 2100, DType::BF16, 6);
  const std::vector<float> x = random_values(70 * 2100, 7);
  const std::vector<float> expected = oracle(t, x, 70, nullptr);
  for (Isa isa : available_isas())
    for (Activations mode : kModes) {
      KernelScope scope(isa, mode);
      const bool fast = mode != Activations::Exact && fast_kernel_runs(t.weight, isa);
      const std::vector<float> batch = run_linear(t.weight, x, 70, nullptr, 2);
      EXPECT_LE(error_of(fast, batch, expected), fast ? 1e-2 : 1e-5) << cpu::kernels::isa_name(isa) << " " << mode_name(mode);
      for (int64_t token : {0, 37, 69}) {  // alone: one tile, unchunked
        const std::vector<float> alone(x.begin() + token * 2100, x.begin() + (token + 1) * 2100);
        EXPECT_EQ(std::memcmp(run_linear(t.weight, alone, 1, nullptr, 1).data(), batch.data() + token * 76, 76 * sizeof(float)), 0)
            << cpu::kernels::isa_name(isa) << " " << mode_name(mode) << ": token " << token << " alone differs from the batch";
      }
    }
}

// ---- affine weights ----

TEST(KernelsAffine, FourAndEightBitsEveryGroupAndScaleType) {
  for (int bits : {4, 8})
    for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}})
      for (DType scale_dtype : {DType::F32, DType::BF16, DType::F16}) {
        // An odd number of groups: a half 64-column chunk for group 32.
        const int64_t in = group * (4096 / group + 1);
        const TestWeight t = affine_test_weight(37, in, bits, group, scale_dtype, static_cast<unsigned>(bits * group));
        check_weight(t, 1e-5, 1e-2, nullptr,
                     std::to_string(bits) + "-bit g" + std::to_string(group) + " " +
                         std::string(dtype_name(scale_dtype)) + " scales");
      }
}

TEST(KernelsAffine, ColumnSliceAndBias) {
  const TestWeight full = affine_test_weight(37, 1024, 4, 64, DType::BF16, 8);
  TestWeight t;
  t.weight = full.weight.slice_columns(256, 832);
  for (int64_t r = 0; r < 37; ++r)
    t.dense.insert(t.dense.end(), full.dense.begin() + r * 1024 + 256, full.dense.begin() + r * 1024 + 832);
  const std::vector<float> b = random_values(37, 9);
  const Weight bias = float_weight("b", TensorView(b.data(), DType::F32, {37}));
  check_weight(t, 1e-5, 1e-2, &bias, "affine column slice");
}

TEST(KernelsAffine, SmallAndLargeTokenCounts) {
  const TestWeight t = affine_test_weight(75, 512, 4, 32, DType::F16, 10);
  const std::vector<float> x = random_values(70 * 512, 11);
  const std::vector<float> expected = oracle(t, x, 70, nullptr);
  for (Isa isa : available_isas())
    for (Activations mode : kModes) {
      KernelScope scope(isa, mode);
      const bool fast = mode != Activations::Exact && fast_kernel_runs(t.weight, isa);
      EXPECT_LE(error_of(fast, run_linear(t.weight, x, 70, nullptr, 3), expected), fast ? 1e-2 : 1e-5)
          << cpu::kernels::isa_name(isa) << " " << mode_name(mode);
    }
}

// Activations with outlier channels (as LLM hidden states have): per-group
// int8 scales keep the damage to the outliers' groups.
TEST(KernelsAffine, Int8ActivationsWithOutlierChannels) {
  const TestWeight t = affine_test_weight(64, 2048, 4, 64, DType::BF16, 12);
  std::vector<float> x = random_values(5 * 2048, 13);
  for (int64_t token = 0; token < 5; ++token)
    for (int64_t channel : {17, 700, 701, 1999}) x[token * 2048 + channel] *= 10.0f;
  const std::vector<float> expected = oracle(t, x, 5, nullptr);
  KernelScope scope(Isa::Avx512, Activations::Fast);
  if (!fast_kernel_runs(t.weight, cpu::kernels::options().isa)) GTEST_SKIP() << "no AVX512_VNNI";
  EXPECT_LE(relative_l2(run_linear(t.weight, x, 5, nullptr, 2), expected), 1e-2);
}

// Decode with int8 activations: calls of a few tokens run them through the
// one-token kernel (rows kept in registers and reduced across rows,
// int8_block_gemv; on AVX2 4-bit up to 64 tokens, in passes of up to 3),
// larger ones through repacked blocks; both against the reference (1e-2
// relative L2) and bit for bit against the same tokens in a batch of
// kBatch. Calls of 1, 2, 5, 6 and 9 tokens; row counts below, at
// and past the 16-row blocks (a copied partial block, a next block to
// prefetch); widths with a part last segment (group 32: 32, 64 or 96 of
// 128 columns); 1/2/3 threads; on AVX2 the VPMADDUBSW kernel (4-bit).
TEST(KernelsAffine, Int8ActivationsDecodeEveryShape) {
  struct Shape {
    int bits;
    int64_t group, out, in;
    DType scale_dtype;
  };
  const Shape shapes[] = {
      {4, 64, 5, 4096, DType::BF16},    {4, 64, 16, 1408, DType::BF16},  {4, 64, 100, 4096, DType::BF16},
      {4, 32, 37, 4128, DType::F16},    {4, 32, 48, 4160, DType::BF16},  {4, 32, 33, 4192, DType::F32},
      {4, 128, 70, 2048, DType::BF16},  {4, 64, 3, 64, DType::F16},      {8, 64, 37, 4096, DType::BF16},
      {8, 32, 100, 1440, DType::F16},   {8, 128, 50, 1408 - 128, DType::BF16}, {8, 64, 16, 128, DType::F32},
  };
  for (const Shape& shape : shapes)
   for (Isa isa : available_isas()) {
    const TestWeight t = affine_test_weight(shape.out, shape.in, shape.bits, shape.group, shape.scale_dtype,
                                            static_cast<unsigned>(shape.out + shape.in));
    const std::vector<float> x = random_values(static_cast<size_t>(kBatch * shape.in), 23);
    const std::vector<float> expected = oracle(t, x, kBatch, nullptr);
    KernelScope scope(isa, Activations::Int8);
    if (!fast_kernel_runs(t.weight, isa)) continue;  // no int8 kernel for it here (8-bit on AVX2, no VNNI)
    SCOPED_TRACE(std::to_string(shape.bits) + "-bit g" + std::to_string(shape.group) + " " +
                 std::to_string(shape.out) + "x" + std::to_string(shape.in) + " " +
                 std::string(dtype_name(shape.scale_dtype)) + " scales, " + cpu::kernels::kernel_name(t.weight, 1));
    const std::vector<float> batch = run_linear(t.weight, x, kBatch, nullptr, 2);
    EXPECT_LE(relative_l2(batch, expected), 1e-2);
    // All kBatch tokens decoded n at a time (the last call may hold fewer), on
    // 1, 2, 3, 1, ... threads: the error is judged over all of them, as a
    // few outputs alone measure the rounding noise's spread, not its size.
    for (int64_t n : {1, 2, 5, 6, 9}) {
      std::vector<float> decoded(batch.size(), NAN);
      for (int64_t first = 0; first < kBatch; first += n) {
        const int64_t count = std::min<int64_t>(n, kBatch - first);
        const int threads = 1 + static_cast<int>(first / n % 3);
        const std::vector<float> part(x.begin() + first * shape.in, x.begin() + (first + count) * shape.in);
        const std::vector<float> y = run_linear(t.weight, part, count, nullptr, threads);
        std::copy(y.begin(), y.end(), decoded.begin() + first * shape.out);
        EXPECT_EQ(std::memcmp(y.data(), batch.data() + first * shape.out, y.size() * sizeof(float)), 0)
            << count << " tokens from " << first << " on " << threads << " threads differ from the batch";
      }
      EXPECT_LE(relative_l2(decoded, expected), 1e-2) << n << " tokens per call";
    }
  }
}

// The first 64-byte boundary inside storage (which has 16 dwords to spare):
// the AVX-512 fill stores whole aligned vectors.
uint32_t* aligned64(std::vector<uint32_t>& storage) {
  return reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
}

// Scales and biases laid out at load for the one-token int8 kernel
// (block_scale_pairs, what the CPU backend's place() attaches) give the bits
// of the kernel transposing them itself: 4 and 8 bits, groups 32/64/128,
// bf16 and f16, row counts below, at and past a block of 16, 1-5 tokens per
// call (the one-token kernel), 6, 9 and 17 (AVX2 4-bit: passes; else the
// prompt path) and kBatch (the prompt path, which widens
// the pairs instead of reading the weight's scales) on 1-3 threads; and
// linear_many with them.
TEST(KernelsAffine, Int8BlockScalePairsGiveTheSameBits) {
  struct Shape {
    int bits;
    int64_t group, out, in;
    DType scale_dtype;
  };
  const Shape shapes[] = {{4, 64, 5, 4096, DType::BF16},  {4, 64, 100, 1408, DType::BF16}, {4, 32, 37, 4128, DType::F16},
                          {4, 128, 48, 2048, DType::BF16}, {8, 64, 37, 4096, DType::BF16}, {8, 32, 17, 1440, DType::F16}};
  int runs = 0;
  for (Isa isa : available_isas()) {
    if (isa == Isa::Reference) continue;
    for (const Shape& shape : shapes) {
      TestWeight t = affine_test_weight(shape.out, shape.in, shape.bits, shape.group, shape.scale_dtype,
                                        static_cast<unsigned>(shape.out * 7 + shape.in));
      KernelScope scope(isa, Activations::Int8);  // AVX2: the VPMADDUBSW kernel; AVX-512: VNNI where present
      const int64_t count = cpu::kernels::block_scale_pairs_count(t.weight);
      ASSERT_GT(count, 0) << cpu::kernels::isa_name(isa) << ": no pairs for the int8 kernel";
      ++runs;
      SCOPED_TRACE(std::string(cpu::kernels::isa_name(isa)) + " " + std::to_string(shape.bits) + "-bit g" +
                   std::to_string(shape.group) + " " + std::to_string(shape.out) + "x" + std::to_string(shape.in));
      EXPECT_EQ(count, (shape.out + 15) / 16 * (shape.in / shape.group) * 16);
      std::vector<uint32_t> storage(static_cast<size_t>(count) + 16);
      uint32_t* pairs = aligned64(storage);
      cpu::kernels::fill_block_scale_pairs(t.weight, pairs);
      Weight placed = t.weight;
      placed.format.block_scale_pairs = TensorView(pairs, DType::U32, {count});
      const std::vector<float> x = random_values(static_cast<size_t>(kBatch * shape.in), 42);
      for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{6}, int64_t{9}, int64_t{17}, kBatch})
        for (int threads : {1, 2, 3}) {
          const std::vector<float> part(x.begin(), x.begin() + n * shape.in);
          const std::vector<float> plain = run_linear(t.weight, part, n, nullptr, threads);
          const std::vector<float> with = run_linear(placed, part, n, nullptr, threads);
          EXPECT_EQ(std::memcmp(plain.data(), with.data(), plain.size() * sizeof(float)), 0)
              << n << " tokens on " << threads << " threads";
        }
      EXPECT_LE(relative_l2(run_linear(placed, x, 5, nullptr, 2), oracle(t, x, 5, nullptr)), 1e-2);
      // A slice drops the pairs (they describe the whole weight).
      EXPECT_TRUE(placed.slice_rows(0, shape.out).format.block_scale_pairs.empty());
    }
  }
  // Where both kernels run, their fills agree dword for dword: one layout,
  // whichever ISA laid it out.
  const std::vector<Isa> isas = available_isas();
  if (std::find(isas.begin(), isas.end(), Isa::Avx512) != isas.end())
    for (const Shape& shape : shapes) {
      const TestWeight t = affine_test_weight(shape.out, shape.in, shape.bits, shape.group, shape.scale_dtype, 5);
      std::vector<std::vector<uint32_t>> filled;
      for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
        KernelScope scope(isa, Activations::Int8);
        const int64_t count = cpu::kernels::block_scale_pairs_count(t.weight);
        std::vector<uint32_t> storage(static_cast<size_t>(count) + 16);
        uint32_t* pairs = aligned64(storage);
        cpu::kernels::fill_block_scale_pairs(t.weight, pairs);
        filled.emplace_back(pairs, pairs + count);
      }
      EXPECT_EQ(filled[0], filled[1]) << shape.bits << "-bit g" << shape.group << " " << shape.out << "x" << shape.in;
    }
  if (runs == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

// The AVX2 int8 kernels (VPMADDUBSW; 8-bit weights recentred to q - 128)
// give the bits of the AVX-512 ones (VPDPBUSD): the same quantized x, the
// same exact int32 group sums, the same f32 operations per output.
TEST(KernelsAffine, Int8ActivationsSameBitsOnAvx2AndAvx512) {
  struct Shape {
    int bits;
    int64_t group, in;
  };
  for (const Shape shape : {Shape{4, 32, 4128}, Shape{4, 64, 1408}, Shape{4, 128, 2048}, Shape{8, 32, 4128},
                            Shape{8, 64, 1408}, Shape{8, 128, 2048}}) {
    SCOPED_TRACE(std::to_string(shape.bits) + "-bit g" + std::to_string(shape.group));
    const TestWeight t = affine_test_weight(45, shape.in, shape.bits, shape.group, DType::BF16, 24);
    const std::vector<float> x = random_values(static_cast<size_t>(5 * shape.in), 25);
    std::vector<float> avx2, avx512;
    {
      KernelScope scope(Isa::Avx2, Activations::Int8);
      if (!fast_kernel_runs(t.weight, Isa::Avx2)) GTEST_SKIP() << "no AVX2";
      avx2 = run_linear(t.weight, x, 5, nullptr, 2);
    }
    KernelScope scope(Isa::Avx512, Activations::Int8);
    if (!fast_kernel_runs(t.weight, Isa::Avx512) ||
        std::string(cpu::kernels::kernel_name(t.weight, 5)) != "avx512 int8-vnni")
      GTEST_SKIP() << "no AVX512_VNNI";
    avx512 = run_linear(t.weight, x, 5, nullptr, 3);
    EXPECT_EQ(std::memcmp(avx2.data(), avx512.data(), avx2.size() * sizeof(float)), 0);
  }
}

// x already on the int8 grid (every x a multiple of max|x| / 127) is
// quantized without error, so the int8 mode must give the exact mode's
// outputs within f32 rounding, however large its int16 and int32 sums get.
void expect_int8_mode_exact(const Weight& weight, const std::vector<float>& x, int64_t n, const std::string& what) {
  std::vector<float> exact;
  {
    KernelScope scope(Isa::Avx2, Activations::Exact);
    exact = run_linear(weight, x, n, nullptr, 1);
  }
  KernelScope scope(Isa::Avx2, Activations::Int8);
  ASSERT_STREQ(cpu::kernels::kernel_name(weight, n), "avx2 int8-maddubs");
  EXPECT_LE(relative_l2(run_linear(weight, x, n, nullptr, 1), exact), 1e-5) << what << ", " << n << " tokens";
}

// 8-bit weights on AVX2 at the edges of VPMADDUBSW's int16 pairs: bytes 0
// and 255 against activations at +-127. The one-token path multiplies q by
// x's nibbles (xl up to 15, xh down to -8) and sums a group's pairs in int16:
// at group 128, 4 x 7650 = 30600; the prompt tiles' runs of 8 nibble pairs
// reach 8 x 3810. The int32 group sums must still be exact.
TEST(KernelsAffine, Int8Avx2EightBitExtremesAreExact) {
  if (cpu::kernels::supported_isa() < Isa::Avx2) GTEST_SKIP() << "no AVX2";
  const int64_t out = 16, in = 256;
  for (const int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}}) {
    TestWeight t = affine_test_weight(out, in, 8, group, DType::BF16, 31);
    // Every packed byte 0 or 255, three row patterns (the third all 255).
    const uint32_t patterns[3] = {0xff00ff00u, 0x00ffff00u, 0xffffffffu};
    for (size_t i = 0; i < t.words.size(); ++i) t.words[i] = patterns[(i / (in / 4)) % 3];
    // 3 tokens go one by one, 9 and kBatch through the repacked block
    // (prompts); x mixed, or whole tokens of +1 or -1 (every sum at its
    // extreme).
    for (const int64_t n : {int64_t{3}, int64_t{9}, kBatch})
      for (const bool whole : {false, true}) {
        std::vector<float> x(static_cast<size_t>(n * in));
        for (size_t i = 0; i < x.size(); ++i)
          x[i] = whole ? ((i / in) % 3 == 1 ? -1.0f : 1.0f)
                       : (i % 3 == 0 ? 127.0f : i % 3 == 1 ? -127.0f : 64.0f) / 127.0f;
        expect_int8_mode_exact(t.weight, x, n,
                               (whole ? "8-bit, whole tokens of +-1, group " : "8-bit, group ") + std::to_string(group));
      }
  }
}

// 4-bit weights at every nibble 15 against x of +-127: each VPMADDUBSW pair
// is 2 x 15 x 127 = 3810, and any int16 sum of more than 8 of them would
// wrap (a faster tile that summed quads in int16 before VPMADDWD was tried
// in session 24: such a run must stop at 8). The one-token kernel's passes
// of 1, 2 and 3 tokens (3 and 9 tokens) and the prompt tiles (kBatch), every
// group size.
TEST(KernelsAffine, Int8Avx2FourBitExtremesAreExact) {
  if (cpu::kernels::supported_isa() < Isa::Avx2) GTEST_SKIP() << "no AVX2";
  const int64_t out = 16, in = 512;
  for (const int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}}) {
    TestWeight t = affine_test_weight(out, in, 4, group, DType::BF16, 32);
    // Rows of all 15s, and rows of 15s and 0s by nibble.
    for (size_t i = 0; i < t.words.size(); ++i) t.words[i] = (i / (in / 8)) % 2 == 0 ? 0xffffffffu : 0x0f0ff0f0u;
    for (const int64_t n : {int64_t{3}, int64_t{9}, kBatch}) {
      std::vector<float> x(static_cast<size_t>(n * in));
      for (size_t i = 0; i < x.size(); ++i) x[i] = (i / in) % 3 == 1 ? -1.0f : 1.0f;  // whole tokens of +1 or -1
      expect_int8_mode_exact(t.weight, x, n, "4-bit, group " + std::to_string(group));
    }
  }
}

// The int8 mode quantizes activations for affine weights only: float weights
// keep the exact kernel (and its 1e-5), unlike the fast mode. VNNI
// instructions run only where the CPU has them: AVX2 gets VPMADDUBSW.
TEST(KernelsDispatch, Int8ModeLeavesFloatWeightsExact) {
  if (cpu::kernels::supported_isa() == Isa::Reference) GTEST_SKIP() << "no SIMD kernels";
  const TestWeight bf16 = float_test_weight(8, 64, DType::BF16, 18);
  const TestWeight four = affine_test_weight(16, 256, 4, 64, DType::BF16, 19);
  const TestWeight eight = affine_test_weight(16, 256, 8, 64, DType::BF16, 20);
  if (cpu::kernels::supported_isa() == Isa::Avx512) {
    KernelScope scope(Isa::Avx512, Activations::Int8);
    for (int64_t n : {1, 512}) {
      EXPECT_STREQ(cpu::kernels::kernel_name(bf16.weight, n), "avx512 exact");
      const std::string name = cpu::kernels::kernel_name(four.weight, n);
      EXPECT_TRUE(name == "avx512 int8-vnni" || name == "avx2 int8-maddubs") << name;  // the latter without VNNI
    }
  }
  KernelScope scope(Isa::Avx2, Activations::Int8);
  EXPECT_STREQ(cpu::kernels::kernel_name(bf16.weight, 1), "avx2 float-lanes");  // f32 activations
  EXPECT_STREQ(cpu::kernels::kernel_name(four.weight, 1), "avx2 int8-maddubs");
  EXPECT_STREQ(cpu::kernels::kernel_name(eight.weight, 1), "avx2 int8-maddubs");
}

// A weight marked f32_activations (the MoE router's) takes the exact kernels
// in every mode: in the fast modes it gets Exact's bits, bit for bit, where
// the unmarked weight gets bf16-rounded (or int8) activations.
TEST(KernelsDispatch, F32ActivationsWeightIsExactInEveryMode) {
  if (cpu::kernels::supported_isa() == Isa::Reference) GTEST_SKIP() << "no SIMD kernels";
  TestWeight bf16 = float_test_weight(24, 200, DType::BF16, 21);
  TestWeight four = affine_test_weight(16, 256, 4, 64, DType::BF16, 22);
  for (TestWeight* test : {&bf16, &four}) {
    Weight marked = test->weight;
    marked.f32_activations = true;
    for (int64_t n : {1, 7, 96}) {
      const std::vector<float> x = random_values(static_cast<size_t>(n * marked.dim(1)), 23, 1.0f);
      std::vector<float> exact;
      {
        KernelScope scope(cpu::kernels::supported_isa(), Activations::Exact);
        exact = run_linear(marked, x, n, nullptr, 2);
      }
      for (Activations mode : {Activations::Fast, Activations::FastPrompts, Activations::Int8}) {
        KernelScope scope(cpu::kernels::supported_isa(), mode);
        SCOPED_TRACE(std::string(mode_name(mode)) + ", " + std::to_string(n) + " tokens");
        const std::vector<float> y = run_linear(marked, x, n, nullptr, 2);
        EXPECT_EQ(std::memcmp(y.data(), exact.data(), y.size() * sizeof(float)), 0);
        const char* kernel = cpu::kernels::kernel_name(test->weight, n);  // rounds or quantizes x?
        const bool rounds = kernel && (std::string(kernel).find("bf16-") != std::string::npos ||
                                       std::string(kernel).find("int8") != std::string::npos);
        if (rounds && (mode != Activations::FastPrompts || n >= 32)) {
          const std::vector<float> unmarked = run_linear(test->weight, x, n, nullptr, 2);
          EXPECT_NE(std::memcmp(unmarked.data(), exact.data(), y.size() * sizeof(float)), 0)
              << "the unmarked weight should take the fast kernel here";
        }
      }
    }
  }
}

// FastPrompts counts the step's tokens, not the call's (kernels::linear's
// step_tokens): an expert's 3 tokens of a 512-token prompt take the prompt
// kernel (tokens in lanes), as they would with a threshold of 1, and the
// same 3 tokens of a 3-token step stay exact. Compared bit for bit.
TEST(KernelsDispatch, FastPromptsThresholdCountsTheStep) {
  if (cpu::kernels::supported_isa() != Isa::Avx512) GTEST_SKIP() << "no AVX-512";
  const TestWeight bf16 = float_test_weight(24, 256, DType::BF16, 21);
  const std::vector<float> x = random_values(3 * 256, 22);
  auto run = [&](Activations mode, int64_t step_tokens, int64_t fast_min_tokens = 32) {
    KernelScope scope(Isa::Avx512, mode);
    cpu::kernels::options().fast_min_tokens = fast_min_tokens;
    std::vector<float> y(3 * 24, NAN);
    cpu::linear(y.data(), x.data(), 3, bf16.weight, nullptr, step_tokens);
    return y;
  };
  {
    KernelScope scope(Isa::Avx512, Activations::FastPrompts);
    cpu::kernels::options().fast_min_tokens = 1;
    if (std::string(cpu::kernels::kernel_name(bf16.weight, 3)) != "avx512 bf16-lanes") GTEST_SKIP() << "no AVX512_BF16";
  }
  const std::vector<float> exact = run(Activations::Exact, 0);
  const std::vector<float> prompt = run(Activations::FastPrompts, 0, /*fast_min_tokens=*/1);
  ASSERT_NE(std::memcmp(exact.data(), prompt.data(), exact.size() * sizeof(float)), 0) << "the kernels must differ here";
  const std::vector<float> share = run(Activations::FastPrompts, 512), alone = run(Activations::FastPrompts, 0);
  EXPECT_EQ(std::memcmp(share.data(), prompt.data(), prompt.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(alone.data(), exact.data(), exact.size() * sizeof(float)), 0);
}

// Float weights on AVX2, in every mode: calls of kAvx2PanelMinTokens tokens
// or more take f32 panels (avx2::float_panel_rows), smaller ones the rows
// transposed in registers (avx2::float_lanes_rows). Both within f32
// rounding of the reference, with the same bits as each other, on any thread
// count and for a token alone or in any call. Rows around the lanes' 8-row
// blocks and the panels' 16; widths around the bf16 step of
// 16 columns and the f32/f16 step of 8 (and one column: no odd chain);
// with and without a bias.
TEST(KernelsFloat, Avx2FloatPanelsAndLanesMatchTheReferenceWithTheSameBits) {
  if (cpu::kernels::supported_isa() < Isa::Avx2) GTEST_SKIP() << "no AVX2";
  constexpr int64_t kPanelTokens = cpu::kernels::avx2::kAvx2PanelMinTokens;
  const TestWeight probe = float_test_weight(8, 64, DType::BF16, 30);
  for (Activations mode : {Activations::Exact, Activations::Int8, Activations::Fast, Activations::FastPrompts}) {
    KernelScope scope(Isa::Avx2, mode);  // FastPrompts: a decode step's
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, 1), "avx2 float-lanes");
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, kPanelTokens - 1), "avx2 float-lanes");
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, kPanelTokens), "avx2 float-panels");
  }
  const Stored bias_values = store(random_values(40, 34), DType::F32);
  for (DType dtype : {DType::BF16, DType::F16, DType::F32})
    for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{33}, int64_t{40}})
      for (int64_t in : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{37}, int64_t{512}, int64_t{1100}}) {
        const TestWeight t = float_test_weight(rows, in, dtype, static_cast<unsigned>(rows * 11 + in));
        const Weight bias_slice = float_weight("b", TensorView(bias_values.bytes.data(), DType::F32, {rows}));
        const Weight* bias = rows % 2 ? &bias_slice : nullptr;
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(rows) + " x " + std::to_string(in) +
                     (bias ? " with bias" : ""));
        constexpr int64_t kTokens = kPanelTokens + 12;
        const std::vector<float> x = random_values(static_cast<size_t>(kTokens * in), 33);
        const std::vector<float> expected = oracle(t, x, kTokens, bias);
        KernelScope scope(Isa::Avx2, Activations::Exact);
        const std::vector<float> batch = run_linear(t.weight, x, kTokens, bias, 1);
        EXPECT_LE(relative_l2(batch, expected), 1e-5);
        expect_same_bits_on_more_threads(t.weight, x, kTokens, bias, batch);
        // lanes: 7 and 9 tokens in groups of 3 + 2 + 2 and 3 x 3; panels: 10, 13 and 18 tokens in tiles of
        // 5 + 5, 5 + 4 + 4 and 6 x 3 (the batch of 22: 6 + 6 + 5 + 5)
        for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{7}, kPanelTokens - 1, kPanelTokens,
                          int64_t{13}, int64_t{18}})
          for (int64_t first : {int64_t{0}, kTokens - n})
            for (int threads : {1, 3})
              EXPECT_TRUE(part_has_batch_bits(t.weight, x, first, n, bias, threads, batch))
                  << n << " tokens from " << first << " on " << threads << " threads differ from the batch";
      }
}

// fast-prompts on AVX2: every call of a prompt step takes the panels with
// one chain per output (avx2::float_panel_rows_one_chain), within f32
// rounding of the reference, with the same bits on any thread count and for
// a token alone or in any call of a prompt step.
TEST(KernelsFloat, Avx2OneChainPanelsInPromptStepsMatchTheReferenceWithTheSameBits) {
  if (cpu::kernels::supported_isa() < Isa::Avx2) GTEST_SKIP() << "no AVX2";
  for (DType dtype : {DType::BF16, DType::F16, DType::F32})
    for (int64_t rows : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{40}})
      for (int64_t in : {int64_t{5}, int64_t{37}, int64_t{512}, int64_t{1100}}) {
        const TestWeight t = float_test_weight(rows, in, dtype, static_cast<unsigned>(rows * 13 + in));
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(rows) + " x " + std::to_string(in));
        constexpr int64_t kTokens = 20;
        const std::vector<float> x = random_values(static_cast<size_t>(kTokens * in), 35);
        const std::vector<float> expected = oracle(t, x, kTokens, nullptr);
        KernelScope scope(Isa::Avx2, Activations::FastPrompts);
        cpu::kernels::options().fast_min_tokens = 1;  // every call is a prompt step's
        ASSERT_STREQ(cpu::kernels::kernel_name(t.weight, 1), "avx2 float-panels-one-chain");
        const std::vector<float> batch = run_linear(t.weight, x, kTokens, nullptr, 1);
        EXPECT_LE(relative_l2(batch, expected), 1e-5);
        expect_same_bits_on_more_threads(t.weight, x, kTokens, nullptr, batch);
        for (int64_t n : {1, 5, 7})
          for (int64_t first : {int64_t{0}, kTokens - n})
            EXPECT_TRUE(part_has_batch_bits(t.weight, x, first, n, nullptr, 2, batch))
                << n << " tokens from " << first << " differ from the batch";
      }
}

// FastPrompts' bf16 kernels: packed panels (avx512::bf16_packed_rows) and,
// for calls of fewer tokens, tokens in the lanes (bf16_lanes_rows), which
// must give the same bits. Each forced to every call size: against the f32
// reference on row counts around their 48- and 24-row blocks, widths around
// the 512-column panels (one, several, a ragged last one, odd, not a
// multiple of 32), token counts around the 8-token tiles and 16-token
// vectors (up to 64, the lanes kernel's limit; a last vector of at most 8
// tokens goes in a ymm), with and without a bias; a
// token's bits do not depend on the kernel, the thread count or the batch
// it is in. And which calls take which kernel.
TEST(KernelsFloat, PackedPanelsAndTokenLanesMatchTheReferenceWithTheSameBits) {
  if (cpu::kernels::supported_isa() != Isa::Avx512) GTEST_SKIP() << "no AVX-512";
  const TestWeight probe = float_test_weight(8, 64, DType::BF16, 30);
  {
    KernelScope scope(Isa::Avx512, Activations::FastPrompts);
    if (std::string(cpu::kernels::kernel_name(probe.weight, 65)) != "avx512 bf16-packed") GTEST_SKIP() << "no AVX512_BF16";
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, 64), "avx512 bf16-lanes");  // an expert's share of a prompt
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, 31), "avx512 exact");       // a decode step
  }
  {
    KernelScope scope(Isa::Avx512, Activations::Fast);  // Fast keeps one kernel at every size
    EXPECT_STREQ(cpu::kernels::kernel_name(probe.weight, 512), "avx512 bf16-dot");
  }
  const Stored bias_values = store(random_values(100, 31), DType::F32);
  for (int64_t rows : {int64_t{1}, int64_t{25}, int64_t{47}, int64_t{48}, int64_t{100}})
    for (int64_t in : {int64_t{5}, int64_t{37}, int64_t{512}, int64_t{1100}}) {
      const TestWeight t = float_test_weight(rows, in, DType::BF16, static_cast<unsigned>(rows * 7 + in));
      const Weight bias_slice = float_weight("b", TensorView(bias_values.bytes.data(), DType::F32, {rows}));
      for (const Weight* b : {static_cast<const Weight*>(nullptr), &bias_slice}) {
        SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(in) + (b ? " with bias" : ""));
        constexpr int64_t kTokens = 64;
        const std::vector<float> x = random_values(static_cast<size_t>(kTokens * in), 32);
        const std::vector<float> expected = oracle(t, x, kTokens, b);
        KernelScope scope(Isa::Avx512, Activations::FastPrompts);
        cpu::kernels::options().fast_min_tokens = 1;
        cpu::kernels::options().packed_min_tokens = 1;  // panels at every size
        ASSERT_STREQ(cpu::kernels::kernel_name(t.weight, 1), "avx512 bf16-packed");
        const std::vector<float> batch = run_linear(t.weight, x, kTokens, b, 1);
        EXPECT_LE(relative_l2(batch, expected), 1e-2);
        expect_same_bits_on_more_threads(t.weight, x, kTokens, b, batch);
        for (int64_t packed_min_tokens : {int64_t{1}, int64_t{1} << 40}) {  // panels, then lanes up to 64 tokens
          cpu::kernels::options().packed_min_tokens = packed_min_tokens;
          for (int64_t n : {1, 7, 8, 9, 16, 17, 24, 33, 40, 57, 64})
            for (int64_t first : {int64_t{0}, kTokens - n})
              EXPECT_TRUE(part_has_batch_bits(t.weight, x, first, n, b, n % 2 ? 3 : 2, batch))
                  << cpu::kernels::kernel_name(t.weight, n) << ": " << n << " tokens from " << first
                  << " differ from the same tokens in the panels' batch of " << kTokens;
        }
      }
    }
}

// The reference dequantizer (dequantize.cpp) agrees with the test's packing.
TEST(KernelsAffine, ReferenceDequantizerAgreesWithTheOracle) {
  const TestWeight t = affine_test_weight(9, 256, 4, 32, DType::BF16, 14);
  std::vector<float> row(256);
  try {
    cpu::dequantize_row(t.weight, 3, row.data());
  } catch (const std::exception& e) {
    GTEST_SKIP() << "reference affine dequantization not available yet: " << e.what();
  }
  for (int c = 0; c < 256; ++c) EXPECT_FLOAT_EQ(row[c], t.dense[3 * 256 + c]) << c;
}

// ---- several projections in one call ----

// kernels::linear_many gives every job the bits kernels::linear gives it
// alone, whatever the thread count, with jobs that share their input (and so
// one preparation of it) and jobs that do not, mixed formats, a bias, and
// row counts that are not multiples of any tile.
TEST(KernelsMany, EveryJobAsAlone) {
  const int64_t in = 4096 + 64;
  const TestWeight four = affine_test_weight(37, in, 4, 64, DType::BF16, 31);
  const TestWeight four_b = affine_test_weight(100, in, 4, 64, DType::BF16, 32);
  const TestWeight eight = affine_test_weight(45, in, 8, 32, DType::F16, 33);
  const TestWeight bf16 = float_test_weight(19, in, DType::BF16, 34);
  const TestWeight narrow = affine_test_weight(70, 1408, 4, 64, DType::BF16, 35);
  const std::vector<float> b = random_values(100, 36);
  const Weight bias = float_weight("b", TensorView(b.data(), DType::F32, {100}));
  for (int64_t n : {1, 3, 17}) {
    const std::vector<float> x = random_values(static_cast<size_t>(n * in), 37);
    const std::vector<float> x2 = random_values(static_cast<size_t>(n * in), 38);
    const std::vector<float> h = random_values(static_cast<size_t>(n * 1408), 39);
    struct Case {
      const TestWeight* t;
      const std::vector<float>* x;
      const Weight* bias;
    };
    const Case cases[] = {{&four, &x, nullptr},  {&four_b, &x, &bias}, {&eight, &x, nullptr}, {&bf16, &x, nullptr},
                          {&four, &x2, nullptr}, {&narrow, &h, nullptr}, {&four_b, &x2, nullptr}};
    for (Isa isa : available_isas())
      for (Activations mode : kModes) {
        KernelScope scope(isa, mode);
        SCOPED_TRACE(std::string(cpu::kernels::isa_name(isa)) + " " + mode_name(mode) + ", " + std::to_string(n) +
                     " tokens");
        std::vector<std::vector<float>> alone;
        for (const Case& c : cases) alone.push_back(run_linear(c.t->weight, *c.x, n, c.bias, 2));
        for (int threads : {1, 2, 3}) {
          omp_set_num_threads(threads);
          std::vector<std::vector<float>> outs;
          std::vector<cpu::kernels::LinearJob> jobs;
          for (const Case& c : cases) outs.emplace_back(static_cast<size_t>(n * c.t->weight.dim(0)), NAN);
          for (size_t i = 0; i < std::size(cases); ++i)
            jobs.push_back({outs[i].data(), cases[i].x->data(), n, &cases[i].t->weight, cases[i].bias});
          ASSERT_TRUE(cpu::kernels::linear_many(jobs.data(), static_cast<int64_t>(jobs.size())));
          for (size_t i = 0; i < std::size(cases); ++i)
            EXPECT_EQ(std::memcmp(outs[i].data(), alone[i].data(), alone[i].size() * sizeof(float)), 0)
                << "job " << i << " on " << threads << " threads differs from the same projection alone";
        }
      }
  }
  // A job without a kernel: nothing is touched.
  TestWeight three = affine_test_weight(8, 256, 8, 64, DType::BF16, 40);
  three.weight.format.bits = 3;
  std::vector<float> out(8, 1.5f);
  const std::vector<float> x = random_values(256, 41);
  const cpu::kernels::LinearJob jobs[] = {{out.data(), x.data(), 1, &three.weight, nullptr}};
  EXPECT_FALSE(cpu::kernels::linear_many(jobs, 1));
  EXPECT_EQ(out[0], 1.5f);
}

// ---- mixture of experts ----

// moe_experts through the fast kernels: equal to the reference expert MLP per
// token, and a token's output has the same bits alone as in a batch (the
// decode step and the prompt agree).
TEST(KernelsMoe, ExpertsMatchTheReferenceAndDoNotDependOnTheBatch) {
  const int64_t hidden = 256, width = 96, n_experts = 8, top_k = 3, n_tokens = 9;
  std::vector<TestWeight> gates, ups, downs;
  ExpertTable gate, up, down;
  for (int64_t e = 0; e < n_experts; ++e) {
    gates.push_back(affine_test_weight(width, hidden, 4, 64, DType::BF16, 100 + static_cast<unsigned>(e)));
    ups.push_back(affine_test_weight(width, hidden, 4, 64, DType::BF16, 200 + static_cast<unsigned>(e)));
    downs.push_back(float_test_weight(hidden, width, DType::BF16, 300 + static_cast<unsigned>(e)));
  }
  for (int64_t e = 0; e < n_experts; ++e) {
    gate.experts.push_back(gates[e].weight);
    up.experts.push_back(ups[e].weight);
    down.experts.push_back(downs[e].weight);
  }
  const std::vector<float> x = random_values(static_cast<size_t>(n_tokens * hidden), 21);
  std::vector<int32_t> ids(static_cast<size_t>(n_tokens * top_k));
  std::vector<float> mix(ids.size());
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t k = 0; k < top_k; ++k) {
      ids[t * top_k + k] = static_cast<int32_t>((t * 5 + k * 3) % n_experts);
      mix[t * top_k + k] = 0.2f + 0.1f * static_cast<float>(k);
    }
  auto run = [&](int64_t first, int64_t count) {
    Routing routing;
    routing.expert_ids.data = ids.data() + first * top_k;
    routing.expert_ids.dtype = DType::I32;
    routing.expert_ids.shape = {count, top_k};
    routing.weights.data = mix.data() + first * top_k;
    routing.weights.dtype = DType::F32;
    routing.weights.shape = {count, top_k};
    std::vector<float> y(static_cast<size_t>(count * hidden));
    cpu::moe_experts(y.data(), x.data() + first * hidden, count, hidden, routing, gate, up, down);
    return y;
  };
  // Reference: each token through its experts with the reference loop over the
  // f32 values of the weights.
  std::vector<float> expected(static_cast<size_t>(n_tokens * hidden), 0.0f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t e = ids[t * top_k + k];
      const std::vector<float> token(x.begin() + t * hidden, x.begin() + (t + 1) * hidden);
      std::vector<float> g = oracle(gates[e], token, 1, nullptr), u = oracle(ups[e], token, 1, nullptr);
      for (int64_t i = 0; i < width; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      const std::vector<float> d = oracle(downs[e], g, 1, nullptr);
      for (int64_t i = 0; i < hidden; ++i) expected[t * hidden + i] += mix[t * top_k + k] * d[i];
    }
  }
  // Steps of up to 8 tokens run all experts' projections together
  // (moe_experts_together), larger ones expert by expert: a token alone, in
  // a step of 2 or 3, and in the batch of 9 gets the same bits, on 1-3 threads.
  for (Isa isa : available_isas())
    for (Activations mode : {Activations::Exact, Activations::Int8}) {
      KernelScope scope(isa, mode);
      SCOPED_TRACE(std::string(cpu::kernels::isa_name(isa)) + " " + mode_name(mode));
      const bool fast = mode != Activations::Exact && fast_kernel_runs(gates[0].weight, isa);
      omp_set_num_threads(2);
      const std::vector<float> batch = run(0, n_tokens);
      EXPECT_LE(error_of(fast, batch, expected), fast ? 1e-2 : 1e-5);
      for (int64_t count : {1, 2, 3})
        for (int64_t t = 0; t + count <= n_tokens; t += count) {
          omp_set_num_threads(1 + static_cast<int>(t % 3));
          const std::vector<float> part = run(t, count);
          EXPECT_EQ(std::memcmp(part.data(), batch.data() + t * hidden, part.size() * sizeof(float)), 0)
              << count << " tokens from " << t << " differ from the batch";
        }
    }
}

// ---- dispatch ----

TEST(KernelsDispatch, UnsupportedFormatsFallBackToTheReference) {
  TestWeight three = affine_test_weight(8, 256, 8, 64, DType::BF16, 15);
  three.weight.format.bits = 3;  // the bytes no longer match, only the dispatch is checked
  EXPECT_EQ(cpu::kernels::kernel_name(three.weight, 1), nullptr);
  TestWeight fp8 = float_test_weight(8, 64, DType::F32, 16);
  fp8.weight.format.kind = WeightFormat::Kind::Fp8;
  EXPECT_EQ(cpu::kernels::kernel_name(fp8.weight, 1), nullptr);
  const TestWeight bf16 = float_test_weight(8, 64, DType::BF16, 17);
  {
    KernelScope scope(Isa::Reference, Activations::Exact);
    EXPECT_EQ(cpu::kernels::kernel_name(bf16.weight, 1), nullptr);
  }
  if (cpu::kernels::supported_isa() == Isa::Avx512) {
    KernelScope scope(Isa::Avx512, Activations::FastPrompts);
    EXPECT_STREQ(cpu::kernels::kernel_name(bf16.weight, 1), "avx512 exact");
    const char* prompt = cpu::kernels::kernel_name(bf16.weight, 512);
    ASSERT_NE(prompt, nullptr);
    EXPECT_TRUE(std::string(prompt) == "avx512 bf16-packed" || std::string(prompt) == "avx512 exact") << prompt;
  }
}

// Fast activations by default: int8 for affine weights, bf16 for bf16 weights
// (kernels.h says why); this program itself runs Exact unless a test picks a
// mode (tests/common/exact_cpu_activations.cpp).
TEST(KernelsDispatch, DefaultIsFastAndTheBestIsa) {
  const cpu::kernels::Options defaults;
  EXPECT_EQ(defaults.activations, Activations::Fast);
  EXPECT_STREQ(cpu::kernels::activations_name(defaults.activations), "fast");
  EXPECT_STREQ(std::getenv("GLM_CPU_ACTIVATIONS"), "exact");
  EXPECT_EQ(cpu::kernels::options().activations, Activations::Exact);
  if (!std::getenv("GLM_CPU_ISA")) {
    EXPECT_EQ(cpu::kernels::options().isa, cpu::kernels::supported_isa());
  }
  std::printf("supported ISA: %s\n", cpu::kernels::isa_name(cpu::kernels::supported_isa()));
}

}  // namespace
}  // namespace glm
