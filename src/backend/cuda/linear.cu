// Projections on the GPU: out[n, O] = x[n, I] W[O, I]^T (+ bias), f32
// activations, W in any stored format (float, mlx affine, FP8), dequantized
// in registers (weight_formats.cuh), f32 accumulation.
//   n <= 8 (decoding): a block per few output features streams their rows
//       once, its threads splitting the columns, and dots them with every
//       token's row (block_row_dots); a warp per output feature for formats
//       without 8-value pieces (3/5/6/7-bit affine) and odd shapes.
//   more tokens: tensor cores with bf16 operands (gemm_tensor.cu) where the
//       format has 8-value pieces and the depth is a multiple of 32, unless
//       GLM_CUDA_PROMPTS=simt; otherwise
//   more tokens, f32 W: cuBLAS SGEMM (pedantic math: no TF32), then the bias;
//   more tokens, other formats: a tiled SIMT GEMM that dequantizes W tiles to
//       f32 in shared memory, so activations keep full f32 precision.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/weight_formats.cuh"

namespace glm::cuda {
namespace {

constexpr int kGemvWarps = 8;   // output features per 256-thread block
constexpr int kMaxGemvTokens = 8;

// A warp per output feature: the weight row is read once for all n <= NT tokens.
template <typename Format, int NT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(float* __restrict__ out, const float* __restrict__ x, const Matrix weight, const void* bias,
                DType bias_dtype, int n, bool vectorized) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t o = blockIdx.x * static_cast<int64_t>(kGemvWarps) + threadIdx.x / 32;
  if (o >= weight.rows) return;
  const float* rows[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) rows[t] = x + (t < n ? t : 0) * weight.cols;
  float sums[NT];
  warp_row_dots<Format, NT>(weight, o, rows, n, vectorized, sums);
  const float bias_value = bias ? element_f32(bias, bias_dtype, o) : 0.0f;
  if (threadIdx.x % 32 == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (t < n) out[t * weight.rows + o] = sums[t] + bias_value;
  }
}

// Up to three projections of one input in one launch (q, k and v): each owns
// a range of the grid's blocks.
constexpr int kMaxTargets = 3;
struct GemvTargets {
  Matrix weights[kMaxTargets];
  float* outs[kMaxTargets];
  const void* biases[kMaxTargets];
  DType bias_dtypes[kMaxTargets];
  unsigned first_block[kMaxTargets + 1];  // target i owns blocks [first_block[i], first_block[i + 1])
  int count;
};

void append_signature(Signature& signature, const GemvTargets& targets) {
  signature.add(targets.count);
  for (int i = 0; i < targets.count; ++i)
    signature.add_all(targets.weights[i], targets.outs[i], targets.biases[i], targets.bias_dtypes[i],
                      targets.first_block[i + 1]);
}

// A block per R rows of one target, its threads splitting the columns
// (block_row_dots, or block_row_dots_int8 for int8 activations): the decode
// path for every format with 8-value pieces.
template <typename Format, int NT, typename Activations>
__global__ void __launch_bounds__(256)
    row_block_gemv_kernel(const Activations x, const GemvTargets targets, int n) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  constexpr int R = NT <= 2 ? Format::kRows : 4;
  __shared__ float result[R * NT];
  int target = 0;
  while (target + 1 < targets.count && blockIdx.x >= targets.first_block[target + 1]) ++target;
  const Matrix& weight = targets.weights[target];
  float* __restrict__ out = targets.outs[target];
  const void* bias = targets.biases[target];
  const DType bias_dtype = targets.bias_dtypes[target];
  const int64_t row0 = (blockIdx.x - targets.first_block[target]) * static_cast<int64_t>(R);
  int64_t rows[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) rows[t] = t < n ? t : 0;
  const Matrix matrices[1] = {weight};
  row_dots<Format, NT, R, 1>(matrices, row0, x, rows, n, result);
  for (int i = threadIdx.x; i < R * NT; i += blockDim.x) {
    const int64_t row = row0 + i / NT;
    const int t = i % NT;
    if (row < weight.rows && t < n) out[t * weight.rows + row] = result[i] + (bias ? element_f32(bias, bias_dtype, row) : 0.0f);
  }
}

// One launch of row_block_gemv_kernel over every target (all of Format);
// false when the format or the alignment does not allow it.
template <typename Format>
bool row_block_gemv(Context& ctx, const float* x, int64_t n, std::span<const LinearTarget> targets) {
  if constexpr (!Format::kHasPieces) {
    return false;
  } else {
    if (targets.empty() || targets.size() > kMaxTargets || reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
    for (const LinearTarget& target : targets)
      if (!Format::pieces_ok(target.weight)) return false;
    const int tokens = static_cast<int>(n);
    bool int8 = false;
    if constexpr (kHasInt8Path<Format>) {
      int8 = ctx.int8_activations && targets.front().weight.cols % 32 == 0;
      for (const LinearTarget& target : targets)
        int8 = int8 && target.weight.group_size % 32 == 0 && !target.weight.f32_activations;
    }
    bool half = false;  // FP8 weights in the fast mode: f16 activations (block_row_dots_half)
    if constexpr (kHasHalfPath<Format>) {
      half = ctx.int8_activations;
      for (const LinearTarget& target : targets)
        half = half && half_path_fits(target.weight) && !target.weight.f32_activations;
    }
    const int64_t cols = targets.front().weight.cols;
    auto launch_tokens = [&](auto nt) {
      constexpr int NT = decltype(nt)::value;
      constexpr int R = NT <= 2 ? Format::kRows : 4;
      GemvTargets set{};
      set.count = static_cast<int>(targets.size());
      set.first_block[0] = 0;
      for (int i = 0; i < set.count; ++i) {
        const LinearTarget& target = targets[i];
        set.weights[i] = target.weight;
        set.outs[i] = target.out;
        set.biases[i] = target.bias ? target.bias->data : nullptr;
        set.bias_dtypes[i] = target.bias ? target.bias->dtype : DType::F32;
        set.first_block[i + 1] = set.first_block[i] + blocks_for(target.weight.rows, R);
      }
      if constexpr (kHasInt8Path<Format>) {
        if (int8) {
          const Int8Activations quantized = quantize_activations(ctx, x, n, cols);
          launch(ctx, row_block_gemv_kernel<Format, NT, Int8Activations>, dim3(set.first_block[set.count]),
                 dim3(kInt8Threads), 0, quantized, set, tokens);
          return;
        }
      }
      if constexpr (kHasHalfPath<Format>) {
        if (half) {
          launch(ctx, row_block_gemv_kernel<Format, NT, HalfActivations>, dim3(set.first_block[set.count]),
                 dim3(kInt8Threads), 0, scale_activations_to_half(ctx, x, n, cols), set, tokens);
          return;
        }
      }
      launch(ctx, row_block_gemv_kernel<Format, NT, F32Activations>, dim3(set.first_block[set.count]), dim3(256), 0,
             F32Activations{x, cols}, set, tokens);
    };
    if (n == 1) launch_tokens(std::integral_constant<int, 1>{});
    else if (n == 2) launch_tokens(std::integral_constant<int, 2>{});
    else if (n <= 4) launch_tokens(std::integral_constant<int, 4>{});
    else launch_tokens(std::integral_constant<int, 8>{});
    ctx.last_gemv_op = ctx.submitted_ops;  // (Context::shared_early)
    ctx.last_gemv_input = x;
    return true;
  }
}

template <typename Format>
void gemv(Context& ctx, float* out, const float* x, int64_t n, const Matrix& weight, const Matrix* bias) {
  const LinearTarget single[1] = {{out, weight, bias}};
  if (row_block_gemv<Format>(ctx, x, n, single)) return;
  const bool vectorized = Format::vectorizable(weight) && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const unsigned blocks = blocks_for(weight.rows, kGemvWarps);
  const void* bias_data = bias ? bias->data : nullptr;
  const DType bias_dtype = bias ? bias->dtype : DType::F32;
  const int tokens = static_cast<int>(n);
  auto launch_tokens = [&](auto nt) {
    launch(ctx, gemv_kernel<Format, decltype(nt)::value>, dim3(blocks), dim3(kGemvWarps * 32), 0, out, x, weight,
           bias_data, bias_dtype, tokens, vectorized);
  };
  if (n == 1) launch_tokens(std::integral_constant<int, 1>{});
  else if (n == 2) launch_tokens(std::integral_constant<int, 2>{});
  else if (n <= 4) launch_tokens(std::integral_constant<int, 4>{});
  else launch_tokens(std::integral_constant<int, 8>{});
}

// 64 tokens x 64 features per 256-thread block, 16-deep k slices; each thread
// owns a 4 x 4 sub-tile strided by 16 so that its output stores coalesce.
constexpr int kTile = 64, kDepth = 16;

template <typename Format>
__global__ void __launch_bounds__(256)
    gemm_kernel(float* __restrict__ out, const float* __restrict__ x, const Matrix weight, const void* bias,
                DType bias_dtype, int64_t n) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t out_features = weight.rows, in_features = weight.cols;
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
      ws[load_k + q][load_row] = in_k && feature < out_features ? Format::at(weight, feature, k) : 0.0f;
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
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t count = n * out_features;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] += element_f32(bias, bias_dtype, i % out_features);
}

}  // namespace

void linear(Context& ctx, float* out, const float* x, int64_t n, const Matrix& weight, const Matrix* bias) {
  if (n == 0 || weight.rows == 0) return;
  if (weight.cols == 0) {  // an empty dot product: the bias alone
    memset_async(ctx, out, 0, sizeof(float) * n * weight.rows);
  } else if (n <= kMaxGemvTokens) {
    dispatch_format(weight, [&](auto format) { gemv<decltype(format)>(ctx, out, x, n, weight, bias); });
    return;
  } else if (tensor_linear(ctx, out, x, n, weight, bias)) {
    return;
  } else if (weight.kind == WeightFormat::Kind::Float && weight.dtype == DType::F32) {
    // Row-major out[n, O] is column-major out^T [O, n] = W (col-major [I, O], transposed) * x^T (col-major [I, n]).
    const int rows = static_cast<int>(weight.rows), tokens = static_cast<int>(n), cols = static_cast<int>(weight.cols);
    const float* weights = static_cast<const float*>(weight.data);
    cublasHandle_t handle = ctx.cublas;
    Signature signature;
    signature.add_all(uint64_t{3}, rows, tokens, cols, weights, x, out);
    ctx.submit(
        [=](cudaStream_t) {
          const float one = 1.0f, zero = 0.0f;
          CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, rows, tokens, cols, &one, weights, cols, x, cols,
                                   &zero, out, rows));
        },
        signature.value, /*capturable=*/false);
  } else {
    const dim3 grid(blocks_for(weight.rows, kTile), blocks_for(n, kTile));
    dispatch_format(weight, [&](auto format) {
      launch(ctx, gemm_kernel<decltype(format)>, grid, dim3(256), 0, out, x, weight, bias ? bias->data : nullptr,
             bias ? bias->dtype : DType::F32, n);
    });
    return;
  }
  if (bias) {
    const int64_t count = n * weight.rows;
    launch(ctx, add_bias_kernel, dim3(static_cast<unsigned>(std::min<int64_t>(blocks_for(count, 256), 65536))),
           dim3(256), 0, out, bias->data, bias->dtype, n, weight.rows);
  }
}

void linears(Context& ctx, const float* x, int64_t n, std::span<const LinearTarget> targets) {
  // One launch needs decoding, weights of one format, and no empty shapes.
  bool together = n > 0 && n <= kMaxGemvTokens && !targets.empty();
  for (const LinearTarget& target : targets) {
    const Matrix& first = targets.front().weight;
    const Matrix& weight = target.weight;
    together = together && weight.rows > 0 && weight.cols == first.cols && weight.kind == first.kind &&
               weight.dtype == first.dtype && weight.bits == first.bits && weight.group_size == first.group_size &&
               weight.scales_dtype == first.scales_dtype && weight.fp8_scale == first.fp8_scale;
  }
  if (together) {
    bool launched = false;
    dispatch_format(targets.front().weight,
                    [&](auto format) { launched = row_block_gemv<decltype(format)>(ctx, x, n, targets); });
    if (launched) return;
  }
  for (const LinearTarget& target : targets) linear(ctx, target.out, x, n, target.weight, target.bias);
}

}  // namespace glm::cuda
