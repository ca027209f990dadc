// Per-op timings of the CUDA backend at GLM-4.5-Air shapes, through the
// Backend interface the model uses: each op repeated back to back, the mean
// time per call (the larger of the host's issue time and the GPU's run time,
// as in a real decode step) and the bytes it must read from device memory,
// against the card's device-to-device copy bandwidth measured in the same
// run. Weights are random: bf16, and mlx affine int8/int4 (group 64).
//
//   cmake --build build --target bench_cuda_ops && build/bench_cuda_ops [--quick] [--format bf16|int8|int4|fp8] (fp8: prompts only)
//
// --quick times one projection shape per format; --format one format only;
// --prompts adds 4096-token projections and experts on tensor cores, in
// TFLOP/s against a bf16 cuBLAS matmul, and prompt attention (one sequence of
// 4096 and of 32768 tokens, causal, 96 query heads over 8 KV heads of 128);
// --prompt-attention times only that attention (and the matmul rate).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"
#include "engine/quantize.h"

namespace glm {
namespace {

using Clock = std::chrono::steady_clock;

// A weight of `format` ("bf16", "int8", "int4" with groups of 64, "fp8":
// e4m3 with an f32 scale per row, as the official FP8 checkpoints) with its
// host storage.
struct HostWeight {
  std::vector<uint16_t> half;
  std::vector<uint8_t> fp8;
  std::vector<float> fp8_scales;
  std::unique_ptr<AffineMatrix> affine;
  Weight host;
};

std::unique_ptr<HostWeight> make_weight(int64_t rows, int64_t cols, const std::string& format, unsigned seed) {
  auto w = std::make_unique<HostWeight>();
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  if (format == "bf16") {
    w->half.resize(static_cast<size_t>(rows * cols));
    for (auto& value : w->half) value = f32_to_bf16(normal(generator));
    w->host = float_weight("bench", TensorView(w->half.data(), DType::BF16, {rows, cols}));
    return w;
  }
  if (format == "fp8") {  // random finite e4m3 bytes (exponent field <= 11: magnitudes below 32), scales 1/256
    w->fp8.resize(static_cast<size_t>(rows * cols));
    for (uint8_t& byte : w->fp8) {
      do byte = static_cast<uint8_t>(generator() & 0xff);
      while ((byte & 0x78) > 0x58);
    }
    w->fp8_scales.assign(static_cast<size_t>(rows), 1.0f / 256);
    Weight& host = w->host;
    host.name = "bench";
    host.shape = {rows, cols};
    host.view = TensorView(w->fp8.data(), DType::F8_E4M3, {rows, cols});
    host.format.kind = WeightFormat::Kind::Fp8;
    host.format.dtype = DType::F8_E4M3;
    host.format.fp8_scale = WeightFormat::Fp8Scale::Channel;
    host.format.scales = TensorView(w->fp8_scales.data(), DType::F32, {rows, 1});
    return w;
  }
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float& value : values) value = normal(generator);
  w->affine = quantize_matrix_affine(values, rows, cols, format == "int8" ? 8 : 4, 64, "bench");
  w->host = w->affine->weight;
  return w;
}

// Mean seconds per call of `op` over enough calls to last ~50 ms.
double time_op(Backend& backend, const std::function<void()>& op) {
  op();
  backend.synchronize();
  int reps = 1;
  for (;;) {
    const auto start = Clock::now();
    for (int i = 0; i < reps; ++i) op();
    backend.synchronize();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (seconds > 0.05 || reps >= (1 << 16)) return seconds / reps;
    reps *= 4;
  }
}

void report(const std::string& what, double seconds, double bytes, double copy_bandwidth) {
  std::printf("%-58s %9.1f us %9.1f MB %8.1f GB/s %5.0f%%\n", what.c_str(), seconds * 1e6, bytes / 1e6,
              bytes / seconds / 1e9, 100.0 * bytes / seconds / copy_bandwidth);
}

void report_flops(const std::string& what, double seconds, double flops, double matmul_rate) {
  std::printf("%-58s %9.1f us %9.1f TFLOP/s %5.0f%% of the bf16 matmul rate\n", what.c_str(), seconds * 1e6,
              flops / seconds / 1e12, 100.0 * flops / seconds / matmul_rate);
}

// Expert ids for n tokens, top_k distinct of n_experts each, uniformly spread.
std::vector<int32_t> random_routing(int64_t n, int64_t n_experts, int64_t top_k) {
  std::vector<int32_t> ids(static_cast<size_t>(n * top_k));
  std::mt19937 generator(7);
  std::vector<int32_t> experts(static_cast<size_t>(n_experts));
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t e = 0; e < n_experts; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), generator);
    for (int64_t k = 0; k < top_k; ++k) ids[t * top_k + k] = experts[k];
  }
  return ids;
}

// The routed experts of one MoE layer in `format`: every expert views the
// same host bytes, uploaded apart.
struct PlacedExperts {
  std::unique_ptr<HostWeight> gate, up, down;
  ExpertTable gates, ups, downs;
};
std::unique_ptr<PlacedExperts> place_experts(Backend& backend, const std::string& format, int64_t n_experts,
                                             int64_t width, int64_t hidden) {
  auto experts = std::make_unique<PlacedExperts>();
  experts->gate = make_weight(width, hidden, format, 2);
  experts->up = make_weight(width, hidden, format, 3);
  experts->down = make_weight(hidden, width, format, 4);
  for (int64_t e = 0; e < n_experts; ++e) {
    experts->gates.experts.push_back(backend.place(experts->gate->host));
    experts->ups.experts.push_back(backend.place(experts->up->host));
    experts->downs.experts.push_back(backend.place(experts->down->host));
  }
  return experts;
}

// `ids` [n, top_k] on the device, every weight 1/8.
Routing upload_routing(Backend& backend, const std::vector<int32_t>& ids, int64_t n, int64_t top_k) {
  const std::vector<float> mix(ids.size(), 0.125f);
  Routing routing{backend.scratch({n, top_k}, DType::I32), backend.scratch({n, top_k})};
  cudaMemcpy(routing.expert_ids.data, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(routing.weights.data, mix.data(), mix.size() * 4, cudaMemcpyHostToDevice);
  return routing;
}

// Fills `count` device floats with values in [-1, 1), repeating a random
// host block of up to 16M values: real data, not zeros, at a cost the bench
// does not notice at 32k-token prompts (400M query values).
void fill_random(void* device, int64_t count, uint32_t seed) {
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 24);
  std::vector<float> host(static_cast<size_t>(block));
  uint32_t state = seed * 2654435761u + 1;
  for (float& value : host) {
    state = state * 1664525u + 1013904223u;
    value = static_cast<float>(state >> 8) / 8388608.0f - 1.0f;
  }
  for (int64_t at = 0; at < count; at += block)
    cudaMemcpy(static_cast<float*>(device) + at, host.data(), sizeof(float) * std::min(block, count - at),
               cudaMemcpyHostToDevice);
}

// Causal attention over one prompt of n tokens at GLM-4.5-Air's shape, as the
// model runs it for a prompt step (the step's K/V written to the cache, then
// attention over it), counting 4 * head_dim FLOPs per (query head, token,
// key at or before it).
void bench_prompt_attention(Backend& backend, int64_t n, double matmul_rate) {
  const int64_t heads = 96, kv_heads = 8, head_dim = 128, block_size = 16;
  const int64_t blocks = n / block_size + 1;
  KvLayer cache{backend.allocate({blocks, block_size, kv_heads, head_dim}),
                backend.allocate({blocks, block_size, kv_heads, head_dim})};
  Tensor q = backend.allocate({n, heads, head_dim}), o = backend.allocate({n, heads, head_dim});
  Tensor k = backend.allocate({n, kv_heads, head_dim}), v = backend.allocate({n, kv_heads, head_dim});
  fill_random(q.data, q.numel(), 3);
  fill_random(k.data, k.numel(), 4);
  fill_random(v.data, v.numel(), 5);
  AttentionPlan plan;
  plan.block_size = block_size;
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) table[b] = static_cast<int32_t>(b);
  plan.block_tables = {table};
  for (int64_t t = 0; t < n; ++t) {
    plan.token_sequence.push_back(0);
    plan.token_position.push_back(static_cast<int32_t>(t));
    plan.token_slot.push_back(t);
  }
  const double seconds = time_op(backend, [&] {
    backend.reset_scratch();  // the op's bf16 copy of the keys and values is scratch
    backend.attention(o, q, k, v, cache, plan, 0.088f);
  });
  report_flops("prompt attention 96/8 heads of 128, " + std::to_string(n) + " tokens", seconds,
               4.0 * head_dim * heads * static_cast<double>(n) * (n + 1) / 2, matmul_rate);
  for (Tensor* t : {&cache.keys, &cache.values, &q, &o, &k, &v}) backend.release(*t);
}

}  // namespace
}  // namespace glm

int main(int argc, char** argv) {
  using namespace glm;
  bool quick = false, prompts = false, prompt_attention_only = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--prompts") == 0) prompts = true;
    if (std::strcmp(argv[i], "--prompt-attention") == 0) prompt_attention_only = true;
    if (std::strcmp(argv[i], "--format") == 0 && i + 1 < argc) only = argv[++i];
  }
  auto backend = make_backend("cuda");
  if (prompt_attention_only) {
    const double matmul_rate = backend->measure_matmul_rate();
    std::printf("bf16 matmul 8192^3 (cuBLAS): %.0f TFLOP/s\n", matmul_rate / 1e12);
    for (int64_t n : {4096, 32768}) bench_prompt_attention(*backend, n, matmul_rate);
    return 0;
  }
  const double copy_bandwidth = backend->measure_copy_bandwidth();
  std::printf("%s: device copy bandwidth %.1f GB/s (read + write)\n", backend->name().c_str(), copy_bandwidth / 1e9);
  std::printf("%-58s %12s %12s %13s %6s\n", "op", "time", "bytes", "rate", "copy");

  const int64_t hidden = 4096;
  backend->reset_scratch();
  Tensor x = backend->scratch({32, 12288});
  Tensor out = backend->scratch({32, 151552});
  backend->synchronize();
  // A tiny op: what one launch costs, the floor under every op below.
  Tensor small_in{x.data, DType::F32, {1, hidden}}, small_out{out.data, DType::F32, {1, hidden}};
  report("add [1, 4096] (launch floor)", time_op(*backend, [&] { backend->add(small_out, small_in, small_in); }),
         3.0 * hidden * 4, copy_bandwidth);

  for (const std::string format : {"bf16", "int8", "int4"}) {
    if (!only.empty() && format != only) continue;
    struct Shape2 {
      const char* name;
      int64_t rows, cols;
    };
    std::vector<Shape2> shapes = {{"q_proj", 12288, hidden}, {"o_proj", hidden, 12288}, {"lm_head", 151552, hidden}};
    if (quick) shapes.resize(1);
    for (const Shape2& shape : shapes) {
      auto weight = make_weight(shape.rows, shape.cols, format, 1);
      const Weight placed = backend->place(weight->host);
      for (int64_t n : {1, 8}) {
        Tensor input{x.data, DType::F32, {n, shape.cols}};
        Tensor output{out.data, DType::F32, {n, shape.rows}};
        const double seconds = time_op(*backend, [&] { backend->linear(output, input, placed, nullptr); });
        report("linear " + format + " " + shape.name + " [" + std::to_string(shape.rows) + ", " +
                   std::to_string(shape.cols) + "] n=" + std::to_string(n),
               seconds, static_cast<double>(placed.nbytes()), copy_bandwidth);
      }
    }

    // The routed experts of one MoE layer: 128 experts of 1408, top 8.
    const int64_t n_experts = 128, width = 1408, top_k = 8;
    const auto experts = place_experts(*backend, format, n_experts, width, hidden);
    const ExpertTable &gates = experts->gates, &ups = experts->ups, &downs = experts->downs;
    for (int64_t n : {1, 8, 32}) {
      const std::vector<int32_t> ids = random_routing(n, n_experts, top_k);
      std::vector<int32_t> distinct(ids);
      std::sort(distinct.begin(), distinct.end());
      const int64_t used = std::unique(distinct.begin(), distinct.end()) - distinct.begin();
      const Routing routing = upload_routing(*backend, ids, n, top_k);
      Tensor input{x.data, DType::F32, {n, hidden}};
      Tensor output{out.data, DType::F32, {n, hidden}};
      const double seconds =
          time_op(*backend, [&] { backend->moe_experts(output, input, routing, gates, ups, downs); });
      const double bytes = static_cast<double>(used) *
                           static_cast<double>(gates.experts[0].nbytes() * 2 + downs.experts[0].nbytes());
      report("moe_experts " + format + " 128 x [1408, 4096] top 8 n=" + std::to_string(n) + " (" +
                 std::to_string(used) + " experts)",
             seconds, bytes, copy_bandwidth);
    }
  }

  // Prompts of 4096 tokens on tensor cores (GLM_CUDA_PROMPTS=tensor, the
  // default): projections and the routed experts, in TFLOP/s against a
  // large bf16 cuBLAS matmul measured now.
  if (prompts) {
    const double matmul_rate = backend->measure_matmul_rate();
    std::printf("bf16 matmul 8192^3 (cuBLAS): %.0f TFLOP/s\n", matmul_rate / 1e12);
    const int64_t n = 4096;
    backend->reset_scratch();
    Tensor prompt_x = backend->scratch({n, 12288});
    Tensor prompt_out = backend->scratch({n, 12288});
    std::vector<float> values(static_cast<size_t>(n * 12288));
    std::mt19937 generator(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& value : values) value = normal(generator);
    cudaMemcpy(prompt_x.data, values.data(), values.size() * 4, cudaMemcpyHostToDevice);
    for (const std::string format : {"bf16", "int8", "int4", "fp8"}) {
      if (!only.empty() && format != only) continue;
      for (auto [name, rows, cols] : {std::tuple{"q_proj", int64_t{12288}, hidden},
                                      std::tuple{"o_proj", hidden, int64_t{12288}},
                                      std::tuple{"dense gate", int64_t{10944}, hidden}}) {
        auto weight = make_weight(rows, cols, format, 1);
        const Weight placed = backend->place(weight->host);
        Tensor input{prompt_x.data, DType::F32, {n, cols}};
        Tensor output{prompt_out.data, DType::F32, {n, rows}};
        const double seconds = time_op(*backend, [&] { backend->linear(output, input, placed, nullptr); });
        report_flops("prompt linear " + format + " " + name + " [" + std::to_string(rows) + ", " +
                         std::to_string(cols) + "] n=" + std::to_string(n),
                     seconds, 2.0 * n * rows * cols, matmul_rate);
      }
      const int64_t n_experts = 128, width = 1408, top_k = 8;
      const auto experts = place_experts(*backend, format, n_experts, width, hidden);
      const ExpertTable &gates = experts->gates, &ups = experts->ups, &downs = experts->downs;
      const Routing routing = upload_routing(*backend, random_routing(n, n_experts, top_k), n, top_k);
      Tensor input{prompt_x.data, DType::F32, {n, hidden}};
      Tensor output{prompt_out.data, DType::F32, {n, hidden}};
      const double seconds =
          time_op(*backend, [&] { backend->moe_experts(output, input, routing, gates, ups, downs); });
      report_flops("prompt moe_experts " + format + " 128 x [1408, 4096] top 8 n=" + std::to_string(n), seconds,
                   2.0 * n * top_k * 3 * width * hidden, matmul_rate);
    }
    for (int64_t tokens : {4096, 32768}) bench_prompt_attention(*backend, tokens, matmul_rate);
  }

  // Decode attention over the paged cache: 96 query heads over 8 KV heads of 128.
  for (int32_t context : {16, 256, 4096, 32768}) {
    const int64_t heads = 96, kv_heads = 8, head_dim = 128, block_size = 16;
    const int64_t blocks = context / block_size + 1;
    KvLayer cache{backend->allocate({blocks, block_size, kv_heads, head_dim}),
                  backend->allocate({blocks, block_size, kv_heads, head_dim})};
    AttentionPlan plan;
    plan.block_size = block_size;
    std::vector<int32_t> table(static_cast<size_t>(blocks));
    for (int64_t b = 0; b < blocks; ++b) table[b] = static_cast<int32_t>(b);
    plan.block_tables = {table};
    plan.token_sequence = {0};
    plan.token_position = {context - 1};
    plan.token_slot = {context - 1};
    Tensor q{x.data, DType::F32, {1, heads, head_dim}};
    Tensor k{x.data, DType::F32, {1, kv_heads, head_dim}};
    Tensor o{out.data, DType::F32, {1, heads, head_dim}};
    const double seconds = time_op(*backend, [&] { backend->attention(o, q, k, k, cache, plan, 0.088f); });
    report("attention decode 96/8 heads of 128, context " + std::to_string(context), seconds,
           2.0 * context * kv_heads * head_dim * 4, copy_bandwidth);
    backend->release(cache.keys);
    backend->release(cache.values);
  }
  return 0;
}
