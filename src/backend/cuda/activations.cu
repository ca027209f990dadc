// Quantizing activation rows to int8 per 32 values, for the dp4a GEMV and
// expert kernels on 4- and 8-bit affine weights (weight_formats.cuh,
// block_row_dots_int8): x ~ scale * q with scale = max |x| / 127 over the 32
// values, q = round(x / scale). The exact f32 sum of the 32 values is kept
// too (an affine weight's bias multiplies it), and what quantizing lost of
// it: the kernels centre the weights' integers (see block_row_dots_int8).
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kGroupsPerBlock = 8;  // a warp per 32 values

__global__ void __launch_bounds__(kGroupsPerBlock * 32)
    quantize_activations_kernel(int8_t* __restrict__ values, float* __restrict__ scales, float* __restrict__ sums,
                                float* __restrict__ rounding, const float* __restrict__ x, int64_t groups) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t group = blockIdx.x * static_cast<int64_t>(kGroupsPerBlock) + threadIdx.x / 32;
  if (group >= groups) return;
  const int lane = threadIdx.x % 32;
  const float value = x[group * 32 + lane];
  const float largest = warp_max(fabsf(value));
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

}  // namespace

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
