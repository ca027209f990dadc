// Shared pieces of the CUDA backend's kernels: error checks that throw
// glm::Error naming the failed call, widening loads from the float weight
// dtypes to f32, and warp reductions.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"

// CUDA_CHECK(call): throws glm::Error with the call, the place and CUDA's message.
#define CUDA_CHECK(call)                                                                                   \
  do {                                                                                                     \
    const cudaError_t cuda_check_status_ = (call);                                                         \
    if (cuda_check_status_ != cudaSuccess)                                                                 \
      ::glm::fail("CUDA error: ", #call, " failed at ", __FILE__, ":", __LINE__, ": ",                     \
                  cudaGetErrorName(cuda_check_status_), " (", cudaGetErrorString(cuda_check_status_), ")"); \
  } while (0)

// CUBLAS_CHECK(call): the same for cuBLAS status codes.
#define CUBLAS_CHECK(call)                                                                                 \
  do {                                                                                                     \
    const cublasStatus_t cublas_check_status_ = (call);                                                    \
    if (cublas_check_status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::glm::fail("cuBLAS error: ", #call, " failed at ", __FILE__, ":", __LINE__, ": ",                   \
                  cublasGetStatusString(cublas_check_status_));                                            \
  } while (0)

// After a kernel launch: a bad configuration is reported at once (launches
// are asynchronous, so faults inside the kernel surface at the next sync).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace glm::cuda {

// Widening one stored element to f32, for each float dtype a weight may have.
__device__ __forceinline__ float to_f32(float value) { return value; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float to_f32(__half value) { return __half2float(value); }

// Eight consecutive elements from a 16-byte-aligned address (the vectorised
// GEMV path): one 16-byte load for 16-bit types, two for f32.
// Programmatic dependent launch (Hopper and later; launch.cuh): kernels are
// launched so that the next kernel in the stream may be scheduled before this
// one has finished, which hides the launch gap between the short kernels of
// a decode step. So every kernel starts here: it waits until the previous
// kernel has finished and its writes are visible (nothing it reads or
// overwrites is still in use), then allows the next kernel to be scheduled
// (its blocks wait in turn at this same point). Before sm_90: nothing.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Lets the next kernel's blocks be scheduled before this kernel has waited
// for its own predecessor (wait_for_previous_kernel repeats it harmlessly).
// Safe for any successor that waits before reading, as all of ours do; it
// lets route_kernel's successor, the experts' gate/up kernel, start the
// shared expert while the router still runs (moe.cu, "shared_early").
__device__ __forceinline__ void start_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void load8(const float* p, float out[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float out[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // bf16 is the top half of an f32: widening is a shift
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const __half* p, float out[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half2* pairs = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(pairs[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

inline unsigned blocks_for(int64_t items, int threads) {
  return static_cast<unsigned>((items + threads - 1) / threads);
}

}  // namespace glm::cuda
