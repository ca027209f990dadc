// Rotary position embedding on the GPU, in place: half-split pairs (dim i
// with i + rotary_dim/2) of the first rotary_dim dims of every head. The
// inverse frequencies come from the host (computed as the CPU reference does)
// and the angle is position * frequency in f32, as transformers computes it.
#include <algorithm>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

// One block per token; threads walk (head, pair) so cos/sin are computed once per pair.
__global__ void rotary_kernel(float* x, const int32_t* __restrict__ positions,
                              const float* __restrict__ inverse_frequency, int64_t heads, int64_t head_dim,
                              int64_t half) {
  const int64_t t = blockIdx.x;
  const float position = static_cast<float>(positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = position * inverse_frequency[i];
    const float cosine = cosf(angle), sine = sinf(angle);
    for (int64_t h = 0; h < heads; ++h) {
      float* head = x + (t * heads + h) * head_dim;
      const float first = head[i], second = head[i + half];
      head[i] = first * cosine - second * sine;
      head[i + half] = second * cosine + first * sine;
    }
  }
}

}  // namespace

void rotary(Context& ctx, float* x, const int32_t* positions, const float* inverse_frequency, int64_t n, int64_t heads,
            int64_t head_dim, int64_t rotary_dim) {
  const int64_t half = rotary_dim / 2;
  const int threads = static_cast<int>(std::min<int64_t>(128, (half + 31) / 32 * 32));
  rotary_kernel<<<static_cast<unsigned>(n), threads, 0, ctx.stream>>>(x, positions, inverse_frequency, heads,
                                                                       head_dim, half);
  CUDA_CHECK_LAUNCH();
}

}  // namespace glm::cuda
