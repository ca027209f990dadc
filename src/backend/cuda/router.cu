// The sigmoid, group-limited, bias-corrected router ("noaux_tc") on the GPU:
// one warp per token, its scores in shared memory. The steps and their
// tie-breaking follow the CPU reference (backend/cpu/moe.cpp) exactly:
//   scores = sigmoid(logits); choice = scores + bias
//   group score = sum of the group's two best choices; groups ranked by score,
//   ties to the lower group; all but the best topk_group groups get -inf
//   top_k experts by choice, ties to the lower expert id, best first
//   weights = unbiased scores (normalised with +1e-20 if asked) * scaling
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

// Is candidate (value a, index ia) ahead of (b, ib)? ib < 0 means "none yet".
__device__ __forceinline__ bool ahead(float a, int ia, float b, int ib) {
  return ib < 0 || a > b || (a == b && ia < ib);
}

// The warp's best (value, index) by ahead(), left in every lane.
__device__ __forceinline__ void warp_best(float& best, int& best_index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
    if (other_index >= 0 && ahead(other, other_index, best, best_index)) {
      best = other;
      best_index = other_index;
    }
  }
}

__global__ void route_kernel(int32_t* __restrict__ expert_ids, float* __restrict__ weights,
                             const float* __restrict__ logits, const void* bias, DType bias_dtype, int n_experts,
                             int n_group, int topk_group, int top_k, bool norm_topk_prob, float scaling) {
  extern __shared__ float shared[];
  float* scores = shared;                    // [n_experts]
  float* choice = scores + n_experts;        // [n_experts]
  float* group_scores = choice + n_experts;  // [n_group]
  int* chosen = reinterpret_cast<int*>(group_scores + n_group);  // [top_k]
  // The next kernel may be scheduled now, while the router GEMV before this
  // one still runs: at one token that is the experts' gate/up kernel, whose
  // shared expert blocks need only the router's input (moe.cu); every other
  // block of any successor waits for this kernel first.
  start_dependents();
  const int t = blockIdx.x, lane = threadIdx.x;
  const float* row = logits + static_cast<int64_t>(t) * n_experts;

  auto score_expert = [&](int e, float logit, float bias_value) {
    const float score = 1.0f / (1.0f + expf(-logit));
    scores[e] = score;
    choice[e] = score + bias_value;
  };
  // Up to 256 experts: the bias (a weight: before waiting for the logits'
  // kernel) and the logits each in one round of loads, not one per 32 experts.
  constexpr int kUnrolled = 8;
  if (n_experts <= 32 * kUnrolled) {
    float bias_of[kUnrolled], logit[kUnrolled];
#pragma unroll
    for (int j = 0; j < kUnrolled; ++j) {
      const int e = lane + 32 * j;
      bias_of[j] = e < n_experts ? element_f32(bias, bias_dtype, e) : 0.0f;
    }
    wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
#pragma unroll
    for (int j = 0; j < kUnrolled; ++j) {
      const int e = lane + 32 * j;
      logit[j] = e < n_experts ? row[e] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kUnrolled; ++j) {
      const int e = lane + 32 * j;
      if (e >= n_experts) break;
      score_expert(e, logit[j], bias_of[j]);
    }
  } else {
    wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
    for (int e = lane; e < n_experts; e += 32) score_expert(e, row[e], element_f32(bias, bias_dtype, e));
  }
  __syncwarp();

  if (n_group > 1) {
    const int group_size = n_experts / n_group;
    for (int g = lane; g < n_group; g += 32) {
      float best = -INFINITY, second = -INFINITY;
      for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
        const float c = choice[e];
        if (c > best) {
          second = best;
          best = c;
        } else if (c > second) {
          second = c;
        }
      }
      group_scores[g] = group_size >= 2 ? 0.0f + best + second : 0.0f + best;
    }
    __syncwarp();
    for (int g = lane; g < n_group; g += 32) {
      int rank = 0;  // groups ahead of g in a stable descending sort
      for (int other = 0; other < n_group; ++other)
        rank += group_scores[other] > group_scores[g] || (group_scores[other] == group_scores[g] && other < g);
      if (rank >= topk_group)
        for (int e = g * group_size; e < (g + 1) * group_size; ++e) choice[e] = -INFINITY;
    }
    __syncwarp();
  }

  // Top-k: each lane keeps its experts' choices in registers (up to 32 *
  // kPerLane experts) and a mask of those still available, so a round is a
  // scan of a few registers and one warp reduction. (Scanning shared memory
  // against the chosen list, round after round, made this kernel ~15 us.)
  constexpr int kPerLane = 8;
  if (n_experts <= 32 * kPerLane) {
    float mine[kPerLane];
    uint32_t available = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      mine[j] = e < n_experts ? choice[e] : 0.0f;
      if (e < n_experts) available |= 1u << j;
    }
    for (int k = 0; k < top_k; ++k) {
      float best = 0.0f;
      int best_index = -1;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j)
        if ((available >> j & 1u) && ahead(mine[j], lane + 32 * j, best, best_index)) {
          best = mine[j];
          best_index = lane + 32 * j;
        }
      warp_best(best, best_index);
      if (best_index % 32 == lane) available &= ~(1u << (best_index / 32));
      if (lane == 0) chosen[k] = best_index;
    }
    __syncwarp();
  } else {
    for (int k = 0; k < top_k; ++k) {
      float best = 0.0f;
      int best_index = -1;
      for (int e = lane; e < n_experts; e += 32) {
        bool taken = false;
        for (int i = 0; i < k; ++i) taken |= chosen[i] == e;
        if (!taken && ahead(choice[e], e, best, best_index)) {
          best = choice[e];
          best_index = e;
        }
      }
      warp_best(best, best_index);
      if (lane == 0) chosen[k] = best_index;
      __syncwarp();
    }
  }

  if (lane == 0) {  // sequential, in the CPU's order, so the sums round alike
    int32_t* ids = expert_ids + static_cast<int64_t>(t) * top_k;
    float* mix = weights + static_cast<int64_t>(t) * top_k;
    float total = 0.0f;
    for (int k = 0; k < top_k; ++k) {
      ids[k] = chosen[k];
      mix[k] = scores[chosen[k]];
      total += mix[k];
    }
    for (int k = 0; k < top_k; ++k) {
      if (norm_topk_prob) mix[k] /= (total + 1e-20f);
      mix[k] *= scaling;
    }
  }
}

}  // namespace

void route(Context& ctx, int32_t* expert_ids, float* weights, const float* logits, const Matrix& correction_bias,
           int64_t n, int64_t n_experts, const RouterParams& params) {
  const size_t shared = sizeof(float) * static_cast<size_t>(2 * n_experts + params.n_group) +
                        sizeof(int) * static_cast<size_t>(params.top_k);
  GLM_CHECK(shared <= 48 * 1024, "router over ", n_experts, " experts is too large for the CUDA router kernel");
  // Whether the op just before is a GEMV (the router's): its input was then
  // complete before this kernel could start (Context::shared_early).
  const float* gemv_input = ctx.last_gemv_op == ctx.submitted_ops ? ctx.last_gemv_input : nullptr;
  launch(ctx, route_kernel, dim3(static_cast<unsigned>(n)), dim3(32), shared, expert_ids, weights, logits,
         correction_bias.data, correction_bias.dtype, static_cast<int>(n_experts), static_cast<int>(params.n_group),
         static_cast<int>(params.topk_group), static_cast<int>(params.top_k), params.norm_topk_prob,
         params.routed_scaling_factor);
  ctx.last_route_op = ctx.submitted_ops;
  ctx.route_gemv_input = gemv_input;
}

}  // namespace glm::cuda
