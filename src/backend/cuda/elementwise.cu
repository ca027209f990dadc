// Elementwise ops on f32 activations: add, SwiGLU and row gathering. The
// arithmetic is written as the CPU reference writes it (silu as g / (1 + e^-g)).
#include <algorithm>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t count) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  // out may alias a or b: each element is read before it is written, by one thread.
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t count) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void gather_rows_kernel(float* __restrict__ out, const float* __restrict__ source,
                                   const int32_t* __restrict__ rows, int64_t width) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t r = blockIdx.x;
  const float* from = source + static_cast<int64_t>(rows[r]) * width;
  float* to = out + r * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) to[i] = from[i];
}

// Grid-stride loops: enough blocks to fill the GPU, not one per element.
unsigned grid_for(int64_t count) { return static_cast<unsigned>(std::min<int64_t>(blocks_for(count, kThreads), 65536)); }

}  // namespace

void add(Context& ctx, float* out, const float* a, const float* b, int64_t count) {
  if (count == 0) return;
  launch(ctx, add_kernel, dim3(grid_for(count)), dim3(kThreads), 0, out, a, b, count);
}

void swiglu(Context& ctx, float* out, const float* gate, const float* up, int64_t count) {
  if (count == 0) return;
  launch(ctx, swiglu_kernel, dim3(grid_for(count)), dim3(kThreads), 0, out, gate, up, count);
}

void gather_rows(Context& ctx, float* out, const float* source, const int32_t* rows, int64_t m, int64_t width) {
  if (m == 0) return;
  launch(ctx, gather_rows_kernel, dim3(static_cast<unsigned>(m)), dim3(kThreads), 0, out, source, rows, width);
}

}  // namespace glm::cuda
