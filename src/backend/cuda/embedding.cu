// Token embedding on the GPU: each block dequantizes one table row to f32
// (a float, affine or FP8 table: quantized embed_tokens are common in mlx
// checkpoints).
#include "backend/cuda/weight_formats.cuh"

namespace glm::cuda {
namespace {

template <typename Format>
__global__ void embedding_kernel(float* __restrict__ out, const Matrix table, const int32_t* __restrict__ ids) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t t = blockIdx.x;
  const int64_t row = ids[t];  // ids were range-checked on the host
  float* target = out + t * table.cols;
  for (int64_t i = threadIdx.x; i < table.cols; i += blockDim.x) target[i] = Format::at(table, row, i);
}

}  // namespace

void embedding(Context& ctx, float* out, const Matrix& table, const int32_t* ids, int64_t n) {
  dispatch_format(table, [&](auto format) {
    launch(ctx, embedding_kernel<decltype(format)>, dim3(static_cast<unsigned>(n)), dim3(256), 0, out, table, ids);
  });
}

}  // namespace glm::cuda
