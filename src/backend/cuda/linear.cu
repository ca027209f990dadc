// Projections on the GPU: out[n, O] = x[n, I] W[O, I]^T (+ bias), f32
// activations, W in its stored float dtype, f32 accumulation.
//   n <= 8 (decoding): a warp per output feature streams its weight row once
//       (16-byte loads where aligned) and dots it with every token's row.
//   more tokens, f32 W: cuBLAS SGEMM (pedantic math: no TF32), then the bias.
//   more tokens, 16-bit W: a tiled SIMT GEMM that widens W tiles to f32 in
//       shared memory, so activations keep full f32 precision (a bf16 tensor-
//       core path comes with the bf16 activation mode).
#include <algorithm>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kGemvWarps = 8;   // output features per 256-thread block
constexpr int kMaxGemvTokens = 8;

template <typename T, int NT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(float* __restrict__ out, const float* __restrict__ x, const T* __restrict__ weight, const void* bias,
                DType bias_dtype, int64_t out_features, int64_t in_features, bool vectorized) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(kGemvWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (o >= out_features) return;
  const T* row = weight + o * in_features;
  float sums[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) sums[t] = 0.0f;
  if (vectorized) {  // in_features % 8 == 0 and 16-byte aligned rows: 8 elements per lane per step
    for (int64_t i = lane * 8; i < in_features; i += 32 * 8) {
      float w[8];
      load8(row + i, w);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float v[8];
        load8(x + t * in_features + i, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) sums[t] += w[j] * v[j];
      }
    }
  } else {
    for (int64_t i = lane; i < in_features; i += 32) {
      const float w = to_f32(row[i]);
#pragma unroll
      for (int t = 0; t < NT; ++t) sums[t] += w * x[t * in_features + i];
    }
  }
  const float bias_value = bias ? element_f32(bias, bias_dtype, o) : 0.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float total = warp_sum(sums[t]);
    if (lane == 0) out[t * out_features + o] = total + bias_value;
  }
}

template <typename T, int NT>
void launch_gemv(Context& ctx, float* out, const float* x, const Matrix& weight, const Matrix* bias) {
  const bool vectorized = weight.cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(weight.data) % 16 == 0;
  gemv_kernel<T, NT><<<blocks_for(weight.rows, kGemvWarps), kGemvWarps * 32, 0, ctx.stream>>>(
      out, x, static_cast<const T*>(weight.data), bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32,
      weight.rows, weight.cols, vectorized);
}

template <typename T>
void gemv(Context& ctx, float* out, const float* x, int64_t n, const Matrix& weight, const Matrix* bias) {
  switch (n) {
    case 1: launch_gemv<T, 1>(ctx, out, x, weight, bias); break;
    case 2: launch_gemv<T, 2>(ctx, out, x, weight, bias); break;
    case 3: launch_gemv<T, 3>(ctx, out, x, weight, bias); break;
    case 4: launch_gemv<T, 4>(ctx, out, x, weight, bias); break;
    case 5: launch_gemv<T, 5>(ctx, out, x, weight, bias); break;
    case 6: launch_gemv<T, 6>(ctx, out, x, weight, bias); break;
    case 7: launch_gemv<T, 7>(ctx, out, x, weight, bias); break;
    default: launch_gemv<T, 8>(ctx, out, x, weight, bias); break;
  }
}

// 64 tokens x 64 features per 256-thread block, 16-deep k slices; each thread
// owns a 4 x 4 sub-tile strided by 16 so that its output stores coalesce.
constexpr int kTile = 64, kDepth = 16;

template <typename T>
__global__ void __launch_bounds__(256)
    gemm_kernel(float* __restrict__ out, const float* __restrict__ x, const T* __restrict__ weight, const void* bias,
                DType bias_dtype, int64_t n, int64_t out_features, int64_t in_features) {
  __shared__ float xs[kDepth][kTile + 4];  // [k][token]; +4 staggers the banks of the transposed stores
  __shared__ float ws[kDepth][kTile + 4];  // [k][feature]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t token0 = blockIdx.y * static_cast<int64_t>(kTile), feature0 = blockIdx.x * static_cast<int64_t>(kTile);
  const int load_row = tid / 4, load_k = (tid % 4) * 4;  // each thread loads 4 consecutive k of one row
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < in_features; k0 += kDepth) {
    const int64_t token = token0 + load_row, feature = feature0 + load_row;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t k = k0 + load_k + q;
      const bool in_k = k < in_features;
      xs[load_k + q][load_row] = in_k && token < n ? x[token * in_features + k] : 0.0f;
      ws[load_k + q][load_row] = in_k && feature < out_features ? to_f32(weight[feature * in_features + k]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t token = token0 + ty + 16 * i;
    if (token >= n) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t feature = feature0 + tx + 16 * j;
      if (feature < out_features)
        out[token * out_features + feature] = acc[i][j] + (bias ? element_f32(bias, bias_dtype, feature) : 0.0f);
    }
  }
}

__global__ void add_bias_kernel(float* out, const void* bias, DType bias_dtype, int64_t n, int64_t out_features) {
  const int64_t count = n * out_features;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] += element_f32(bias, bias_dtype, i % out_features);
}

}  // namespace

void linear(Context& ctx, float* out, const float* x, int64_t n, const Matrix& weight, const Matrix* bias) {
  if (n == 0 || weight.rows == 0) return;
  if (weight.cols == 0) {  // an empty dot product: the bias alone
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float) * n * weight.rows, ctx.stream));
  } else if (n <= kMaxGemvTokens) {
    with_float_type(weight.dtype, [&](auto tag) { gemv<decltype(tag)>(ctx, out, x, n, weight, bias); });
    CUDA_CHECK_LAUNCH();
    return;
  } else if (weight.dtype == DType::F32) {
    // Row-major out[n, O] is column-major out^T [O, n] = W (col-major [I, O], transposed) * x^T (col-major [I, n]).
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(weight.rows), static_cast<int>(n),
                             static_cast<int>(weight.cols), &one, static_cast<const float*>(weight.data),
                             static_cast<int>(weight.cols), x, static_cast<int>(weight.cols), &zero, out,
                             static_cast<int>(weight.rows)));
  } else {
    const dim3 grid(blocks_for(weight.rows, kTile), blocks_for(n, kTile));
    with_float_type(weight.dtype, [&](auto tag) {
      using T = decltype(tag);
      gemm_kernel<T><<<grid, 256, 0, ctx.stream>>>(out, x, static_cast<const T*>(weight.data),
                                                    bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, n,
                                                    weight.rows, weight.cols);
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (bias) {
    const int64_t count = n * weight.rows;
    add_bias_kernel<<<static_cast<unsigned>(std::min<int64_t>(blocks_for(count, 256), 65536)), 256, 0, ctx.stream>>>(
        out, bias->data, bias->dtype, n, weight.rows);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace glm::cuda
