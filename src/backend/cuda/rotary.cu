// Rotary position embedding on the GPU, in place: half-split pairs (dim i
// with i + rotary_dim/2) of the first rotary_dim dims of every head. The
// inverse frequencies come from the host (computed as the CPU reference does)
// and the angle is position * frequency in f32, as transformers computes it.
// head_norm_rotary fuses the per-head q/k RMSNorm and both rotations into one
// launch (a decode step would otherwise spend four launches on 8 KB of data).
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
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
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

constexpr int kHeadWarps = 4;  // heads per block in head_norm_rotary_kernel

// A warp per (token, head) of q and k together (blockIdx.y * kHeadWarps + warp
// counts q's heads first, then k's): RMSNorm of the head's vector as
// rms_norm_kernel computes it (same lane-strided sums, so the same bits),
// written back in place, then the rotation of its pairs, read back after the
// warp has written them.
// With kv.keys set, a k head's warp then copies the rotated vector and the
// token's v head to the token's cache slot.
__global__ void __launch_bounds__(kHeadWarps * 32)
    head_norm_rotary_kernel(float* q, float* k, const void* q_gamma, DType q_gamma_dtype, const void* k_gamma,
                            DType k_gamma_dtype, float eps, const int32_t* __restrict__ positions,
                            const float* __restrict__ inverse_frequency, int q_heads, int k_heads, int head_dim,
                            int half, KvWrite kv) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int t = blockIdx.x;
  const int head = blockIdx.y * kHeadWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (head >= q_heads + k_heads) return;
  const bool is_q = head < q_heads;
  float* vector = is_q ? q + (static_cast<int64_t>(t) * q_heads + head) * head_dim
                       : k + (static_cast<int64_t>(t) * k_heads + head - q_heads) * head_dim;
  const void* gamma = is_q ? q_gamma : k_gamma;
  if (gamma) {
    const DType gamma_dtype = is_q ? q_gamma_dtype : k_gamma_dtype;
    float sum_squares = 0.0f;
    for (int i = lane; i < head_dim; i += 32) sum_squares += vector[i] * vector[i];
    sum_squares = warp_sum(sum_squares);
    const float inverse_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(head_dim) + eps);
    for (int i = lane; i < head_dim; i += 32) vector[i] = element_f32(gamma, gamma_dtype, i) * (vector[i] * inverse_rms);
    __syncwarp();
  }
  for (int i = lane; i < half; i += 32) {
    const float angle = static_cast<float>(positions[t]) * inverse_frequency[i];
    const float cosine = cosf(angle), sine = sinf(angle);
    const float first = vector[i], second = vector[i + half];
    vector[i] = first * cosine - second * sine;
    vector[i + half] = second * cosine + first * sine;
  }
  if (kv.keys && !is_q) {
    __syncwarp();
    const int64_t k_head = head - q_heads;
    const int64_t cached = (kv.slots[t] * k_heads + k_head) * head_dim;  // slots range-checked on the host
    const float* value = kv.v + (static_cast<int64_t>(t) * k_heads + k_head) * head_dim;
    for (int i = lane; i < head_dim; i += 32) {
      kv.keys[cached + i] = vector[i];
      kv.values[cached + i] = value[i];
    }
  }
}

}  // namespace

void rotary(Context& ctx, float* x, const int32_t* positions, const float* inverse_frequency, int64_t n, int64_t heads,
            int64_t head_dim, int64_t rotary_dim) {
  const int64_t half = rotary_dim / 2;
  constexpr int kThreads = 128;
  const dim3 grid(static_cast<unsigned>(n), blocks_for(heads * half, kThreads));
  launch(ctx, rotary_kernel, grid, dim3(kThreads), 0, x, positions, inverse_frequency, heads, head_dim, half);
}

void head_norm_rotary(Context& ctx, float* q, float* k, const Matrix& q_gamma, const Matrix& k_gamma, float eps,
                      const int32_t* positions, const float* inverse_frequency, int64_t n, int64_t q_heads,
                      int64_t k_heads, int64_t head_dim, int64_t rotary_dim, const KvWrite& kv) {
  if (n == 0) return;
  const dim3 grid(static_cast<unsigned>(n), blocks_for(q_heads + k_heads, kHeadWarps));
  launch(ctx, head_norm_rotary_kernel, grid, dim3(kHeadWarps * 32), 0, q, k, q_gamma.data, q_gamma.dtype,
         k_gamma.data, k_gamma.dtype, eps, positions, inverse_frequency, static_cast<int>(q_heads),
         static_cast<int>(k_heads), static_cast<int>(head_dim), static_cast<int>(rotary_dim / 2), kv);
}

}  // namespace glm::cuda
