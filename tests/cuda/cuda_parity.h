// Shared pieces of the CUDA parity tests (test_cuda_ops.cpp,
// test_cuda_quantized.cpp): skipping without a GPU, random inputs, the two
// backends under comparison, moving tensors into and out of them, and the
// normalised error ||cuda - cpu|| / ||cpu|| each comparison prints as a
// "PARITY" line for scripts/gpu_check.sh. Included only where GLM_HAVE_CUDA.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "../common/random_values.h"
#include "../common/scoped_env.h"

namespace glm::cuda_parity {

inline bool gpu_present() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define REQUIRE_GPU()                                                            \
  do {                                                                           \
    if (!gpu_present()) GTEST_SKIP() << "no CUDA GPU on this machine";           \
  } while (0)

using testing_random::random_values;

inline double relative_error(const std::vector<float>& actual, const std::vector<float>& expected) {
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double d = static_cast<double>(actual[i]) - expected[i];
    difference += d * d;
    norm += static_cast<double>(expected[i]) * expected[i];
  }
  return norm == 0.0 ? std::sqrt(difference) : std::sqrt(difference / norm);
}

inline void report(const std::string& what, double error) { std::printf("PARITY %-58s %.3e\n", what.c_str(), error); }

using testing_env::ScopedEnv;

// A CUDA backend whose prompt-sized products run in `prompts` mode:
// "simt" (GLM_CUDA_PROMPTS=simt, the tests' default), "tensor" (wgmma where
// the device and binary have it, quantized weights widened into its
// registers; else mma.sync), "tensor-shared" (wgmma with every weight widened into a
// tile in shared memory: GLM_CUDA_REGISTER_WEIGHTS=0) or "tensor-mma"
// (tensor cores through mma.sync even on Hopper: GLM_CUDA_WGMMA=0), the
// variables set while the backend is made.
inline std::unique_ptr<Backend> cuda_backend(const char* prompts) {
  const std::string mode = prompts;
  const bool tensor = mode.starts_with("tensor");
  ScopedEnv prompt_mode("GLM_CUDA_PROMPTS", tensor ? "tensor" : prompts);
  std::optional<ScopedEnv> instruction, registers;  // else as the environment has them
  if (mode == "tensor-mma") instruction.emplace("GLM_CUDA_WGMMA", "0");
  if (mode == "tensor-shared") registers.emplace("GLM_CUDA_REGISTER_WEIGHTS", "0");
  return make_backend("cuda");
}
// The tensor-core modes every tensor-core test runs: each kernel.
inline constexpr const char* kTensorModes[] = {"tensor", "tensor-shared", "tensor-mma"};

// The two backends under comparison and helpers moving data into and out of them.
struct Backends {
  explicit Backends(const char* prompts = "simt") : gpu(cuda_backend(prompts)) {}
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu;
};

struct Both {
  Tensor cpu, gpu;
};

inline void to_device(void* device, const void* host, size_t bytes) {
  ASSERT_EQ(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
}

inline Both input(Backends& b, const Shape& shape, const std::vector<float>& values) {
  Both out{b.cpu->scratch(shape), b.gpu->scratch(shape)};
  std::memcpy(out.cpu.data, values.data(), values.size() * sizeof(float));
  to_device(out.gpu.data, values.data(), values.size() * sizeof(float));
  return out;
}

inline Both output(Backends& b, const Shape& shape, DType dtype = DType::F32) {
  return {b.cpu->scratch(shape, dtype), b.gpu->scratch(shape, dtype)};
}

inline std::vector<float> read(Backend& backend, const Tensor& tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.numel()));
  backend.copy_to_host(values, tensor);
  return values;
}

inline std::vector<int32_t> read_i32(const Tensor& device_tensor) {
  std::vector<int32_t> values(static_cast<size_t>(device_tensor.numel()));
  EXPECT_EQ(cudaMemcpy(values.data(), device_tensor.data, values.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return values;
}

// Compares the f32 results of both backends, reports and returns the error.
inline double compare(Backends& b, const Both& result, const std::string& what) {
  const double error = relative_error(read(*b.gpu, result.gpu), read(*b.cpu, result.cpu));
  report(what, error);
  return error;
}

// Expert tables of one MoE layer: gate, up, down.
struct ExpertTables {
  ExpertTable gate, up, down;
};

// n_experts experts of one MoE layer ([width, hidden] gate and up, [hidden,
// width] down), each weight made by make(rows, cols) (a unique_ptr to a
// struct with .host and .device weights) and kept alive in `storage`.
template <typename Storage, typename Make>
void make_experts(std::vector<Storage>& storage, ExpertTables& host, ExpertTables& device, int64_t n_experts,
                  int64_t width, int64_t hidden, Make&& make) {
  for (int64_t e = 0; e < n_experts; ++e)
    for (auto [table, rows, cols] : {std::tuple{&ExpertTables::gate, width, hidden},
                                     std::tuple{&ExpertTables::up, width, hidden},
                                     std::tuple{&ExpertTables::down, hidden, width}}) {
      storage.push_back(make(rows, cols));
      (host.*table).experts.push_back(storage.back()->host);
      (device.*table).experts.push_back(storage.back()->device);
    }
}

// The [begin, end) slice of an expert table (an expert-parallel rank's share).
inline ExpertTable expert_shard(const ExpertTable& table, int64_t begin, int64_t end) {
  ExpertTable part;
  part.first_expert = begin;
  part.experts.assign(table.experts.begin() + begin, table.experts.begin() + end);
  return part;
}

// moe_experts on both backends for n tokens routed with a skewed, ragged
// load (expert 3 takes three tokens in four, the last 6 experts none), then
// again with only experts [4, 12) held (expert parallelism). An approximate
// path (int8 activations, tensor cores) must also err above `floor`.
inline void check_moe_experts(Backends& b, const ExpertTables& host, const ExpertTables& device, int64_t n,
                              int64_t top_k, const std::string& label, double tolerance = 1e-5,
                              const SharedExpert* host_shared = nullptr, const SharedExpert* device_shared = nullptr,
                              double floor = 0.0) {
  const int64_t n_experts = static_cast<int64_t>(host.gate.experts.size());
  const int64_t hidden = host.gate.experts[0].dim(1);
  const unsigned seed = 90 + static_cast<unsigned>(n);
  std::mt19937 generator(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n * top_k), 0);
  const std::vector<float> mix = random_values(ids.size(), seed + 1, 0.5f);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int32_t> experts(static_cast<size_t>(n_experts - 6));
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), generator);
    if (t % 4 != 3) std::iter_swap(experts.begin(), std::find(experts.begin(), experts.end(), 3));
    for (int64_t k = 0; k < top_k; ++k) ids[t * top_k + k] = experts[k];
  }
  Routing cpu_routing{b.cpu->scratch({n, top_k}, DType::I32), b.cpu->scratch({n, top_k})};
  Routing gpu_routing{b.gpu->scratch({n, top_k}, DType::I32), b.gpu->scratch({n, top_k})};
  std::memcpy(cpu_routing.expert_ids.data, ids.data(), ids.size() * sizeof(int32_t));
  std::memcpy(cpu_routing.weights.data, mix.data(), mix.size() * sizeof(float));
  to_device(gpu_routing.expert_ids.data, ids.data(), ids.size() * sizeof(int32_t));
  to_device(gpu_routing.weights.data, mix.data(), mix.size() * sizeof(float));
  Both x = input(b, {n, hidden}, random_values(static_cast<size_t>(n * hidden), 95));
  Both out = output(b, {n, hidden});
  b.cpu->moe_experts(out.cpu, x.cpu, cpu_routing, host.gate, host.up, host.down);
  b.gpu->moe_experts(out.gpu, x.gpu, gpu_routing, device.gate, device.up, device.down);
  const std::string what = label + " n=" + std::to_string(n);
  const double error = compare(b, out, what);
  EXPECT_LT(error, tolerance);
  EXPECT_GT(error, floor) << what << ": at f32 rounding, so the approximate path did not run";
  if (host_shared) {  // the fused op against the CPU's plain ops (its default)
    b.cpu->moe_experts_and_shared(out.cpu, x.cpu, cpu_routing, host.gate, host.up, host.down, *host_shared);
    b.gpu->moe_experts_and_shared(out.gpu, x.gpu, gpu_routing, device.gate, device.up, device.down, *device_shared);
    EXPECT_LT(compare(b, out, what + " + shared expert"), tolerance);
  }
  b.cpu->moe_experts(out.cpu, x.cpu, cpu_routing, expert_shard(host.gate, 4, 12), expert_shard(host.up, 4, 12),
                     expert_shard(host.down, 4, 12));
  b.gpu->moe_experts(out.gpu, x.gpu, gpu_routing, expert_shard(device.gate, 4, 12), expert_shard(device.up, 4, 12),
                     expert_shard(device.down, 4, 12));
  const double shard_error = compare(b, out, what + " experts [4, 12)");
  EXPECT_LT(shard_error, tolerance);
  EXPECT_GT(shard_error, floor) << what << " experts [4, 12): the approximate path did not run";
  // A shard none of whose experts is chosen (the ids come from 0..n_experts - 7): the sum is 0.
  b.gpu->moe_experts(out.gpu, x.gpu, gpu_routing, expert_shard(device.gate, n_experts - 6, n_experts),
                     expert_shard(device.up, n_experts - 6, n_experts),
                     expert_shard(device.down, n_experts - 6, n_experts));
  const std::vector<float> unchosen = read(*b.gpu, out.gpu);
  EXPECT_EQ(unchosen, std::vector<float>(unchosen.size(), 0.0f)) << what << ": a shard with no chosen expert";
}

}  // namespace glm::cuda_parity
