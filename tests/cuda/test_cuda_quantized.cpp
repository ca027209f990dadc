// The CUDA kernels on quantized weights against the CPU reference: mlx affine
// weights of every bit width (2-8, values straddling 32-bit words at 3/5/6/7
// bits) and group sizes 32/64/128 with bf16 scales, FP8 e4m3 with tensor,
// channel and block scales (odd widths take the scalar path), group-aligned
// column shards; the embedding of a quantized table; the routed experts in
// int4 through the device-grouped decode path (n <= 64) and the host-grouped
// prompt path; and grouped split attention at real GLM-4.5-Air head counts.
// The measure is the normalised error ||cuda - cpu|| / ||cpu||, printed as
// "PARITY" lines for scripts/gpu_check.sh. Without a GPU every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "engine/quantize.h"

#ifdef GLM_HAVE_CUDA
#include "cuda_parity.h"

namespace glm {
namespace {

using namespace cuda_parity;

// A quantized host weight with its storage, and its upload.
struct QuantWeight {
  std::unique_ptr<AffineMatrix> affine;
  std::vector<uint8_t> bytes;
  std::vector<float> scales32, biases32;
  Weight host, device;
  std::string label;
};

// mlx affine [rows, cols] from random values, scales and biases in bf16 (or,
// with `f32_scales`, the same values in f32: the device then keeps f32
// (scale, bias) pairs, 8 bytes each instead of 4).
std::unique_ptr<QuantWeight> make_affine(Backends& b, int64_t rows, int64_t cols, int bits, int64_t group,
                                         unsigned seed, bool f32_scales = false) {
  auto w = std::make_unique<QuantWeight>();
  w->affine = quantize_matrix_affine(random_values(static_cast<size_t>(rows * cols), seed, 0.1f), rows, cols, bits,
                                     group, "affine test");
  w->host = w->affine->weight;
  if (f32_scales) {
    for (uint16_t bits16 : w->affine->scales) w->scales32.push_back(bf16_to_f32(bits16));
    for (uint16_t bits16 : w->affine->biases) w->biases32.push_back(bf16_to_f32(bits16));
    const Shape scale_shape = w->host.format.scales.shape;
    w->host.format.scales = TensorView(w->scales32.data(), DType::F32, scale_shape);
    w->host.format.biases = TensorView(w->biases32.data(), DType::F32, scale_shape);
  }
  w->device = b.gpu->place(w->host);
  w->label = "affine " + std::to_string(bits) + "-bit g" + std::to_string(group) + (f32_scales ? " f32 scales" : "");
  return w;
}

// FP8 e4m3 [rows, cols] of random bytes (NaN codes avoided) with f32 scales
// per tensor, per row ([rows, 1]) or per 16 x 32 block.
std::unique_ptr<QuantWeight> make_fp8(Backends& b, int64_t rows, int64_t cols, WeightFormat::Fp8Scale scale,
                                      unsigned seed) {
  auto w = std::make_unique<QuantWeight>();
  std::mt19937 generator(seed);
  w->bytes.resize(static_cast<size_t>(rows * cols));
  for (uint8_t& byte : w->bytes) {
    do byte = static_cast<uint8_t>(generator() & 0xff);
    while ((byte & 0x7f) == 0x7f || (byte & 0x78) > 0x58);  // no NaN; magnitudes below 2^4
  }
  Weight& host = w->host;
  host.name = "fp8 test";
  host.shape = {rows, cols};
  host.view = TensorView(w->bytes.data(), DType::F8_E4M3, {rows, cols});
  host.format.kind = WeightFormat::Kind::Fp8;
  host.format.dtype = DType::F8_E4M3;
  host.format.fp8_scale = scale;
  Shape scale_shape;
  switch (scale) {
    case WeightFormat::Fp8Scale::Tensor: scale_shape = {}; w->label = "fp8 tensor"; break;
    case WeightFormat::Fp8Scale::Channel: scale_shape = {rows, 1}; w->label = "fp8 channel"; break;
    case WeightFormat::Fp8Scale::Block:
      host.format.block_rows = 16;
      host.format.block_cols = 32;
      scale_shape = {(rows + 15) / 16, (cols + 31) / 32};
      w->label = "fp8 block 16x32";
      break;
  }
  w->scales32 = random_values(static_cast<size_t>(shape_numel(scale_shape)), seed + 1, 0.01f);
  for (float& value : w->scales32) value = std::fabs(value) + 1e-3f;
  host.format.scales = TensorView(w->scales32.data(), DType::F32, scale_shape);
  w->device = b.gpu->place(host);
  return w;
}

void check_linear(Backends& b, const QuantWeight& w, const std::vector<int64_t>& token_counts, unsigned seed,
                  double tolerance = 1e-5, const std::string& mode = "") {
  const int64_t out_features = w.host.dim(0), in_features = w.host.dim(1);
  for (int64_t n : token_counts) {
    Both x = input(b, {n, in_features}, random_values(static_cast<size_t>(n * in_features), seed + n));
    Both out = output(b, {n, out_features});
    b.cpu->linear(out.cpu, x.cpu, w.host, nullptr);
    b.gpu->linear(out.gpu, x.gpu, w.device, nullptr);
    const std::string what = "linear " + w.label + mode + " n=" + std::to_string(n) + " [" +
                             std::to_string(out_features) + ", " + std::to_string(in_features) + "]";
    const double error = compare(b, out, what);
    EXPECT_LT(error, tolerance) << what;
    if (tolerance > 1e-5) {
      EXPECT_GT(error, 1e-7) << what << ": at f32 rounding, so the approximate path did not run";
    }
  }
}

// check_linear on affine [rows, cols] weights of 4 and 8 bits, groups of 32,
// 64 and 128 (the fast modes' formats), seeds drawn from `seed`.
void check_affine_bits_and_groups(Backends& b, int64_t rows, int64_t cols, const std::vector<int64_t>& token_counts,
                                  unsigned& seed, double tolerance, const std::string& mode) {
  for (int bits : {4, 8})
    for (int64_t group : {32, 64, 128}) {
      auto w = make_affine(b, rows, cols, bits, group, ++seed);
      check_linear(b, *w, token_counts, ++seed, tolerance, mode);
    }
}

TEST(CudaQuantized, LinearAffineEveryBitWidthAndGroup) {
  REQUIRE_GPU();
  Backends b;
  unsigned seed = 1000;
  for (int bits = 2; bits <= 8; ++bits)
    for (int64_t group : {32, 64, 128}) {
      auto w = make_affine(b, 67, 256, bits, group, ++seed);
      check_linear(b, *w, {1, 3, 8, 9, 40}, ++seed);
    }
  auto large = make_affine(b, 1000, 4096, 4, 64, ++seed);
  check_linear(b, *large, {1, 2, 5}, ++seed);
}

TEST(CudaQuantized, LinearFp8EveryScaleLayoutAndOddWidths) {
  REQUIRE_GPU();
  Backends b;
  unsigned seed = 2000;
  for (auto scale : {WeightFormat::Fp8Scale::Tensor, WeightFormat::Fp8Scale::Channel, WeightFormat::Fp8Scale::Block})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{67, 256}, {40, 45}, {300, 1024}}) {
      auto w = make_fp8(b, rows, cols, scale, ++seed);
      check_linear(b, *w, {1, 4, 8, 33}, ++seed);
    }
}

TEST(CudaQuantized, AffineColumnShardIsPackedOnUpload) {
  REQUIRE_GPU();
  Backends b;
  auto whole = make_affine(b, 48, 512, 4, 64, 3000);
  QuantWeight shard;
  shard.host = whole->host.slice_columns(128, 384);  // a tensor-parallel slice on group boundaries
  shard.device = b.gpu->place(shard.host);
  shard.label = "affine 4-bit column shard";
  EXPECT_TRUE(shard.device.view.contiguous());
  check_linear(b, shard, {1, 6, 20}, 3001);
}

TEST(CudaQuantized, EmbeddingOfAQuantizedTable) {
  REQUIRE_GPU();
  Backends b;
  auto table = make_affine(b, 100, 128, 4, 32, 4000);
  const std::vector<int32_t> ids = {0, 99, 7, 7, 42};
  Both out = output(b, {5, 128});
  b.cpu->embedding(out.cpu, table->host, ids);
  b.gpu->embedding(out.gpu, table->device, ids);
  EXPECT_LT(compare(b, out, "embedding affine 4-bit g32"), 1e-6);
}

// A shared expert of the routed experts' format ([width, hidden] gate and up,
// [hidden, width] down), kept in `storage`: its host and device weights.
struct SharedExperts {
  SharedExpert host, device;
};
template <typename Make>
SharedExperts add_shared_expert(std::vector<std::unique_ptr<QuantWeight>>& storage, int64_t width, int64_t hidden,
                                Make&& make) {
  for (auto [rows, cols] : {std::pair{width, hidden}, std::pair{width, hidden}, std::pair{hidden, width}})
    storage.push_back(make(rows, cols));
  const size_t s = storage.size() - 3;
  return {{&storage[s]->host, &storage[s + 1]->host, &storage[s + 2]->host},
          {&storage[s]->device, &storage[s + 1]->device, &storage[s + 2]->device}};
}

// Backends whose GPU runs the fast mode (GLM_CUDA_ACTIVATIONS=int8); the
// process default stays f32 (exact_prompts.cpp).
Backends fast_activation_backends() {
  setenv("GLM_CUDA_ACTIVATIONS", "int8", 1);
  Backends b;
  setenv("GLM_CUDA_ACTIVATIONS", "f32", 1);
  return b;
}
// The same with `variable` set to `value` while the GPU backend is made.
Backends fast_activation_backends_with(const char* variable, const char* value) {
  ScopedEnv setting(variable, value);
  return fast_activation_backends();
}

// Expert weight formats the one-token expert kernels take in the fast mode
// (f16 activations for FP8, int8 for affine), by a maker of [rows, cols].
struct ExpertFormat {
  std::string label;
  std::function<std::unique_ptr<QuantWeight>(Backends&, int64_t, int64_t, unsigned)> make;
};
std::vector<ExpertFormat> fast_expert_formats() {
  return {
      {"fp8 channel", [](Backends& b, int64_t r, int64_t c, unsigned seed) {
         return make_fp8(b, r, c, WeightFormat::Fp8Scale::Channel, seed);
       }},
      {"affine 4-bit g64", [](Backends& b, int64_t r, int64_t c, unsigned seed) { return make_affine(b, r, c, 4, 64, seed); }},
      {"affine 8-bit g32", [](Backends& b, int64_t r, int64_t c, unsigned seed) { return make_affine(b, r, c, 8, 32, seed); }},
  };
}

TEST(CudaQuantized, ExpertsInt4DeviceGroupedAndHostGrouped) {
  REQUIRE_GPU();
  Backends b;
  const int64_t hidden = 256, width = 96, n_experts = 16, top_k = 4;
  std::vector<std::unique_ptr<QuantWeight>> storage;
  ExpertTables host, device;
  unsigned seed = 5000;
  make_experts(storage, host, device, n_experts, width, hidden,
               [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 4, 32, ++seed); });
  // A shared expert of the same format: run as one more expert on the
  // device path (n <= 64), by the plain ops otherwise.
  const SharedExperts shared = add_shared_expert(
      storage, width, hidden, [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 4, 32, ++seed); });
  // 1, 3 and 40 tokens take the device-grouped path, 100 the host-grouped one.
  for (int64_t n : {1, 3, 40, 100})
    check_moe_experts(b, host, device, n, top_k,
                      "moe_experts affine 4-bit", 1e-5, &shared.host, &shared.device);
}

// GLM_CUDA_ACTIVATIONS=int8: decode GEMVs and experts on 4- and 8-bit affine
// weights quantize their input per 32 values and use dp4a. The bound
// for int8 activations is 1e-2 against the f32 reference for a projection;
// the experts quantize twice (their input, then the SwiGLU output) and get
// 2e-2 (measured 1.0-1.3e-2 on these random weights). The error must also be
// above f32 rounding, or the int8 path did not run.
TEST(CudaQuantized, Int8ActivationsOnAffineWeights) {
  REQUIRE_GPU();
  Backends b = fast_activation_backends();
  unsigned seed = 6000;
  check_affine_bits_and_groups(b, 67, 256, {1, 3, 8}, seed, 1e-2, " int8 activations");
  auto large = make_affine(b, 1000, 4096, 4, 64, ++seed);
  check_linear(b, *large, {1, 2, 5}, ++seed, 1e-2, " int8 activations");
  for (int bits : {4, 8}) {
    const int64_t hidden = 256, width = 96, n_experts = 16, top_k = 4;
    std::vector<std::unique_ptr<QuantWeight>> storage;
    ExpertTables host, device;
    make_experts(storage, host, device, n_experts, width, hidden,
                 [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, bits, 32, ++seed); });
    const SharedExperts shared = add_shared_expert(storage, width, hidden, [&](int64_t rows, int64_t cols) {
      return make_affine(b, rows, cols, bits, 32, ++seed);
    });
    for (int64_t n : {1, 3, 40})
      check_moe_experts(b, host, device, n, top_k,
                        "moe_experts affine " + std::to_string(bits) + "-bit int8 activations", 2e-2, &shared.host,
                        &shared.device);
  }
}

// The fast mode (GLM_CUDA_ACTIVATIONS=int8) on FP8 weights: decode GEMVs and
// experts scale each 32 activations into [-1, 1] as f16 and multiply with
// packed f16 (block_row_dots_half). Bounds as for int8 activations: 1e-2 a
// projection, 2e-2 the experts (their input and the SwiGLU output both
// rounded), and above f32 rounding, or the fast path did not run. Widths
// that are not multiples of 32 keep f32 activations.
TEST(CudaQuantized, HalfActivationsOnFp8Weights) {
  REQUIRE_GPU();
  Backends b = fast_activation_backends();
  unsigned seed = 8000;
  for (auto scale : {WeightFormat::Fp8Scale::Tensor, WeightFormat::Fp8Scale::Channel, WeightFormat::Fp8Scale::Block}) {
    auto w = make_fp8(b, 67, 256, scale, ++seed);
    check_linear(b, *w, {1, 3, 8}, ++seed, 1e-2, " f16 activations");
  }
  auto large = make_fp8(b, 1000, 4096, WeightFormat::Fp8Scale::Channel, ++seed);
  check_linear(b, *large, {1, 2}, ++seed, 1e-2, " f16 activations");
  auto odd = make_fp8(b, 40, 72, WeightFormat::Fp8Scale::Channel, ++seed);
  check_linear(b, *odd, {1}, ++seed, 1e-5, " (f32 activations: 72 columns)");
  const int64_t hidden = 256, width = 96, n_experts = 16, top_k = 4;
  std::vector<std::unique_ptr<QuantWeight>> storage;
  ExpertTables host, device;
  make_experts(storage, host, device, n_experts, width, hidden, [&](int64_t rows, int64_t cols) {
    return make_fp8(b, rows, cols, WeightFormat::Fp8Scale::Channel, ++seed);
  });
  const SharedExperts shared = add_shared_expert(storage, width, hidden, [&](int64_t rows, int64_t cols) {
    return make_fp8(b, rows, cols, WeightFormat::Fp8Scale::Channel, ++seed);
  });
  for (int64_t n : {1, 3, 40})
    check_moe_experts(b, host, device, n, top_k, "moe_experts fp8 channel f16 activations", 2e-2, &shared.host,
                      &shared.device, 1e-7);
}

// The count the CUDA backend's execution summary gives right after `marker`
// (-1 where it says no such thing).
int64_t summary_count(const Backend& gpu, const std::string& marker) {
  const std::string summary = gpu.execution_summary();
  const size_t at = summary.find(marker);
  return at == std::string::npos ? -1 : std::stoll(summary.substr(at + marker.size()));
}
// How many GEMV launches found their quantized input written by its producer.
int64_t prepared_uses(const Backend& gpu) { return summary_count(gpu, "written by their producer for "); }

// At one token in the fast mode the experts' gate/up kernel runs blocks of
// 32 rows and writes the SwiGLU output's quantized form (f16 for FP8 weights,
// int8 for affine ones) with the standalone quantize kernel's arithmetic, so
// the down kernel launches no quantize kernel: the same bits as
// GLM_CUDA_GATE_UP_PREPARES=0 on FP8 weights, with and without a shared
// expert (on affine weights within 1e-5: the compiler may contract the int8
// path's sum of products into FMAs differently for 32-row blocks than for
// 8-row ones, a few ulps of act, measured 4e-6 of the output); the backend
// must count such launches and more prepared uses than with it off (none at
// 3 tokens). The form's kind is learned from the down GEMV's first request
// for its width, so the first call of each case may still quantize.
TEST(CudaQuantized, ExpertsGateUpPreparesTheDownInputAtOneToken) {
  REQUIRE_GPU();
  Backends on = fast_activation_backends();
  Backends off = fast_activation_backends_with("GLM_CUDA_GATE_UP_PREPARES", "0");
  auto preparing_launches = [](const Backend& gpu) { return summary_count(gpu, "wrote it for the down kernel "); };
  const int64_t hidden = 256, width = 128, n_experts = 16, top_k = 4;
  for (const ExpertFormat& c : fast_expert_formats()) {
    std::vector<std::unique_ptr<QuantWeight>> storage_on, storage_off;
    ExpertTables host, device_on, host_off, device_off;
    unsigned seed_on = 9500, seed_off = 9500;
    make_experts(storage_on, host, device_on, n_experts, width, hidden,
                 [&](int64_t rows, int64_t cols) { return c.make(on, rows, cols, ++seed_on); });
    make_experts(storage_off, host_off, device_off, n_experts, width, hidden,
                 [&](int64_t rows, int64_t cols) { return c.make(off, rows, cols, ++seed_off); });
    const SharedExperts shared_on = add_shared_expert(
        storage_on, width, hidden, [&](int64_t rows, int64_t cols) { return c.make(on, rows, cols, ++seed_on); });
    const SharedExperts shared_off = add_shared_expert(
        storage_off, width, hidden, [&](int64_t rows, int64_t cols) { return c.make(off, rows, cols, ++seed_off); });
    for (int64_t n : {1, 3}) {
      const int64_t launches_before = preparing_launches(*on.gpu);
      const int64_t uses_before[2] = {prepared_uses(*on.gpu), prepared_uses(*off.gpu)};
      std::vector<int32_t> ids(static_cast<size_t>(n * top_k));
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 5 + 3) % n_experts);
      const std::vector<float> mix = random_values(ids.size(), 9600, 0.5f);
      const std::vector<float> x_values = random_values(static_cast<size_t>(n * hidden), 9601);
      std::vector<float> results[2];
      Backends* sides[2] = {&on, &off};
      for (int side = 0; side < 2; ++side) {
        Backend& gpu = *sides[side]->gpu;
        const ExpertTables& device = side == 0 ? device_on : device_off;
        const SharedExperts& shared = side == 0 ? shared_on : shared_off;
        Routing routing{gpu.scratch({n, top_k}, DType::I32), gpu.scratch({n, top_k})};
        to_device(routing.expert_ids.data, ids.data(), ids.size() * sizeof(int32_t));
        to_device(routing.weights.data, mix.data(), mix.size() * sizeof(float));
        Tensor x = gpu.scratch({n, hidden}), out = gpu.scratch({n, hidden});
        to_device(x.data, x_values.data(), x_values.size() * sizeof(float));
        gpu.moe_experts(out, x, routing, device.gate, device.up, device.down);
        results[side] = read(gpu, out);
        gpu.moe_experts_and_shared(out, x, routing, device.gate, device.up, device.down, shared.device);
        const std::vector<float> with_shared = read(gpu, out);
        results[side].insert(results[side].end(), with_shared.begin(), with_shared.end());
      }
      const std::string what = c.label + " n=" + std::to_string(n);
      if (c.label.starts_with("fp8"))
        EXPECT_EQ(results[0], results[1]) << what << ": against GLM_CUDA_GATE_UP_PREPARES=0";
      else
        EXPECT_LT(relative_error(results[0], results[1]), 1e-5) << what << ": against GLM_CUDA_GATE_UP_PREPARES=0";
      const int64_t launches = preparing_launches(*on.gpu) - launches_before;
      const int64_t uses_on = prepared_uses(*on.gpu) - uses_before[0], uses_off = prepared_uses(*off.gpu) - uses_before[1];
      if (n == 1) {
        EXPECT_GT(launches, 0) << what << ": gate/up launches that prepared the down input";
        EXPECT_GT(uses_on, uses_off) << what << ": the down kernel used the prepared form";
      } else {
        EXPECT_EQ(launches, 0) << what;
      }
    }
  }
  EXPECT_EQ(preparing_launches(*off.gpu), 0);
}

// At one token, when the stream is router GEMV on x -> route -> experts on
// x, the experts' gate/up kernel runs the shared expert's blocks without
// waiting for the routing (GLM_CUDA_SHARED_EARLY, moe.cu): they read only x,
// complete before the router could run; and the combine kernel ranks the
// token's experts before waiting for the down kernel
// (GLM_CUDA_COMBINE_EARLY). The same arithmetic, so the output must be the
// same bits as with both off, step after step of 4 layers back to back, x
// made by the norm just before the router each time (a block reading x or
// the routing before it was complete, or a stale copy of the last layer's,
// would differ); the backend must count the early launches,
// none with the switch off, nor when another op sits between route and the
// experts.
TEST(CudaQuantized, SharedExpertAndRankingStartBeforeTheirWait) {
  REQUIRE_GPU();
  Backends on = fast_activation_backends();
  Backends off = [] {
    ScopedEnv combine("GLM_CUDA_COMBINE_EARLY", "0");
    return fast_activation_backends_with("GLM_CUDA_SHARED_EARLY", "0");
  }();
  auto early_launches = [](const Backend& gpu) { return summary_count(gpu, "started beside the router "); };
  const int64_t hidden = 512, width = 128, n_experts = 16, top_k = 4, steps = 6, layers = 4;
  const RouterParams params{4, 2, top_k, true, 2.5f};
  const std::vector<float> router_values = random_values(static_cast<size_t>(n_experts * hidden), 9700, 0.2f);
  const std::vector<float> bias_values = random_values(static_cast<size_t>(n_experts), 9701, 0.1f);
  const std::vector<float> gamma_values = random_values(static_cast<size_t>(hidden), 9702, 1.0f);
  for (const ExpertFormat& c : fast_expert_formats()) {
    std::vector<float> results[2];
    int64_t launches[2] = {0, 0};
    Backends* sides[2] = {&on, &off};
    for (int side = 0; side < 2; ++side) {
      Backends& b = *sides[side];
      Backend& gpu = *b.gpu;
      std::vector<std::unique_ptr<QuantWeight>> storage;
      ExpertTables host, device;
      unsigned seed = 9710;
      make_experts(storage, host, device, n_experts, width, hidden,
                   [&](int64_t rows, int64_t cols) { return c.make(b, rows, cols, ++seed); });
      const SharedExperts shared = add_shared_expert(
          storage, width, hidden, [&](int64_t rows, int64_t cols) { return c.make(b, rows, cols, ++seed); });
      const Weight router = gpu.place(
          float_weight("router", TensorView(router_values.data(), DType::F32, {n_experts, hidden})));
      const Weight bias = gpu.place(float_weight("bias", TensorView(bias_values.data(), DType::F32, {n_experts})));
      const Weight gamma = gpu.place(float_weight("gamma", TensorView(gamma_values.data(), DType::F32, {hidden})));
      const int64_t before = early_launches(gpu);
      Tensor residual = gpu.scratch({1, hidden}), delta = gpu.scratch({1, hidden}), normed = gpu.scratch({1, hidden});
      Tensor logits = gpu.scratch({1, n_experts}), out = gpu.scratch({1, hidden});
      Routing routing{gpu.scratch({1, top_k}, DType::I32), gpu.scratch({1, top_k})};
      Tensor out_before = gpu.scratch({1, hidden});
      for (int64_t step = 0; step < steps; ++step) {
        const unsigned values_seed = 9720 + static_cast<unsigned>(step);
        to_device(residual.data, random_values(static_cast<size_t>(hidden), values_seed).data(), hidden * 4);
        to_device(delta.data, random_values(static_cast<size_t>(hidden), values_seed + 100).data(), hidden * 4);
        // Layers back to back, as in a decode step: no copy or host wait
        // between them, the same scratch and prepared-form buffers reused, so
        // a block reading a layer's x early would find the last layer's there.
        for (int layer = 0; layer < layers; ++layer) {
          gpu.add_rms_norm(residual, normed, layer == 0 ? delta : out_before, gamma, 1e-5f);
          gpu.linear(logits, normed, router, nullptr);
          gpu.route(routing, logits, bias, params);
          gpu.moe_experts_and_shared(out, normed, routing, device.gate, device.up, device.down, shared.device);
          std::swap(out, out_before);
        }
        const std::vector<float> values = read(gpu, out_before);
        results[side].insert(results[side].end(), values.begin(), values.end());
      }
      launches[side] = early_launches(gpu) - before;
      // Another op between route and the experts: no early start.
      gpu.route(routing, logits, bias, params);
      gpu.add(delta, residual, residual);
      gpu.moe_experts_and_shared(out, normed, routing, device.gate, device.up, device.down, shared.device);
      EXPECT_EQ(early_launches(gpu) - before, launches[side]) << c.label << ": an op between route and the experts";
      read(gpu, out);
    }
    EXPECT_EQ(results[0], results[1]) << c.label << ": against GLM_CUDA_SHARED_EARLY=0 GLM_CUDA_COMBINE_EARLY=0";
    // The first step's experts quantize x themselves (the norm learns the form
    // the experts ask for from that request); without programmatic launch
    // (GLM_CUDA_PDL=0, before sm_90) nothing starts early.
    const bool programmatic = on.gpu->execution_summary().find("dependent launch on") != std::string::npos;
    EXPECT_GE(launches[0], programmatic ? steps * layers - 1 : 0)
        << c.label << ": launches that started the shared expert early";
    EXPECT_EQ(launches[1], 0) << c.label;
  }
}

// A paged KV cache of random keys and values, and a plan for n decode tokens
// of one sequence each, at contexts `context` (blocks of 16).
struct DecodeAttention {
  KvLayer cache;
  AttentionPlan plan;
};
DecodeAttention decode_attention(Backend& gpu, int64_t n, int64_t kv_heads, int64_t head_dim, int32_t context) {
  const int64_t block_size = 16, blocks_each = (context + block_size - 1) / block_size;
  const Shape cache_shape = {n * blocks_each, block_size, kv_heads, head_dim};
  DecodeAttention d{{gpu.allocate(cache_shape), gpu.allocate(cache_shape)}, {}};
  const size_t elements = static_cast<size_t>(shape_numel(cache_shape));
  to_device(d.cache.keys.data, random_values(elements, 70).data(), elements * 4);
  to_device(d.cache.values.data, random_values(elements, 71).data(), elements * 4);
  d.plan.block_size = block_size;
  for (int64_t s = 0; s < n; ++s) {
    std::vector<int32_t> table(static_cast<size_t>(blocks_each));
    std::iota(table.begin(), table.end(), static_cast<int32_t>(s * blocks_each));
    d.plan.token_sequence.push_back(static_cast<int32_t>(s));
    d.plan.token_position.push_back(context - 1);
    d.plan.token_slot.push_back(static_cast<int64_t>(table.back()) * block_size + (context - 1) % block_size);
    d.plan.block_tables.push_back(table);
  }
  return d;
}

// The fast mode's producers write the quantized form of their output for
// the decode GEMVs that read it next (add_rms_norm and rms_norm for q/k/v,
// the experts and the MLP; attention for o_proj), which then launch no
// quantize kernel (prepared_activations.cuh). The same arithmetic, so a
// GEMV on the prepared form must match, bit for bit, the GEMV on a copy of
// the same values that it quantizes itself; and the backend must say the
// prepared form was used, or nothing was compared.
TEST(CudaQuantized, PreparedActivationsMatchTheGemvsOwnQuantization) {
  REQUIRE_GPU();
  Backends b = fast_activation_backends();
  Backend& gpu = *b.gpu;
  const int64_t hidden = 512, out_features = 67;  // rows of >= 512 take the norm kernel that prepares
  const std::vector<float> gamma_values = random_values(static_cast<size_t>(hidden), 9100, 1.0f);
  const Weight gamma = gpu.place(float_weight("gamma", TensorView(gamma_values.data(), DType::F32, {hidden})));
  unsigned seed = 9100;
  std::vector<std::unique_ptr<QuantWeight>> weights;
  weights.push_back(make_affine(b, out_features, hidden, 4, 32, ++seed));
  weights.push_back(make_affine(b, out_features, hidden, 8, 64, ++seed));
  weights.push_back(make_fp8(b, out_features, hidden, WeightFormat::Fp8Scale::Channel, ++seed));
  auto gpu_input = [&](const Shape& shape, unsigned values_seed) {
    return input(b, shape, random_values(static_cast<size_t>(shape_numel(shape)), values_seed)).gpu;
  };
  // GEMV of `produced` (just written by its producer) against the GEMV of a copy of it.
  auto check = [&](const QuantWeight& w, const Tensor& produced, const std::string& what) {
    const int64_t n = produced.rows();
    Tensor zero = gpu.scratch(produced.shape), copy = gpu.scratch(produced.shape);
    Tensor fused = gpu.scratch({n, w.device.dim(0)}), own = gpu.scratch({n, w.device.dim(0)});
    const int64_t before = prepared_uses(gpu);
    gpu.linear(fused, produced, w.device, nullptr);
    EXPECT_EQ(prepared_uses(gpu), before + 1) << what << ": the prepared form was not used";
    to_device(zero.data, std::vector<float>(static_cast<size_t>(zero.numel()), 0.0f).data(), zero.numel() * 4);
    gpu.add(copy, produced, zero);  // x + 0: the same values, not prepared
    gpu.linear(own, copy, w.device, nullptr);
    EXPECT_EQ(prepared_uses(gpu), before + 1) << what;
    EXPECT_EQ(read(gpu, fused), read(gpu, own)) << what << " " << w.label;
  };
  for (const auto& w : weights)
    for (int64_t n : {1, 3}) {
      const std::string label = w->label + " n=" + std::to_string(n);
      Tensor x = gpu_input({n, hidden}, 9200), delta = gpu_input({n, hidden}, 9201);
      Tensor normed = gpu.scratch({n, hidden}), warm = gpu.scratch({n, out_features});
      gpu.linear(warm, x, w->device, nullptr);  // a GEMV of this width asks for its form once
      gpu.rms_norm(normed, x, gamma, 1e-5f);
      check(*w, normed, "rms_norm " + label);
      gpu.add_rms_norm(x, normed, delta, gamma, 1e-5f);
      check(*w, normed, "add_rms_norm " + label);
      // The model's layer-end norm writes a tensor made before the layer, then
      // rewinds the layer's scratch: the form must survive that rewind, and a
      // form made from a tensor the rewind hands out again must not.
      const Backend::ScratchMark layer_start = gpu.scratch_mark();
      Tensor layer_tensor = gpu.scratch({n, hidden});
      gpu.add_rms_norm(x, normed, delta, gamma, 1e-5f);
      gpu.scratch_rewind(layer_start);
      check(*w, normed, "add_rms_norm across a scratch rewind " + label);
      gpu.scratch_rewind(layer_start);
      layer_tensor = gpu.scratch({n, hidden});
      gpu.rms_norm(layer_tensor, x, gamma, 1e-5f);
      gpu.scratch_rewind(layer_start);
      Tensor reused = gpu.scratch({n, hidden}), unused = gpu.scratch({n, out_features});
      EXPECT_EQ(reused.data, layer_tensor.data) << label;
      const int64_t before_reuse = prepared_uses(gpu);
      gpu.linear(unused, reused, w->device, nullptr);
      EXPECT_EQ(prepared_uses(gpu), before_reuse) << label << ": a form outlived its rewound source";
    }
  // Attention's output for o_proj: the split kernels' combine (8 query heads
  // on 2 KV heads, n = 1), the unsplit kernel (64 KV heads, 8 tokens) and the
  // short-context kernel (GLM-4.5-Air's 96 heads of 128 on 8 KV heads).
  for (auto [n, heads, kv_heads, head_dim] :
       {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 8, 2, 32}, {8, 64, 64, 32}, {2, 96, 8, 128}}) {
    const int64_t width = heads * head_dim;
    auto w = make_affine(b, out_features, width, 4, 32, ++seed);
    DecodeAttention d = decode_attention(gpu, n, kv_heads, head_dim, 40);
    Tensor q = gpu_input({n, heads, head_dim}, 9300), k = gpu_input({n, kv_heads, head_dim}, 9301);
    Tensor v = gpu_input({n, kv_heads, head_dim}, 9302), out = gpu.scratch({n, heads, head_dim});
    Tensor warm = gpu.scratch({n, out_features}), q_rows = q;
    q_rows.shape = {n, width};
    gpu.linear(warm, q_rows, w->device, nullptr);  // a GEMV of this width asks for its form once
    gpu.attention(out, q, k, v, d.cache, d.plan, 0.1f, false);
    Tensor flat = out;
    flat.shape = {n, width};
    check(*w, flat, "attention " + std::to_string(heads) + "/" + std::to_string(kv_heads) + " heads n=" +
                        std::to_string(n));
    gpu.release(d.cache.keys);
    gpu.release(d.cache.values);
  }
}

// Prompts on tensor cores (GLM_CUDA_PROMPTS=tensor) on quantized weights:
// the kernel dequantizes affine 4/8-bit and FP8 pieces to bf16 in its main
// loop. bf16 operands: bound 1e-2 against the f32 reference, and above f32
// rounding. Affine 3-bit has no 8-value pieces and keeps the exact SIMT
// path. The int4 experts run the grouped GEMMs with 64-row tiles (65 and
// 300 tokens; 65 tokens, 16 rows an expert, on 32-row tiles where the
// register-weights kernel takes gate/up and down) and 128-row tiles (1000:
// 250 rows an expert); FP8 experts with
// channel scales the kernel that scales the sums instead of the weights.
// Every kernel (kTensorModes): on Hopper, 4/8-bit affine and FP8 (tensor or
// channel scale) weights whose depth is whole stages of 64 take the
// register-weights kernel in mode "tensor", with the activations in its
// depth order (experts of width 128: act written in that order for down
// too; width 96: down takes the shared-memory kernel).
TEST(CudaQuantized, TensorCorePromptsOnQuantizedWeights) {
  REQUIRE_GPU();
  for (const char* mode : kTensorModes) {
    SCOPED_TRACE(mode);
    Backends b(mode);
    unsigned seed = 7000;
    check_affine_bits_and_groups(b, 200, 512, {9, 130, 300}, seed, 1e-2, " tensor cores");
    auto large = make_affine(b, 1000, 4096, 4, 64, ++seed);
    check_linear(b, *large, {200}, ++seed, 1e-2, " tensor cores");
    for (int bits : {4, 8})  // (scale, bias) pairs of 8 bytes: f32 scales
      for (int64_t group : {32, 64}) {
        auto w = make_affine(b, 200, 512, bits, group, ++seed, /*f32_scales=*/true);
        check_linear(b, *w, {130}, ++seed, 1e-2, " tensor cores");
      }
    auto half_stage = make_affine(b, 200, 160, 4, 32, ++seed);  // depth 160: two stages of 64 and a half
    check_linear(b, *half_stage, {130}, ++seed, 1e-2, " tensor cores, depth 160");
    auto three_bit = make_affine(b, 200, 512, 3, 64, ++seed);
    check_linear(b, *three_bit, {130}, ++seed, 1e-5, " (SIMT fallback)");
    for (auto scale : {WeightFormat::Fp8Scale::Tensor, WeightFormat::Fp8Scale::Channel, WeightFormat::Fp8Scale::Block}) {
      auto w = make_fp8(b, 200, 256, scale, ++seed);
      check_linear(b, *w, {9, 130}, ++seed, 1e-2, " tensor cores");
    }
    const int64_t hidden = 256, width = 96, n_experts = 16, top_k = 4;
    std::vector<std::unique_ptr<QuantWeight>> storage;
    ExpertTables host, device;
    make_experts(storage, host, device, n_experts, width, hidden,
                 [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 4, 32, ++seed); });
    for (int64_t n : {65, 300, 1000})
      check_moe_experts(b, host, device, n, top_k,
                        "moe_experts affine 4-bit tensor cores", 1e-2, nullptr, nullptr, 1e-6);
    // 8-bit experts (one widened tile under wgmma), and FP8 experts with
    // channel and tensor scales: gate and up widen unscaled and each takes
    // its own scales on the sums (the SwiGLU epilogue), down likewise.
    struct ExpertCase {
      const char* label;
      std::function<std::unique_ptr<QuantWeight>(int64_t, int64_t)> make;
      std::vector<int64_t> tokens;
      int64_t width = 96;
    };
    const ExpertCase expert_cases[] = {
        // width 128: down's depth is whole stages of 64 too, so on Hopper
        // gate/up write act in the register kernel's depth order for it
        {"moe_experts affine 4-bit g64 width 128 tensor cores",
         [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 4, 64, ++seed); }, {65, 1000}, 128},
        {"moe_experts affine 8-bit tensor cores",
         [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 8, 32, ++seed); }, {65, 1000}},
        {"moe_experts fp8 channel tensor cores",
         [&](int64_t rows, int64_t cols) { return make_fp8(b, rows, cols, WeightFormat::Fp8Scale::Channel, ++seed); },
         {65, 1000}},
        {"moe_experts fp8 tensor-scale tensor cores",
         [&](int64_t rows, int64_t cols) { return make_fp8(b, rows, cols, WeightFormat::Fp8Scale::Tensor, ++seed); },
         {300}},
        {"moe_experts affine 8-bit g64 width 128 tensor cores",
         [&](int64_t rows, int64_t cols) { return make_affine(b, rows, cols, 8, 64, ++seed); }, {1000}, 128},
        {"moe_experts fp8 channel width 128 tensor cores",
         [&](int64_t rows, int64_t cols) { return make_fp8(b, rows, cols, WeightFormat::Fp8Scale::Channel, ++seed); },
         {65, 1000}, 128}};
    for (const ExpertCase& c : expert_cases) {
      std::vector<std::unique_ptr<QuantWeight>> case_storage;
      ExpertTables case_host, case_device;
      make_experts(case_storage, case_host, case_device, n_experts, c.width, hidden, c.make);
      for (int64_t n : c.tokens) check_moe_experts(b, case_host, case_device, n, top_k, c.label, 1e-2, nullptr, nullptr, 1e-6);
    }
  }
}

// Decode steps of several sequences at GLM-4.5-Air's head counts (96 query
// heads over 8 KV heads, head_dim 128): the grouped kernel with the context
// split over blocks, contexts from 1 to 3000 in one step.
// At head_dim 128 and groups of a multiple of 4 the default is the kernel
// that shares key rows over a warp (one block a head group up to 256
// positions, slices past that); GLM_CUDA_SHORT_ATTENTION=0 keeps the split
// kernel. Both, at contexts 1 to 3000 in one step.
TEST(CudaQuantized, GroupedSplitAttentionAtAirHeadCounts) {
  REQUIRE_GPU();
  for (const char* mode : {"1", "0"}) {
  setenv("GLM_CUDA_SHORT_ATTENTION", mode, 1);
  Backends b;
  unsetenv("GLM_CUDA_SHORT_ATTENTION");
  for (const std::vector<int32_t>& contexts : {std::vector<int32_t>{3000, 1, 700, 33}, std::vector<int32_t>{1, 7, 33, 200}})
  for (auto [heads, kv_heads, head_dim] : {std::tuple<int64_t, int64_t, int64_t>{96, 8, 128}, {16, 4, 64}, {8, 8, 32}}) {
    const int64_t block_size = 16, n_blocks = 400;
    const Shape cache_shape = {n_blocks, block_size, kv_heads, head_dim};
    KvLayer cpu_cache{b.cpu->allocate(cache_shape), b.cpu->allocate(cache_shape)};
    KvLayer gpu_cache{b.gpu->allocate(cache_shape), b.gpu->allocate(cache_shape)};
    const size_t elements = static_cast<size_t>(shape_numel(cache_shape));
    const std::vector<float> keys = random_values(elements, 60), values = random_values(elements, 61);
    std::memcpy(cpu_cache.keys.data, keys.data(), elements * 4);
    std::memcpy(cpu_cache.values.data, values.data(), elements * 4);
    ASSERT_EQ(cudaMemcpy(gpu_cache.keys.data, keys.data(), elements * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(gpu_cache.values.data, values.data(), elements * 4, cudaMemcpyHostToDevice), cudaSuccess);
    std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(62));
    AttentionPlan plan;
    plan.block_size = block_size;
    size_t next = 0;
    for (size_t s = 0; s < contexts.size(); ++s) {
      const int64_t blocks = (contexts[s] + block_size - 1) / block_size;
      std::vector<int32_t> table(pool.begin() + next, pool.begin() + next + blocks);
      next += static_cast<size_t>(blocks);
      const int32_t position = contexts[s] - 1;
      plan.token_sequence.push_back(static_cast<int32_t>(s));
      plan.token_position.push_back(position);
      plan.token_slot.push_back(static_cast<int64_t>(table[position / block_size]) * block_size + position % block_size);
      plan.block_tables.push_back(table);
    }
    ASSERT_LE(next, pool.size());
    const int64_t n = static_cast<int64_t>(contexts.size());
    Both q = input(b, {n, heads, head_dim}, random_values(static_cast<size_t>(n * heads * head_dim), 63));
    Both k = input(b, {n, kv_heads, head_dim}, random_values(static_cast<size_t>(n * kv_heads * head_dim), 64));
    Both v = input(b, {n, kv_heads, head_dim}, random_values(static_cast<size_t>(n * kv_heads * head_dim), 65));
    Both out = output(b, {n, heads, head_dim});
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    b.cpu->attention(out.cpu, q.cpu, k.cpu, v.cpu, cpu_cache, plan, scale);
    b.gpu->attention(out.gpu, q.gpu, k.gpu, v.gpu, gpu_cache, plan, scale);
    std::string at;
    for (int32_t context : contexts) at += (at.empty() ? "" : "/") + std::to_string(context);
    const std::string what = "attention grouped split " + std::to_string(heads) + "/" + std::to_string(kv_heads) +
                             " heads of " + std::to_string(head_dim) + ", decode at " + at + " (mode " + mode + ")";
    EXPECT_LT(compare(b, out, what), 1e-5);
    for (Tensor* t : {&cpu_cache.keys, &cpu_cache.values}) b.cpu->release(*t);
    for (Tensor* t : {&gpu_cache.keys, &gpu_cache.values}) b.gpu->release(*t);
  }
  }
}

}  // namespace
}  // namespace glm

#else

TEST(CudaQuantized, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA backend (GLM_CUDA off or no nvcc)"; }

#endif
