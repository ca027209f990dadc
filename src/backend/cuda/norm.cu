// RMSNorm on the GPU. Rows head_dim wide (the per-head q/k norms, many rows)
// get a warp each; rows hidden_size wide (the layer norms: one row per token
// when decoding) get a block each, since a lone warp walking 4096 values is
// latency-bound (measured: 53 us a call, against 2-3 us for a block).
// Arithmetic as the CPU reference: x * (1 / sqrt(mean(x^2) + eps)), then
// times gamma. The fused add_rms_norm first adds a residual delta into x in
// the same pass (the sum rounded once, as the plain add does). For a decode
// step the wide-row kernel also writes the normed rows in the form the next
// GEMVs read (int8 or f16 per 32 values: prepared_activations.cuh), which
// saves them a quantize kernel.
#include "backend/cuda/prepared_activations.cuh"

namespace glm::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void rms_norm_kernel(float* out, const float* x, const void* gamma, DType gamma_dtype, int64_t rows,
                                int64_t dim, float eps) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
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

constexpr int kBlockThreads = 256;
constexpr int64_t kBlockPerRowFrom = 512;  // dims from which a row gets a whole block
constexpr int kMaxVectors = 8;             // float4s per thread held in registers: rows up to 8192 wide

// The sum of every thread's value over a kBlockThreads block (all threads get it).
__device__ __forceinline__ float block_total(float value) {
  __shared__ float warp_sums[kBlockThreads / 32];
  value = warp_sum(value);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kBlockThreads / 32; ++w) total += warp_sums[w];
  return total;
}

// A block per row held in registers, four values a load, every load of the
// row issued before the first is used: one memory latency for the row, not
// one per loop trip (the looping kernel below took 16 us on a 4096 row).
// delta: null, or added into x first (x is then written). prepared: the
// quantized form of out to write too (kind None: none; needs dim % 128 == 0,
// so that every warp's lanes hold whole groups of 32).
__global__ void __launch_bounds__(kBlockThreads)
    rms_norm_vector_kernel(float* out, float* x, const float* delta, const void* gamma, DType gamma_dtype,
                           int64_t dim, float eps, const PreparedOutput prepared) {
  const int vectors = static_cast<int>(dim / 4);
  // gamma first: a weight, so its loads may run before the previous kernel
  // ends, and the normalisation after the block sum waits on nothing
  float4 scale[kMaxVectors];
#pragma unroll
  for (int j = 0; j < kMaxVectors; ++j) {
    const int i = threadIdx.x + j * kBlockThreads;
    if (i < vectors)
      scale[j] = make_float4(element_f32(gamma, gamma_dtype, 4 * i), element_f32(gamma, gamma_dtype, 4 * i + 1),
                             element_f32(gamma, gamma_dtype, 4 * i + 2), element_f32(gamma, gamma_dtype, 4 * i + 3));
  }
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t row = blockIdx.x;
  float4* input = reinterpret_cast<float4*>(x + row * dim);
  const float4* added = delta ? reinterpret_cast<const float4*>(delta + row * dim) : nullptr;
  float4 value[kMaxVectors];
#pragma unroll
  for (int j = 0; j < kMaxVectors; ++j) {
    const int i = threadIdx.x + j * kBlockThreads;
    if (i < vectors) value[j] = input[i];
  }
  float sum_squares = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxVectors; ++j) {
    const int i = threadIdx.x + j * kBlockThreads;
    if (i >= vectors) break;
    if (added) {
      const float4 d = added[i];
      value[j].x += d.x, value[j].y += d.y, value[j].z += d.z, value[j].w += d.w;
      input[i] = value[j];
    }
    sum_squares += value[j].x * value[j].x + value[j].y * value[j].y + value[j].z * value[j].z + value[j].w * value[j].w;
  }
  const float inverse_rms = 1.0f / sqrtf(block_total(sum_squares) / static_cast<float>(dim) + eps);
  float4* output = reinterpret_cast<float4*>(out + row * dim);
#pragma unroll
  for (int j = 0; j < kMaxVectors; ++j) {
    const int i = threadIdx.x + j * kBlockThreads;
    if (i >= vectors) break;
    float4 result;
    result.x = scale[j].x * (value[j].x * inverse_rms);
    result.y = scale[j].y * (value[j].y * inverse_rms);
    result.z = scale[j].z * (value[j].z * inverse_rms);
    result.w = scale[j].w * (value[j].w * inverse_rms);
    output[i] = result;
    if (prepared.kind != ActivationKind::None) {  // 8 lanes a group of 32; uniform over the warp
      const float four[4] = {result.x, result.y, result.z, result.w};
      prepare_group<4>(prepared, (row * dim / 4 + i) / 8, four);
    }
  }
}

// Whether a row can take rms_norm_vector_kernel (16-byte aligned float4s that fit in registers).
bool vector_row(const float* a, const float* b, const float* c, int64_t dim) {
  const auto aligned16 = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return dim % 4 == 0 && dim <= 4 * kMaxVectors * kBlockThreads && aligned16(a) && aligned16(b) && (!c || aligned16(c));
}

// delta: null, or a row-major [rows, dim] added into x first (x is then written).
__global__ void __launch_bounds__(kBlockThreads)
    rms_norm_block_kernel(float* out, float* x, const float* delta, const void* gamma, DType gamma_dtype, int64_t dim,
                          float eps) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t row = blockIdx.x;
  float* input = x + row * dim;
  float sum_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kBlockThreads) {
    float value = input[i];
    if (delta) input[i] = value = value + delta[row * dim + i];
    sum_squares += value * value;
  }
  const float inverse_rms = 1.0f / sqrtf(block_total(sum_squares) / static_cast<float>(dim) + eps);
  // out may alias x: every thread rereads only the elements it writes itself.
  float* output = out + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += kBlockThreads)
    output[i] = element_f32(gamma, gamma_dtype, i) * (input[i] * inverse_rms);
}

// The form of out [rows, dim] the next GEMVs want, where the vector kernel can write it.
PreparedOutput prepared_for(Context& ctx, float* out, int64_t rows, int64_t dim) {
  return dim % 128 == 0 ? prepare_activations(ctx, out, rows, dim) : PreparedOutput{};
}

}  // namespace

void rms_norm(Context& ctx, float* out, const float* x, const Matrix& gamma, int64_t rows, int64_t dim, float eps) {
  if (rows == 0) return;
  if (dim >= kBlockPerRowFrom && vector_row(out, x, nullptr, dim)) {  // x is written only when given a delta
    launch(ctx, rms_norm_vector_kernel, dim3(static_cast<unsigned>(rows)), dim3(kBlockThreads), 0, out,
           const_cast<float*>(x), nullptr, gamma.data, gamma.dtype, dim, eps, prepared_for(ctx, out, rows, dim));
    return;
  }
  if (dim >= kBlockPerRowFrom) {  // the kernel writes x only when given a delta
    launch(ctx, rms_norm_block_kernel, dim3(static_cast<unsigned>(rows)), dim3(kBlockThreads), 0, out,
           const_cast<float*>(x), nullptr, gamma.data, gamma.dtype, dim, eps);
    return;
  }
  launch(ctx, rms_norm_kernel, dim3(blocks_for(rows, kWarpsPerBlock)), dim3(kWarpsPerBlock * 32), 0, out, x,
         gamma.data, gamma.dtype, rows, dim, eps);
}

void add_rms_norm(Context& ctx, float* residual, float* normed, const float* delta, const Matrix& gamma, int64_t rows,
                  int64_t dim, float eps) {
  if (rows == 0) return;
  if (dim >= kBlockPerRowFrom && vector_row(normed, residual, delta, dim)) {
    launch(ctx, rms_norm_vector_kernel, dim3(static_cast<unsigned>(rows)), dim3(kBlockThreads), 0, normed, residual,
           delta, gamma.data, gamma.dtype, dim, eps, prepared_for(ctx, normed, rows, dim));
    return;
  }
  if (dim >= kBlockPerRowFrom) {
    launch(ctx, rms_norm_block_kernel, dim3(static_cast<unsigned>(rows)), dim3(kBlockThreads), 0, normed, residual,
           delta, gamma.data, gamma.dtype, dim, eps);
    return;
  }
  add(ctx, residual, residual, delta, rows * dim);  // narrow rows: the plain pair
  rms_norm(ctx, normed, residual, gamma, rows, dim, eps);
}

}  // namespace glm::cuda
