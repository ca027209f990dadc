// Every CUDA op against the reference CPU op, through the Backend interface,
// on random inputs: odd sizes (scalar tails, unaligned rows), f32/bf16/f16
// weights, strided (tensor-parallel) weight views, GQA 12:1, long contexts
// over scattered block tables, ragged batches, router ties, ragged expert
// counts and expert-parallel tables. The measure is the normalised error
// ||cuda - cpu|| / ||cpu||; each comparison prints a "PARITY" line that
// scripts/gpu_check.sh collects into its table. Without a GPU (CI has nvcc,
// no GPU) every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"

#ifdef GLM_HAVE_CUDA
#include "cuda_parity.h"

namespace glm {
namespace {

using namespace cuda_parity;

// A host weight of the given dtype with its storage, and its upload.
struct TestWeight {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  Weight host, device;
};

// [rows, cols] of `dtype` (zeros when scale is 0); with `pad` > 0 the values live in a wider
// [rows, cols + pad] matrix and the weight is its column slice [pad/2, pad/2 + cols)
// (the strided view a tensor-parallel shard of o_proj is).
std::unique_ptr<TestWeight> make_weight(Backends& b, const Shape& shape, DType dtype, unsigned seed,
                                        float scale = 0.1f, int64_t pad = 0) {
  auto w = std::make_unique<TestWeight>();
  const int64_t cols = shape.back() + pad;
  const int64_t rows = shape_numel(shape) / shape.back();
  Shape stored = shape;
  stored.back() = cols;
  w->f32 = scale == 0.0f ? std::vector<float>(static_cast<size_t>(rows * cols), 0.0f)
                         : random_values(static_cast<size_t>(rows * cols), seed, scale);
  const void* data = w->f32.data();
  if (dtype != DType::F32) {
    w->half.resize(w->f32.size());
    for (size_t i = 0; i < w->f32.size(); ++i)
      w->half[i] = dtype == DType::BF16 ? f32_to_bf16(w->f32[i]) : f32_to_f16(w->f32[i]);
    data = w->half.data();
  }
  w->host = float_weight("test", TensorView(data, dtype, stored));
  if (pad > 0) w->host = w->host.slice_columns(pad / 2, pad / 2 + shape.back());
  w->device = b.gpu->place(w->host);
  return w;
}

const char* dtype_label(DType dtype) { return dtype == DType::F32 ? "f32" : dtype == DType::BF16 ? "bf16" : "f16"; }

// ---------------------------------------------------------------- memory, place

TEST(CudaBackend, ReportsDevicePlacementAndRejectsWhatItCannotRun) {
  REQUIRE_GPU();
  Backends b;
  EXPECT_EQ(b.gpu->name(), "cuda:0");
  auto w = make_weight(b, {3, 5}, DType::BF16, 1);
  EXPECT_EQ(w->device.placement.kind, Placement::Kind::Device);
  EXPECT_NE(w->device.view.data, w->host.view.data);
  EXPECT_NE(b.gpu->placement_summary().find("uploaded"), std::string::npos) << b.gpu->placement_summary();

  Weight affine = w->host;
  affine.format.kind = WeightFormat::Kind::Affine;
  affine.format.bits = 4;
  affine.format.group_size = 64;
  try {
    b.gpu->place(affine);
    FAIL() << "an affine weight was placed";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("not supported on CUDA"), std::string::npos) << error.what();
  }
  EXPECT_THROW(make_backend("cuda:4096"), Error);
  // A host weight handed to an op is an error, not a crash.
  Both x = input(b, {1, 5}, random_values(5, 2));
  Both out = output(b, {1, 3});
  EXPECT_THROW(b.gpu->linear(out.gpu, x.gpu, w->host, nullptr), Error);
}

TEST(CudaBackend, ScratchSurvivesGrowthAndAllocateIsZeroed) {
  REQUIRE_GPU();
  Backends b;
  const std::vector<float> values = random_values(1000, 3);
  Both first = input(b, {1000}, values);
  for (int i = 0; i < 5; ++i) b.gpu->scratch({int64_t{20} << 20});  // past the first chunk: new chunks
  EXPECT_EQ(read(*b.gpu, first.gpu), values);
  b.gpu->reset_scratch();
  Tensor cache = b.gpu->allocate({4, 3, 2, 5});
  EXPECT_EQ(read(*b.gpu, cache), std::vector<float>(120, 0.0f));
  b.gpu->release(cache);
  EXPECT_EQ(cache.data, nullptr);
}

// ---------------------------------------------------------------- embedding, gather, norm

TEST(CudaOps, Embedding) {
  REQUIRE_GPU();
  Backends b;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (int64_t hidden : {67, 512}) {
      auto table = make_weight(b, {1000, hidden}, dtype, 10 + static_cast<unsigned>(hidden));
      const std::vector<int32_t> ids = {0, 999, 5, 5, 123, 7, 998, 1, 500, 42, 3, 77, 640};
      Both out = output(b, {static_cast<int64_t>(ids.size()), hidden});
      b.cpu->embedding(out.cpu, table->host, ids);
      b.gpu->embedding(out.gpu, table->device, ids);
      EXPECT_EQ(compare(b, out, std::string("embedding ") + dtype_label(dtype) + " hidden " + std::to_string(hidden)),
                0.0);
    }
  auto table = make_weight(b, {10, 8}, DType::F32, 1);
  Both out = output(b, {1, 8});
  const std::vector<int32_t> bad = {10};
  EXPECT_THROW(b.gpu->embedding(out.gpu, table->device, bad), Error);
}

TEST(CudaOps, GatherRows) {
  REQUIRE_GPU();
  Backends b;
  Both source = input(b, {50, 33}, random_values(50 * 33, 4));
  const std::vector<int32_t> rows = {49, 0, 7, 7, 3};
  Both out = output(b, {5, 33});
  b.cpu->gather_rows(out.cpu, source.cpu, rows);
  b.gpu->gather_rows(out.gpu, source.gpu, rows);
  EXPECT_EQ(compare(b, out, "gather_rows 5 of [50, 33]"), 0.0);
}

TEST(CudaOps, RmsNorm) {
  REQUIRE_GPU();
  Backends b;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t rows : {1, 7, 300})
      for (int64_t dim : {16, 67, 4096}) {
        auto gamma = make_weight(b, {dim}, dtype, 20, 1.0f);
        Both x = input(b, {rows, dim}, random_values(static_cast<size_t>(rows * dim), 21, 3.0f));
        Both out = output(b, {rows, dim});
        b.cpu->rms_norm(out.cpu, x.cpu, gamma->host, 1e-5f);
        b.gpu->rms_norm(out.gpu, x.gpu, gamma->device, 1e-5f);
        const std::string what = std::string("rms_norm ") + dtype_label(dtype) + " [" + std::to_string(rows) + ", " +
                                 std::to_string(dim) + "]";
        EXPECT_LT(compare(b, out, what), 1e-6);
        b.cpu->rms_norm(x.cpu, x.cpu, gamma->host, 1e-5f);  // in place
        b.gpu->rms_norm(x.gpu, x.gpu, gamma->device, 1e-5f);
        EXPECT_LT(compare(b, x, what + " in place"), 1e-6);
      }
}

// ---------------------------------------------------------------- linear

TEST(CudaOps, LinearAllPathsDtypesAndSizes) {
  REQUIRE_GPU();
  Backends b;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{67, 45}, {256, 512}, {1000, 1024}};  // (out, in)
  unsigned seed = 100;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (auto [out_features, in_features] : shapes) {
      auto weight = make_weight(b, {out_features, in_features}, dtype, ++seed);
      auto bias = make_weight(b, {out_features}, DType::BF16, ++seed);
      for (int64_t n : {1, 2, 5, 8, 9, 33, 130}) {
        const bool with_bias = n % 2 == 1;
        Both x = input(b, {n, in_features}, random_values(static_cast<size_t>(n * in_features), ++seed));
        Both out = output(b, {n, out_features});
        b.cpu->linear(out.cpu, x.cpu, weight->host, with_bias ? &bias->host : nullptr);
        b.gpu->linear(out.gpu, x.gpu, weight->device, with_bias ? &bias->device : nullptr);
        const std::string what = std::string("linear ") + dtype_label(dtype) + " n=" + std::to_string(n) + " [" +
                                 std::to_string(out_features) + ", " + std::to_string(in_features) + "]" +
                                 (with_bias ? " +bias" : "");
        EXPECT_LT(compare(b, out, what), 1e-5) << what;
      }
    }
}

// Prompt-sized projections on tensor cores (GLM_CUDA_PROMPTS=tensor): bf16
// operands and f32 sums against the f32 CPU reference, ~1e-3 expected on
// these inputs, bound 1e-2, and above 1e-6 or the tensor path did not run.
// Tokens and features are not multiples of the 128 tile; a depth of 96 ends
// in a half stage; a depth that is not a multiple of 32 (45) keeps the exact
// SIMT path. Both instructions (kTensorModes).
TEST(CudaOps, LinearOnTensorCores) {
  REQUIRE_GPU();
  for (const char* mode : kTensorModes) {
    Backends b(mode);
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{67, 64}, {200, 256}, {130, 96}, {1000, 1024}, {67, 45}};
    unsigned seed = 700;
    for (DType dtype : {DType::F32, DType::BF16, DType::F16})
      for (auto [out_features, in_features] : shapes) {
        auto weight = make_weight(b, {out_features, in_features}, dtype, ++seed);
        auto bias = make_weight(b, {out_features}, DType::BF16, ++seed);
        const bool tensor = in_features % 32 == 0;
        for (int64_t n : {9, 33, 130, 300}) {
          const bool with_bias = n % 2 == 1;
          Both x = input(b, {n, in_features}, random_values(static_cast<size_t>(n * in_features), ++seed));
          Both out = output(b, {n, out_features});
          b.cpu->linear(out.cpu, x.cpu, weight->host, with_bias ? &bias->host : nullptr);
          b.gpu->linear(out.gpu, x.gpu, weight->device, with_bias ? &bias->device : nullptr);
          const std::string what = std::string("linear ") + mode + " " + dtype_label(dtype) + " n=" +
                                   std::to_string(n) + " [" + std::to_string(out_features) + ", " +
                                   std::to_string(in_features) + "]" + (with_bias ? " +bias" : "");
          const double error = compare(b, out, what);
          EXPECT_LT(error, tensor ? 1e-2 : 1e-5) << what;
          if (tensor) {
            EXPECT_GT(error, 1e-6) << what << ": the tensor-core path did not run";
          }
        }
      }
  }
}

// A weight marked f32_activations (the MoE router's) keeps f32 activations
// on the GPU too: prompts multiply x as two bf16 parts (2n rows of one
// product) on tensor cores for bf16 weights (~1e-5 of the CPU's exact
// product, where the unmarked weight is at ~1e-3) and take the exact f32
// paths for f32 weights; decode GEMVs stay f32.
TEST(CudaOps, F32ActivationsWeightStaysExactOnTensorCores) {
  REQUIRE_GPU();
  for (const char* mode : kTensorModes) {
    Backends b(mode);
    unsigned seed = 900;
    for (DType dtype : {DType::BF16, DType::F32})
      for (auto [out_features, in_features] : std::vector<std::pair<int64_t, int64_t>>{{128, 4096}, {67, 256}}) {
        auto weight = make_weight(b, {out_features, in_features}, dtype, ++seed);
        Weight marked_host = weight->host, marked_device = weight->device;
        marked_host.f32_activations = marked_device.f32_activations = true;
        for (int64_t n : {3, 9, 130}) {
          Both x = input(b, {n, in_features}, random_values(static_cast<size_t>(n * in_features), ++seed));
          Both out = output(b, {n, out_features});
          b.cpu->linear(out.cpu, x.cpu, marked_host, nullptr);
          b.gpu->linear(out.gpu, x.gpu, marked_device, nullptr);
          const std::string what = std::string("linear f32-activations ") + mode + " " + dtype_label(dtype) +
                                   " n=" + std::to_string(n) + " [" + std::to_string(out_features) + ", " +
                                   std::to_string(in_features) + "]";
          EXPECT_LT(compare(b, out, what), 2e-5) << what;
          Both plain = output(b, {n, out_features});
          b.cpu->linear(plain.cpu, x.cpu, weight->host, nullptr);
          b.gpu->linear(plain.gpu, x.gpu, weight->device, nullptr);
          if (n > 8) {
            EXPECT_GT(compare(b, plain, what + " (unmarked)"), 1e-4) << what << ": the unmarked weight should round x";
          }
        }
      }
  }
}

// Where the device is Hopper (sm_90) and the binary holds sm_90a code (the
// default build), prompts use wgmma unless GLM_CUDA_WGMMA=0; elsewhere mma.sync.
TEST(CudaOps, TensorCoresUseWgmmaOnHopper) {
  REQUIRE_GPU();
  cudaDeviceProp properties{};
  ASSERT_EQ(cudaGetDeviceProperties(&properties, 0), cudaSuccess);
  Backends wgmma("tensor"), mma("tensor-mma");
  EXPECT_NE(mma.gpu->execution_summary().find("tensor cores (mma.sync)"), std::string::npos);
  if (properties.major != 9) GTEST_SKIP() << "not an sm_90 device: mma.sync only";
  const char* forced = std::getenv("GLM_CUDA_WGMMA");
  if (forced && std::string(forced) == "0") GTEST_SKIP() << "GLM_CUDA_WGMMA=0 in the environment";
  if (wgmma.gpu->execution_summary().find("no sm_90a code") != std::string::npos)
    GTEST_SKIP() << "built without sm_90a code (CMAKE_CUDA_ARCHITECTURES lacks 90a)";
  EXPECT_NE(wgmma.gpu->execution_summary().find("tensor cores (wgmma)"), std::string::npos)
      << wgmma.gpu->execution_summary();
  const char* registers = std::getenv("GLM_CUDA_REGISTER_WEIGHTS");
  if (!registers || std::string(registers) != "0")
    EXPECT_NE(wgmma.gpu->execution_summary().find("quantized weights widened into registers"), std::string::npos)
        << wgmma.gpu->execution_summary();
  Backends shared("tensor-shared");
  EXPECT_EQ(shared.gpu->execution_summary().find("widened into registers"), std::string::npos)
      << shared.gpu->execution_summary();
}

TEST(CudaOps, LinearStridedShardsAndUnalignedInputs) {
  REQUIRE_GPU();
  Backends b;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t n : {1, 4, 40}) {
      // A column slice of a wider matrix: place() packs it.
      auto columns = make_weight(b, {96, 128}, dtype, 200 + static_cast<unsigned>(n), 0.1f, /*pad=*/64);
      EXPECT_TRUE(columns->device.view.contiguous());
      Both x = input(b, {n, 128}, random_values(static_cast<size_t>(n * 128), 201));
      Both out = output(b, {n, 96});
      b.cpu->linear(out.cpu, x.cpu, columns->host, nullptr);
      b.gpu->linear(out.gpu, x.gpu, columns->device, nullptr);
      EXPECT_LT(compare(b, out, std::string("linear column shard ") + dtype_label(dtype) + " n=" + std::to_string(n)),
                1e-5);
      // Rows [10, 60) of a matrix (a q/k/v shard), input rows starting at an odd offset.
      auto whole = make_weight(b, {100, 40}, dtype, 300 + static_cast<unsigned>(n));
      const Weight rows_host = whole->host.slice_rows(10, 60);
      const Weight rows_device = b.gpu->place(rows_host);
      Both wide = input(b, {n + 1, 40}, random_values(static_cast<size_t>((n + 1) * 40), 301));
      Both shifted{wide.cpu.slice_first(1, n + 1), wide.gpu.slice_first(1, n + 1)};
      Both narrow = output(b, {n, 50});
      b.cpu->linear(narrow.cpu, shifted.cpu, rows_host, nullptr);
      b.gpu->linear(narrow.gpu, shifted.gpu, rows_device, nullptr);
      EXPECT_LT(compare(b, narrow, std::string("linear row shard, offset input ") + dtype_label(dtype) +
                                       " n=" + std::to_string(n)),
                1e-5);
    }
}

// ---------------------------------------------------------------- elementwise, rotary

TEST(CudaOps, AddAndSwiglu) {
  REQUIRE_GPU();
  Backends b;
  for (int64_t count : {1, 1000003}) {
    Both a = input(b, {count}, random_values(static_cast<size_t>(count), 30, 4.0f));
    Both c = input(b, {count}, random_values(static_cast<size_t>(count), 31));
    Both out = output(b, {count});
    b.cpu->add(out.cpu, a.cpu, c.cpu);
    b.gpu->add(out.gpu, a.gpu, c.gpu);
    EXPECT_EQ(compare(b, out, "add " + std::to_string(count)), 0.0);
    b.cpu->swiglu(out.cpu, a.cpu, c.cpu);
    b.gpu->swiglu(out.gpu, a.gpu, c.gpu);
    EXPECT_LT(compare(b, out, "swiglu " + std::to_string(count)), 1e-6);
    b.cpu->add(a.cpu, a.cpu, c.cpu);  // aliasing
    b.gpu->add(a.gpu, a.gpu, c.gpu);
    EXPECT_EQ(compare(b, a, "add in place " + std::to_string(count)), 0.0);
  }
}

TEST(CudaOps, RotaryPartialAndFull) {
  REQUIRE_GPU();
  Backends b;
  struct Case {
    int64_t n, heads, head_dim, rotary_dim;
    double theta;
    int32_t max_position;
  };
  for (const Case& c : {Case{9, 12, 128, 64, 1e6, 131072}, Case{5, 3, 64, 64, 1e4, 4096}, Case{1, 2, 32, 8, 1e4, 7}}) {
    std::mt19937 generator(40);
    std::vector<int32_t> positions(static_cast<size_t>(c.n));
    for (int32_t& p : positions) p = static_cast<int32_t>(generator() % static_cast<uint32_t>(c.max_position));
    Both x = input(b, {c.n, c.heads, c.head_dim}, random_values(static_cast<size_t>(c.n * c.heads * c.head_dim), 41));
    b.cpu->rotary(x.cpu, positions, c.rotary_dim, c.theta);
    b.gpu->rotary(x.gpu, positions, c.rotary_dim, c.theta);
    EXPECT_LT(compare(b, x, "rotary " + std::to_string(c.rotary_dim) + " of " + std::to_string(c.head_dim) +
                                " positions < " + std::to_string(c.max_position)),
              1e-6);
  }
}

// ---------------------------------------------------------------- fused ops against the plain ops

TEST(CudaOps, AddRmsNormFused) {
  REQUIRE_GPU();
  Backends b;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t rows : {1, 7})
      for (int64_t dim : {16, 67, 4096}) {
        auto gamma = make_weight(b, {dim}, dtype, 50, 1.0f);
        const std::vector<float> residual = random_values(static_cast<size_t>(rows * dim), 51, 3.0f);
        Both delta = input(b, {rows, dim}, random_values(static_cast<size_t>(rows * dim), 52));
        Both fused = input(b, {rows, dim}, residual), plain = input(b, {rows, dim}, residual);
        Both fused_normed = output(b, {rows, dim}), plain_normed = output(b, {rows, dim});
        b.cpu->add_rms_norm(fused.cpu, fused_normed.cpu, delta.cpu, gamma->host, 1e-5f);  // the default: plain ops
        b.gpu->add_rms_norm(fused.gpu, fused_normed.gpu, delta.gpu, gamma->device, 1e-5f);
        b.gpu->add(plain.gpu, plain.gpu, delta.gpu);
        b.gpu->rms_norm(plain_normed.gpu, plain.gpu, gamma->device, 1e-5f);
        const std::string what = std::string("add_rms_norm ") + dtype_label(dtype) + " [" + std::to_string(rows) +
                                 ", " + std::to_string(dim) + "]";
        EXPECT_EQ(compare(b, fused, what + " sum"), 0.0);
        EXPECT_LT(compare(b, fused_normed, what), 1e-6);
        EXPECT_EQ(read(*b.gpu, fused_normed.gpu), read(*b.gpu, plain_normed.gpu)) << what << " vs the plain CUDA ops";
      }
}

TEST(CudaOps, LinearsFusedOverSharedInput) {
  REQUIRE_GPU();
  Backends b;
  // q/k/v-like shapes; the last case mixes dtypes (no single launch: one linear each).
  struct Case {
    DType q, k, v;
  };
  unsigned seed = 600;
  for (const Case& c : {Case{DType::BF16, DType::BF16, DType::BF16}, Case{DType::F32, DType::F32, DType::F32},
                        Case{DType::BF16, DType::F32, DType::BF16}}) {
    auto q = make_weight(b, {96, 64}, c.q, ++seed);
    auto k = make_weight(b, {16, 64}, c.k, ++seed);
    auto v = make_weight(b, {24, 64}, c.v, ++seed);
    auto q_bias = make_weight(b, {96}, DType::BF16, ++seed);
    auto v_bias = make_weight(b, {24}, DType::F32, ++seed);
    for (int64_t n : {1, 3, 8, 9}) {
      Both x = input(b, {n, 64}, random_values(static_cast<size_t>(n * 64), ++seed));
      Both q_out = output(b, {n, 96}), k_out = output(b, {n, 16}), v_out = output(b, {n, 24});
      const LinearOutput cpu_outputs[] = {
          {q_out.cpu, &q->host, &q_bias->host}, {k_out.cpu, &k->host, nullptr}, {v_out.cpu, &v->host, &v_bias->host}};
      const LinearOutput gpu_outputs[] = {{q_out.gpu, &q->device, &q_bias->device},
                                          {k_out.gpu, &k->device, nullptr},
                                          {v_out.gpu, &v->device, &v_bias->device}};
      b.cpu->linears(x.cpu, cpu_outputs);
      b.gpu->linears(x.gpu, gpu_outputs);
      const std::string what = std::string("linears ") + dtype_label(c.q) + "/" + dtype_label(c.k) + "/" +
                               dtype_label(c.v) + " n=" + std::to_string(n);
      EXPECT_LT(compare(b, q_out, what + " q"), 1e-5);
      EXPECT_LT(compare(b, k_out, what + " k"), 1e-5);
      EXPECT_LT(compare(b, v_out, what + " v"), 1e-5);
      Both k_plain = output(b, {n, 16});
      b.gpu->linear(k_plain.gpu, x.gpu, k->device, nullptr);
      EXPECT_EQ(read(*b.gpu, k_out.gpu), read(*b.gpu, k_plain.gpu)) << what << " vs the plain CUDA linear";
    }
  }
}

TEST(CudaOps, HeadNormRotaryFused) {
  REQUIRE_GPU();
  Backends b;
  for (bool norms : {false, true})
    for (int64_t n : {1, 5}) {
      const int64_t heads = 12, kv_heads = 2, head_dim = 128, rotary_dim = 64;
      auto q_norm = make_weight(b, {head_dim}, DType::BF16, 70, 1.0f);
      auto k_norm = make_weight(b, {head_dim}, DType::F32, 71, 1.0f);
      std::vector<int32_t> positions(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) positions[t] = static_cast<int32_t>(1000 * t + 3);
      Both q = input(b, {n, heads, head_dim}, random_values(static_cast<size_t>(n * heads * head_dim), 72, 2.0f));
      Both k = input(b, {n, kv_heads, head_dim}, random_values(static_cast<size_t>(n * kv_heads * head_dim), 73));
      b.cpu->head_norm_rotary(q.cpu, k.cpu, norms ? &q_norm->host : nullptr, norms ? &k_norm->host : nullptr, 1e-5f,
                              positions, rotary_dim, 1e6);
      b.gpu->head_norm_rotary(q.gpu, k.gpu, norms ? &q_norm->device : nullptr, norms ? &k_norm->device : nullptr,
                              1e-5f, positions, rotary_dim, 1e6);
      const std::string what = std::string("head_norm_rotary") + (norms ? " +norms" : "") + " n=" + std::to_string(n);
      EXPECT_LT(compare(b, q, what + " q"), 1e-6);
      EXPECT_LT(compare(b, k, what + " k"), 1e-6);

      // The same with the KV write fused in: the cache (slots scattered over
      // blocks of 4, the rest untouched) holds the rotated k and the v, as
      // the CPU's attention() writes them.
      const int64_t blocks = 8, block_size = 4;
      KvLayer cpu_cache{b.cpu->allocate({blocks, block_size, kv_heads, head_dim}),
                        b.cpu->allocate({blocks, block_size, kv_heads, head_dim})};
      KvLayer gpu_cache{b.gpu->allocate({blocks, block_size, kv_heads, head_dim}),
                        b.gpu->allocate({blocks, block_size, kv_heads, head_dim})};
      AttentionPlan plan;
      plan.block_size = block_size;
      plan.block_tables = {{5, 2}};
      for (int64_t t = 0; t < n; ++t) {
        plan.token_sequence.push_back(0);
        plan.token_position.push_back(static_cast<int32_t>(t));
        plan.token_slot.push_back(plan.block_tables[0][t / block_size] * block_size + t % block_size);
      }
      Both q2 = input(b, {n, heads, head_dim}, random_values(static_cast<size_t>(n * heads * head_dim), 74, 2.0f));
      Both k2 = input(b, {n, kv_heads, head_dim}, random_values(static_cast<size_t>(n * kv_heads * head_dim), 75));
      Both v2 = input(b, {n, kv_heads, head_dim}, random_values(static_cast<size_t>(n * kv_heads * head_dim), 76));
      Both context = output(b, {n, heads, head_dim});
      const bool cpu_wrote = b.cpu->head_norm_rotary_write_kv(q2.cpu, k2.cpu, v2.cpu, norms ? &q_norm->host : nullptr,
                                                              norms ? &k_norm->host : nullptr, 1e-5f, positions,
                                                              rotary_dim, 1e6, cpu_cache, plan);
      const bool gpu_wrote = b.gpu->head_norm_rotary_write_kv(
          q2.gpu, k2.gpu, v2.gpu, norms ? &q_norm->device : nullptr, norms ? &k_norm->device : nullptr, 1e-5f,
          positions, rotary_dim, 1e6, gpu_cache, plan);
      EXPECT_FALSE(cpu_wrote);  // the CPU leaves the write to attention()
      EXPECT_TRUE(gpu_wrote);
      b.cpu->attention(context.cpu, q2.cpu, k2.cpu, v2.cpu, cpu_cache, plan, 0.1f, cpu_wrote);
      b.gpu->attention(context.gpu, q2.gpu, k2.gpu, v2.gpu, gpu_cache, plan, 0.1f, gpu_wrote);
      EXPECT_LT(compare(b, Both{cpu_cache.keys, gpu_cache.keys}, what + " + KV write: keys"), 1e-6);
      EXPECT_LT(compare(b, Both{cpu_cache.values, gpu_cache.values}, what + " + KV write: values"), 1e-6);
      EXPECT_LT(compare(b, context, what + " + KV write: attention"), 1e-5);
      for (KvLayer* cache : {&cpu_cache, &gpu_cache}) {
        Backend& backend = cache == &cpu_cache ? *b.cpu : *b.gpu;
        backend.release(cache->keys);
        backend.release(cache->values);
      }
    }
}

// ---------------------------------------------------------------- attention, KV blocks

struct AttentionCase {
  std::string name;
  int64_t heads, kv_heads, head_dim, block_size, n_blocks;
  // (sequence length before the step, tokens in the step) per sequence
  std::vector<std::pair<int32_t, int32_t>> sequences;
  // GLM_CUDA_PROMPTS: "simt" keeps every token on the exact f32 kernels;
  // "tensor" sends sequences of >= 16 tokens to the bf16 tensor-core kernel.
  std::string prompts = "simt";
  double tolerance = 1e-5;
};

// A CPU and a GPU cache with the same random contents (earlier tokens' K/V).
std::pair<KvLayer, KvLayer> random_caches(Backends& b, const Shape& cache_shape) {
  KvLayer cpu_cache{b.cpu->allocate(cache_shape), b.cpu->allocate(cache_shape)};
  KvLayer gpu_cache{b.gpu->allocate(cache_shape), b.gpu->allocate(cache_shape)};
  const std::vector<float> keys = random_values(static_cast<size_t>(shape_numel(cache_shape)), 50);
  const std::vector<float> values = random_values(static_cast<size_t>(shape_numel(cache_shape)), 51);
  std::memcpy(cpu_cache.keys.data, keys.data(), keys.size() * sizeof(float));
  std::memcpy(cpu_cache.values.data, values.data(), values.size() * sizeof(float));
  to_device(gpu_cache.keys.data, keys.data(), keys.size() * sizeof(float));
  to_device(gpu_cache.values.data, values.data(), values.size() * sizeof(float));
  return {cpu_cache, gpu_cache};
}

// Scattered block tables: each sequence (length before the step, tokens in
// the step) takes blocks from a shuffled pool of n_blocks.
AttentionPlan scattered_plan(const std::vector<std::pair<int32_t, int32_t>>& sequences, int64_t block_size,
                             int64_t n_blocks) {
  std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(52));
  AttentionPlan plan;
  plan.block_size = block_size;
  size_t next = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto [start, count] = sequences[s];
    const int64_t blocks = (start + count + block_size - 1) / block_size;
    EXPECT_LE(next + static_cast<size_t>(blocks), pool.size()) << "the test's cache is too small";
    std::vector<int32_t> table(pool.begin() + next, pool.begin() + next + blocks);
    next += static_cast<size_t>(blocks);
    for (int32_t i = 0; i < count; ++i) {
      const int32_t position = start + i;
      plan.token_sequence.push_back(static_cast<int32_t>(s));
      plan.token_position.push_back(position);
      plan.token_slot.push_back(static_cast<int64_t>(table[position / block_size]) * block_size +
                                position % block_size);
    }
    plan.block_tables.push_back(table);
  }
  return plan;
}

void run_attention(const AttentionCase& c) {
  Backends b(c.prompts.c_str());
  auto [cpu_cache, gpu_cache] = random_caches(b, {c.n_blocks, c.block_size, c.kv_heads, c.head_dim});
  const AttentionPlan plan = scattered_plan(c.sequences, c.block_size, c.n_blocks);
  const int64_t n = static_cast<int64_t>(plan.token_slot.size());
  Both q = input(b, {n, c.heads, c.head_dim}, random_values(static_cast<size_t>(n * c.heads * c.head_dim), 53));
  Both k = input(b, {n, c.kv_heads, c.head_dim}, random_values(static_cast<size_t>(n * c.kv_heads * c.head_dim), 54));
  Both v = input(b, {n, c.kv_heads, c.head_dim}, random_values(static_cast<size_t>(n * c.kv_heads * c.head_dim), 55));
  Both out = output(b, {n, c.heads, c.head_dim});
  const std::vector<float> poison(static_cast<size_t>(out.gpu.numel()), std::nanf(""));  // every output must be written
  to_device(out.gpu.data, poison.data(), poison.size() * sizeof(float));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  b.cpu->attention(out.cpu, q.cpu, k.cpu, v.cpu, cpu_cache, plan, scale);
  b.gpu->attention(out.gpu, q.gpu, k.gpu, v.gpu, gpu_cache, plan, scale);
  EXPECT_LT(compare(b, out, "attention " + c.name), c.tolerance);
  const std::vector<float> result = read(*b.gpu, out.gpu);
  EXPECT_EQ(std::count_if(result.begin(), result.end(), [](float x) { return !std::isfinite(x); }), 0)
      << "outputs not written or not finite";
  EXPECT_EQ(read(*b.gpu, gpu_cache.keys), read(*b.cpu, cpu_cache.keys)) << "keys written to the cache";
  EXPECT_EQ(read(*b.gpu, gpu_cache.values), read(*b.cpu, cpu_cache.values)) << "values written to the cache";
  for (Tensor* t : {&cpu_cache.keys, &cpu_cache.values}) b.cpu->release(*t);
  for (Tensor* t : {&gpu_cache.keys, &gpu_cache.values}) b.gpu->release(*t);
}

// rotary_attention (head norm + rotary + KV write + attention) against the
// CPU's plain ops and against the GPU's own unfused ops: decode steps at
// sliced contexts, where the short kernel folds the first three in (contexts
// of 1, 17, 301 and 4000 in one step; 101 and 1, sliced too since session
// 26; rotary over 32, 64 and all 128 dims; with and without head norms),
// and a step it must not fold (a sequence with 3 tokens). Where it folded,
// q comes back unrotated: that is how the test knows it did.
// (GLM_CUDA_SHORT_SLICE=0 keeps contexts up to 256 whole and unfolded.)
TEST(CudaOps, RotaryAttentionFoldedIntoDecode) {
  REQUIRE_GPU();
  const char* forced = std::getenv("GLM_CUDA_FOLD_ROTARY");
  const bool fold_on = !(forced && std::string(forced) == "0");
  const char* short_slice = std::getenv("GLM_CUDA_SHORT_SLICE");
  const bool short_sliced = !(short_slice && std::string(short_slice) == "0");
  Backends b;
  const int64_t heads = 24, kv_heads = 2, head_dim = 128, block_size = 16, n_blocks = 460;
  const std::vector<std::vector<std::pair<int32_t, int32_t>>> steps = {
      {{3999, 1}, {0, 1}, {16, 1}, {300, 1}},  // decode past 256 positions: folds
      {{100, 1}, {0, 1}},                      // decode within 256: sliced, folds (unless kept whole)
      {{40, 3}, {20, 1}},                      // tokens that see each other: head_norm_rotary first
  };
  auto q_norm = make_weight(b, {head_dim}, DType::BF16, 80, 1.0f);
  auto k_norm = make_weight(b, {head_dim}, DType::F32, 81, 1.0f);
  for (size_t step = 0; step < steps.size(); ++step)
    for (int64_t rotary_dim : {32, 64, 128})
      for (bool norms : {false, true}) {
        const std::string what = "rotary_attention step " + std::to_string(step) + " rotary " +
                                 std::to_string(rotary_dim) + (norms ? " +norms" : "");
        const AttentionPlan plan = scattered_plan(steps[step], block_size, n_blocks);
        const int64_t n = static_cast<int64_t>(plan.token_slot.size());
        auto [cpu_cache, gpu_cache] = random_caches(b, {n_blocks, block_size, kv_heads, head_dim});
        auto [unused, plain_cache] = random_caches(b, {n_blocks, block_size, kv_heads, head_dim});
        // The step's own slots hold NaN before it (as a fresh cache may): read
        // from the cache instead of written first, they would poison the output.
        const std::vector<float> nan_row(static_cast<size_t>(kv_heads * head_dim), std::nanf(""));
        for (int64_t slot : plan.token_slot)
          for (float* base : {gpu_cache.keys.f32(), gpu_cache.values.f32()})
            to_device(base + slot * kv_heads * head_dim, nan_row.data(), nan_row.size() * sizeof(float));
        const std::vector<float> q_in = random_values(static_cast<size_t>(n * heads * head_dim), 82, 2.0f);
        const std::vector<float> k_in = random_values(static_cast<size_t>(n * kv_heads * head_dim), 83);
        const std::vector<float> v_in = random_values(static_cast<size_t>(n * kv_heads * head_dim), 84);
        Both q = input(b, {n, heads, head_dim}, q_in), k = input(b, {n, kv_heads, head_dim}, k_in);
        Both v = input(b, {n, kv_heads, head_dim}, v_in);
        Both out = output(b, {n, heads, head_dim});
        const Weight* q_gamma[2] = {norms ? &q_norm->host : nullptr, norms ? &q_norm->device : nullptr};
        const Weight* k_gamma[2] = {norms ? &k_norm->host : nullptr, norms ? &k_norm->device : nullptr};
        const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
        b.cpu->rotary_attention(out.cpu, q.cpu, k.cpu, v.cpu, q_gamma[0], k_gamma[0], 1e-5f, rotary_dim, 1e6,
                                cpu_cache, plan, scale);
        b.gpu->rotary_attention(out.gpu, q.gpu, k.gpu, v.gpu, q_gamma[1], k_gamma[1], 1e-5f, rotary_dim, 1e6,
                                gpu_cache, plan, scale);
        EXPECT_LT(compare(b, out, what), 1e-5);
        EXPECT_LT(compare(b, Both{cpu_cache.keys, gpu_cache.keys}, what + ": keys"), 1e-6);
        EXPECT_EQ(read(*b.gpu, gpu_cache.values), read(*b.cpu, cpu_cache.values)) << what << ": values";
        const bool folds = fold_on && (step == 0 || (step == 1 && short_sliced));
        EXPECT_EQ(read(*b.gpu, q.gpu) == q_in, folds) << what << ": q left unrotated exactly where the kernel folds";

        // The GPU's plain ops on the same inputs.
        Both q2 = input(b, {n, heads, head_dim}, q_in), k2 = input(b, {n, kv_heads, head_dim}, k_in);
        Both v2 = input(b, {n, kv_heads, head_dim}, v_in);
        Both out2 = output(b, {n, heads, head_dim});
        const bool wrote = b.gpu->head_norm_rotary_write_kv(q2.gpu, k2.gpu, v2.gpu, q_gamma[1], k_gamma[1], 1e-5f,
                                                            plan.token_position, rotary_dim, 1e6, plain_cache, plan);
        b.gpu->attention(out2.gpu, q2.gpu, k2.gpu, v2.gpu, plain_cache, plan, scale, wrote);
        const double against_plain = relative_error(read(*b.gpu, out.gpu), read(*b.gpu, out2.gpu));
        report(what + " vs plain CUDA", against_plain);
        EXPECT_LT(against_plain, 1e-6);
        EXPECT_LT(relative_error(read(*b.gpu, gpu_cache.keys), read(*b.gpu, plain_cache.keys)), 1e-7)
            << what << ": keys against the plain CUDA ops";
        for (KvLayer* cache : {&cpu_cache, &unused})
          b.cpu->release(cache->keys), b.cpu->release(cache->values);
        for (KvLayer* cache : {&gpu_cache, &plain_cache})
          b.gpu->release(cache->keys), b.gpu->release(cache->values);
      }
}

TEST(CudaOps, AttentionPrefillGqa12To1) {
  REQUIRE_GPU();
  run_attention({"GQA 12:1, 24 heads of 128, prefill 37", 24, 2, 128, 16, 8, {{0, 37}}});
}

TEST(CudaOps, AttentionLongContextDecode) {
  REQUIRE_GPU();
  run_attention({"GQA 12:1, decode at 4000 / 2500 / 17", 12, 1, 128, 16, 450, {{3999, 1}, {2499, 1}, {16, 1}}});
}

TEST(CudaOps, AttentionRaggedBatchOddHeadDim) {
  REQUIRE_GPU();
  run_attention({"ragged prefill+decode+chunk, head_dim 80", 6, 2, 80, 4, 40, {{0, 5}, {20, 1}, {10, 7}}});
  run_attention({"MQA, head_dim 16, one block", 4, 1, 16, 16, 2, {{0, 3}}});
  run_attention({"head_dim 256, long chunk", 8, 4, 256, 32, 40, {{300, 200}}});
}

// Prompts on tensor cores (bf16 operands: within 1e-2 of the f32 CPU
// reference): prompts of 1 (decode kernels), 17, 100 and 300 tokens, a
// second chunk over a cache holding the first chunk's keys (the random
// contents before position 300), two prompts in one step, a prompt chunk
// beside decode tokens (those take the decode kernels as a sub-batch), and
// GQA 12:1 with head_dim 128 (GLM-4.5-Air) and 4:1 with 64.
TEST(CudaOps, AttentionPromptsOnTensorCores) {
  REQUIRE_GPU();
  for (int32_t tokens : {1, 17, 100, 300})
    run_attention({"tensor cores, GQA 12:1 of 128, prompt " + std::to_string(tokens), 24, 2, 128, 16, 40,
                   {{0, tokens}}, "tensor", 1e-2});
  run_attention({"tensor cores, GQA 12:1 of 128, chunk 300..399 over cache", 24, 2, 128, 16, 40, {{300, 100}},
                 "tensor", 1e-2});
  run_attention({"tensor cores, GQA 12:1 of 128, two prompts", 24, 2, 128, 16, 40, {{0, 100}, {60, 40}}, "tensor",
                 1e-2});
  run_attention({"tensor cores, GQA 12:1 of 128, chunk beside decodes", 24, 2, 128, 16, 60,
                 {{0, 40}, {500, 1}, {17, 3}}, "tensor", 1e-2});
  run_attention({"tensor cores, GQA 4:1 of 64, prompt 300", 8, 2, 64, 16, 40, {{0, 300}}, "tensor", 1e-2});
  run_attention({"tensor cores, GQA 4:1 of 64, chunk + prompt 16", 8, 2, 64, 16, 40, {{128, 77}, {0, 16}},
                 "tensor", 1e-2});
}

TEST(CudaOps, CopyKvBlock) {
  REQUIRE_GPU();
  Backends b;
  const Shape shape = {9, 4, 2, 16};
  const std::vector<float> keys = random_values(static_cast<size_t>(shape_numel(shape)), 60);
  const std::vector<float> values = random_values(static_cast<size_t>(shape_numel(shape)), 61);
  KvLayer cpu_cache{b.cpu->allocate(shape), b.cpu->allocate(shape)};
  KvLayer gpu_cache{b.gpu->allocate(shape), b.gpu->allocate(shape)};
  std::memcpy(cpu_cache.keys.data, keys.data(), keys.size() * sizeof(float));
  std::memcpy(cpu_cache.values.data, values.data(), values.size() * sizeof(float));
  to_device(gpu_cache.keys.data, keys.data(), keys.size() * sizeof(float));
  to_device(gpu_cache.values.data, values.data(), values.size() * sizeof(float));
  b.cpu->copy_kv_block(cpu_cache, 3, 7);
  b.gpu->copy_kv_block(gpu_cache, 3, 7);
  b.cpu->copy_kv_block(cpu_cache, 8, 0);
  b.gpu->copy_kv_block(gpu_cache, 8, 0);
  EXPECT_EQ(read(*b.gpu, gpu_cache.keys), read(*b.cpu, cpu_cache.keys));
  EXPECT_EQ(read(*b.gpu, gpu_cache.values), read(*b.cpu, cpu_cache.values));
  report("copy_kv_block", 0.0);
}

// ---------------------------------------------------------------- router, experts

struct RouteCase {
  int64_t n_experts;
  RouterParams params;
  DType bias_dtype;
  bool ties;  // logits from a few values and no bias: many exact ties
};

TEST(CudaOps, RouterMatchesExactlyIncludingTies) {
  REQUIRE_GPU();
  Backends b;
  const std::vector<RouteCase> cases = {
      {160, {1, 1, 8, true, 2.5f}, DType::F32, false},   // GLM-4.5 shape
      {256, {8, 4, 8, true, 2.5f}, DType::BF16, false},  // DeepSeek-V3 shape
      {16, {4, 2, 2, false, 1.0f}, DType::F32, false},
      {8, {4, 3, 2, true, 1.5f}, DType::F32, false},
      {64, {8, 3, 6, true, 1.0f}, DType::F32, true},
      {40, {1, 1, 40, true, 1.0f}, DType::F32, true},  // every expert chosen
  };
  const int64_t n = 37;
  unsigned seed = 70;
  for (const RouteCase& c : cases) {
    std::vector<float> logits = random_values(static_cast<size_t>(n * c.n_experts), ++seed, 2.0f);
    if (c.ties)
      for (float& value : logits) value = std::round(value);
    auto bias = make_weight(b, {c.n_experts}, c.bias_dtype, ++seed, c.ties ? 0.0f : 0.3f);
    Both router_logits = input(b, {n, c.n_experts}, logits);
    Both ids = output(b, {n, c.params.top_k}, DType::I32);
    Both weights = output(b, {n, c.params.top_k});
    Routing cpu_routing{ids.cpu, weights.cpu}, gpu_routing{ids.gpu, weights.gpu};
    b.cpu->route(cpu_routing, router_logits.cpu, bias->host, c.params);
    b.gpu->route(gpu_routing, router_logits.gpu, bias->device, c.params);
    const std::vector<int32_t> cpu_ids(ids.cpu.i32(), ids.cpu.i32() + n * c.params.top_k);
    const std::string what = "route E=" + std::to_string(c.n_experts) + " groups " + std::to_string(c.params.n_group) +
                             "/" + std::to_string(c.params.topk_group) + " top " + std::to_string(c.params.top_k) +
                             (c.ties ? " ties" : "");
    EXPECT_EQ(read_i32(ids.gpu), cpu_ids) << what;
    EXPECT_LT(compare(b, weights, what + " weights"), 1e-6);
  }
}

// The routed experts: decoding sizes (n <= 64, grouped on the device, f32)
// exactly; prompt sizes on tensor cores (GLM_CUDA_PROMPTS=tensor: the
// assignments sorted by expert on the device, grouped GEMMs for gate/up with
// SwiGLU fused and for down) within the bf16 bound and above f32 rounding.
// check_moe_experts' skewed routing gives experts with none, one and many
// tokens, and it repeats with an expert-parallel shard.
TEST(CudaOps, MoeExpertsRaggedAndExpertParallel) {
  REQUIRE_GPU();
  struct Case {
    const char* prompts;
    int64_t hidden, width;
    std::vector<int64_t> tokens;
    double tolerance, floor;
  };
  for (const Case& c : {Case{"simt", 96, 40, {1, 5, 40}, 1e-5, 0.0}, Case{"tensor", 128, 64, {65, 300, 1000}, 1e-2, 1e-6},
                        Case{"tensor-mma", 128, 64, {65, 300, 1000}, 1e-2, 1e-6}}) {
    Backends b(c.prompts);
    const int64_t n_experts = 16, top_k = 4;
    for (DType dtype : {DType::F32, DType::BF16}) {
      std::vector<std::unique_ptr<TestWeight>> storage;
      ExpertTables host, device;
      unsigned seed = 80;
      make_experts(storage, host, device, n_experts, c.width, c.hidden,
                   [&](int64_t rows, int64_t cols) { return make_weight(b, {rows, cols}, dtype, ++seed); });
      for (int64_t n : c.tokens)
        check_moe_experts(b, host, device, n, top_k,
                          std::string("moe_experts ") + c.prompts + " " + dtype_label(dtype),
                          c.tolerance, nullptr, nullptr, c.floor);
    }
  }
}

TEST(CudaOps, AllReduceOnOneGpuIsNothing) {
  REQUIRE_GPU();
  Backends b;
  const std::vector<float> values = random_values(100, 99);
  Both x = input(b, {100}, values);
  b.gpu->all_reduce(x.gpu);
  EXPECT_EQ(read(*b.gpu, x.gpu), values);
}

}  // namespace
}  // namespace glm

#else  // built without CUDA

TEST(CudaOps, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA backend (GLM_CUDA off or no nvcc)"; }

#endif
