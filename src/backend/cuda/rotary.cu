// Rotary position embedding on the GPU, in place: half-split pairs (dim i
// with i + rotary_dim/2) of the first rotary_dim dims of every head. The
// inverse frequencies come from the host (computed as the CPU reference does)
// and the angle is position * frequency in f32, as transformers computes it.
#include <algorithm>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

// A thread per (token, head, pair): blockIdx.x is the token, blockIdx.y a
// slice of the heads. (A thread walking all 96 heads of a token one after
// another was latency-bound: 15 us a call.)
__global__ void rotary_kernel(float* x, const int32_t* __restrict__ positions,
                              const float* __restrict__ inverse_frequency, int64_t heads, int64_t head_dim,
                              int64_t half) {
  const int64_t t = blockIdx.x;
  const int64_t item = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // head * half + pair
  if (item >= heads * half) return;
  const int64_t h = item / half, i = item % half;
  const float angle = static_cast<float>(positions[t]) * inverse_frequency[i];
  const float cosine = cosf(angle), sine = sinf(angle);
  float* head = x + (t * heads + h) * head_dim;
  const float first = head[i], second = head[i + half];
  head[i] = first * cosine - second * sine;
  head[i + half] = second * cosine + first * sine;
}

}  // namespace

void rotary(Context& ctx, float* x, const int32_t* positions, const float* inverse_frequency, int64_t n, int64_t heads,
            int64_t head_dim, int64_t rotary_dim) {
  const int64_t half = rotary_dim / 2;
  constexpr int kThreads = 128;
  const dim3 grid(static_cast<unsigned>(n), blocks_for(heads * half, kThreads));
  rotary_kernel<<<grid, kThreads, 0, ctx.stream>>>(x, positions, inverse_frequency, heads, head_dim, half);
  CUDA_CHECK_LAUNCH();
}

}  // namespace glm::cuda
