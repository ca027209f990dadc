// Quantizing activation rows to int8 per 32 values, for the dp4a GEMV and
// expert kernels on 4- and 8-bit affine weights (weight_formats.cuh,
// block_row_dots_int8): x ~ scale * q with scale = max |x| / 127 over the 32
// values, q = round(x / scale). The exact f32 sum of the 32 values is kept
// too (an affine weight's bias multiplies it), and what quantizing lost of
// it: the kernels centre the weights' integers (see block_row_dots_int8).
// For FP8 weights the fast mode scales each 32 values into [-1, 1] and keeps
// them as f16 instead (block_row_dots_half).
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kGroupsPerBlock = 8;  // a warp per 32 values

// This warp's group of 32 values and this lane's value of it, with the
// group's largest magnitude; false (the whole warp) past the last group.
__device__ __forceinline__ bool group_value(const float* __restrict__ x, int64_t groups, int64_t& group, float& value,
                                            float& largest) {
  group = blockIdx.x * static_cast<int64_t>(kGroupsPerBlock) + threadIdx.x / 32;
  if (group >= groups) return false;
  value = x[group * 32 + threadIdx.x % 32];
  largest = warp_max(fabsf(value));
  return true;
}

__global__ void __launch_bounds__(kGroupsPerBlock * 32)
    quantize_activations_kernel(int8_t* __restrict__ values, float* __restrict__ scales, float* __restrict__ sums,
                                float* __restrict__ rounding, const float* __restrict__ x, int64_t groups) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  int64_t group;
  float value, largest;
  if (!group_value(x, groups, group, value, largest)) return;
  const int lane = threadIdx.x % 32;
  const float sum = warp_sum(value);
  const float scale = largest / 127.0f;
  const float inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
  const int q = max(-127, min(127, __float2int_rn(value * inverse)));
  values[group * 32 + lane] = static_cast<int8_t>(q);
  const float q_sum = warp_sum(static_cast<float>(q));  // exact: |sum| <= 32 * 127
  if (lane == 0) {
    scales[group] = scale;
    sums[group] = sum;
    rounding[group] = sum - scale * q_sum;
  }
}

// A warp per 32 values: divided by their largest magnitude, rounded to f16.
__global__ void __launch_bounds__(kGroupsPerBlock * 32)
    scale_to_half_kernel(__half* __restrict__ values, float* __restrict__ scales, const float* __restrict__ x,
                         int64_t groups) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  int64_t group;
  float value, largest;
  if (!group_value(x, groups, group, value, largest)) return;
  const int lane = threadIdx.x % 32;
  const float scale = largest > 0.0f ? largest : 1.0f;
  values[group * 32 + lane] = __float2half_rn(value / scale);
  if (lane == 0) scales[group] = scale;
}

}  // namespace

HalfActivations scale_activations_to_half(Context& ctx, const float* x, int64_t n, int64_t cols) {
  GLM_CHECK(cols % 32 == 0, "internal error: f16 activations need rows of a multiple of 32 values, not ", cols);
  const int64_t groups = n * cols / 32;
  __half* values = ctx.scratch<__half>(n * cols);
  float* scales = ctx.scratch<float>(groups);
  if (groups > 0)
    launch(ctx, scale_to_half_kernel, dim3(blocks_for(groups, kGroupsPerBlock)), dim3(kGroupsPerBlock * 32), 0,
           values, scales, x, groups);
  return HalfActivations{values, scales, cols};
}

Int8Activations quantize_activations(Context& ctx, const float* x, int64_t n, int64_t cols) {
  GLM_CHECK(cols % 32 == 0, "internal error: int8 activations need rows of a multiple of 32 values, not ", cols);
  const int64_t groups = n * cols / 32;
  Int8Activations out;
  int8_t* values = ctx.scratch<int8_t>(n * cols);
  float* scales = ctx.scratch<float>(groups);
  float* sums = ctx.scratch<float>(groups);
  float* rounding = ctx.scratch<float>(groups);
  out.values = values;
  out.scales = scales;
  out.sums = sums;
  out.rounding = rounding;
  out.cols = cols;
  if (groups > 0)
    launch(ctx, quantize_activations_kernel, dim3(blocks_for(groups, kGroupsPerBlock)), dim3(kGroupsPerBlock * 32), 0,
           values, scales, sums, rounding, x, groups);
  return out;
}

}  // namespace glm::cuda
