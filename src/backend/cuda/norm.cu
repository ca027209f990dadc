// RMSNorm on the GPU: one warp per row (rows are hidden_size wide for the
// layer norms and head_dim wide for the per-head q/k norms, so a warp keeps
// both cases busy without block-wide reductions). Arithmetic as the CPU
// reference: x * (1 / sqrt(mean(x^2) + eps)), then times gamma.
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void rms_norm_kernel(float* out, const float* x, const void* gamma, DType gamma_dtype, int64_t rows,
                                int64_t dim, float eps) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* input = x + row * dim;
  float sum_squares = 0.0f;
  for (int64_t i = lane; i < dim; i += 32) sum_squares += input[i] * input[i];
  sum_squares = warp_sum(sum_squares);
  const float inverse_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
  // out may alias x: every lane rereads only the elements it writes itself.
  float* output = out + row * dim;
  for (int64_t i = lane; i < dim; i += 32) output[i] = element_f32(gamma, gamma_dtype, i) * (input[i] * inverse_rms);
}

}  // namespace

void rms_norm(Context& ctx, float* out, const float* x, const Matrix& gamma, int64_t rows, int64_t dim, float eps) {
  if (rows == 0) return;
  rms_norm_kernel<<<blocks_for(rows, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream>>>(
      out, x, gamma.data, gamma.dtype, rows, dim, eps);
  CUDA_CHECK_LAUNCH();
}

}  // namespace glm::cuda
