// The routed expert MLPs on the GPU. This first version reads the routing
// back to the host (one synchronisation per MoE layer) to group tokens by
// expert, then runs each used expert over its tokens with the linear, SwiGLU
// and gather kernels and adds its weighted output into the result. Experts
// are visited in ascending id so every token sums its experts in the same
// order as the CPU reference, whatever else is in the batch. A grouped GEMM
// driven by device-side counts (no host round trip) is later work.
#include <algorithm>
#include <vector>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

// out[tokens[i]] += mix[i] * expert_out[i]. A token appears at most once per
// expert, and experts run one after another, so there are no write races.
__global__ void scatter_add_kernel(float* __restrict__ out, const float* __restrict__ expert_out,
                                   const int32_t* __restrict__ tokens, const float* __restrict__ mix, int64_t hidden) {
  const int64_t i = blockIdx.x;
  float* target = out + static_cast<int64_t>(tokens[i]) * hidden;
  const float* source = expert_out + i * hidden;
  const float weight = mix[i];
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) target[d] += weight * source[d];
}

}  // namespace

void moe_experts(Context& ctx, int device_index, float* out, const float* x, int64_t n, int64_t hidden,
                 const Routing& routing, const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float) * static_cast<size_t>(n * hidden), ctx.stream));
  if (n == 0) return;
  const int64_t top_k = routing.expert_ids.dim(1);
  std::vector<int32_t> ids(static_cast<size_t>(n * top_k));
  std::vector<float> mix(static_cast<size_t>(n * top_k));
  ctx.download_bytes(ids.data(), routing.expert_ids.i32(), ids.size() * sizeof(int32_t));
  ctx.download_bytes(mix.data(), routing.weights.f32(), mix.size() * sizeof(float));

  // Counting sort of the (token, weight) assignments by held expert.
  const int64_t first = gate.first_expert, held = static_cast<int64_t>(gate.experts.size());
  std::vector<int32_t> offsets(static_cast<size_t>(held + 1), 0);
  for (int32_t expert : ids)
    if (gate.holds(expert)) ++offsets[expert - first + 1];
  for (int64_t e = 0; e < held; ++e) offsets[e + 1] += offsets[e];
  const int64_t assigned = offsets[held];
  if (assigned == 0) return;
  std::vector<int32_t> tokens(static_cast<size_t>(assigned));
  std::vector<float> token_mix(static_cast<size_t>(assigned));
  std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t t = 0; t < n; ++t)  // ascending tokens within each expert
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t expert = ids[t * top_k + k];
      if (!gate.holds(expert)) continue;
      const int32_t at = fill[expert - first]++;
      tokens[at] = static_cast<int32_t>(t);
      token_mix[at] = mix[t * top_k + k];
    }
  const int32_t* device_tokens = ctx.upload(std::span<const int32_t>(tokens));
  const float* device_mix = ctx.upload(std::span<const float>(token_mix));

  int64_t max_tokens = 0, max_width = 0;
  for (int64_t e = 0; e < held; ++e) {
    const int64_t m = offsets[e + 1] - offsets[e];
    if (m == 0) continue;
    max_tokens = std::max(max_tokens, m);
    max_width = std::max(max_width, gate.experts[e].dim(0));
  }
  float* inputs = ctx.scratch<float>(max_tokens * hidden);          // [m, hidden]
  float* gate_out = ctx.scratch<float>(max_tokens * max_width);     // [m, width]
  float* up_out = ctx.scratch<float>(max_tokens * max_width);       // [m, width]
  float* expert_out = ctx.scratch<float>(max_tokens * hidden);      // [m, hidden]

  for (int64_t e = 0; e < held; ++e) {
    const int64_t begin = offsets[e], m = offsets[e + 1] - begin;
    if (m == 0) continue;
    const int64_t expert = first + e;
    const Matrix gate_w = matrix_of(gate.at(expert), device_index);
    const Matrix up_w = matrix_of(up.at(expert), device_index);
    const Matrix down_w = matrix_of(down.at(expert), device_index);
    GLM_CHECK(gate_w.cols == hidden && up_w.rows == gate_w.rows && up_w.cols == hidden && down_w.rows == hidden &&
                  down_w.cols == gate_w.rows,
              "internal error: expert ", expert, " shapes");
    const int64_t width = gate_w.rows;
    gather_rows(ctx, inputs, x, device_tokens + begin, m, hidden);
    linear(ctx, gate_out, inputs, m, gate_w, nullptr);
    linear(ctx, up_out, inputs, m, up_w, nullptr);
    swiglu(ctx, gate_out, gate_out, up_out, m * width);
    linear(ctx, expert_out, gate_out, m, down_w, nullptr);
    scatter_add_kernel<<<static_cast<unsigned>(m), 256, 0, ctx.stream>>>(out, expert_out, device_tokens + begin,
                                                                         device_mix + begin, hidden);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace glm::cuda
