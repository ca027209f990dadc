// Token embedding on the GPU: each block widens one table row to f32.
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

template <typename T>
__global__ void embedding_kernel(float* __restrict__ out, const T* __restrict__ table, const int32_t* __restrict__ ids,
                                 int64_t hidden) {
  const int64_t t = blockIdx.x;
  const T* row = table + static_cast<int64_t>(ids[t]) * hidden;  // ids were range-checked on the host
  float* target = out + t * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) target[i] = to_f32(row[i]);
}

}  // namespace

void embedding(Context& ctx, float* out, const Matrix& table, const int32_t* ids, int64_t n) {
  with_float_type(table.dtype, [&](auto tag) {
    using T = decltype(tag);
    embedding_kernel<T><<<static_cast<unsigned>(n), 256, 0, ctx.stream>>>(out, static_cast<const T*>(table.data), ids,
                                                                          table.cols);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace glm::cuda
