// The per-32-value quantization of activations for the decode GEMVs, as one
// device function that the standalone kernels (activations.cu) and the
// producers that fuse it into their output (norm.cu, attention.cu) share, so
// a fused form is bit for bit the form the standalone kernel would make.
//
// A group of 32 values is held by 32 / V consecutive lanes, V values each
// (V = 1: a warp per group; V = 4: a float4 per lane, 8 lanes a group). The
// largest magnitude is exact in any order; the f32 sum (for the affine
// weights' bias term) is taken in one fixed order whatever V is: that of
// warp_sum over 32 lanes of one value each (xor-shuffle offsets 16, 8, 4, 2,
// 1: values 16 apart meet first, neighbours last), as the standalone kernel
// always did.
#pragma once

#include "backend/cuda/ops.cuh"

namespace glm::cuda {

// The group's sum in warp_sum's order: offsets of at least V are lanes
// offset / V apart (each of the lane's V values reduced on its own), the
// smaller ones pair the lane's own values.
template <int V>
__device__ __forceinline__ float group_sum(const float (&v)[V]) {
  float p[V];
#pragma unroll
  for (int j = 0; j < V; ++j) p[j] = v[j];
#pragma unroll
  for (int offset = 16; offset >= V; offset /= 2)
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] += __shfl_xor_sync(0xffffffffu, p[j], offset / V);
  if constexpr (V == 4) return (p[0] + p[2]) + (p[1] + p[3]);
  else if constexpr (V == 2) return p[0] + p[1];
  else return p[0];
}

// The largest magnitude over the 32 / V lanes of a group.
template <int V>
__device__ __forceinline__ float group_max(float value) {
#pragma unroll
  for (int offset = 1; offset < 32 / V; offset *= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Writes group `group` (values group * 32 .. + 31, this lane's V of them at
// group * 32 + (lane % (32 / V)) * V) in out's form. Every lane of the warp
// must call it (the shuffles span the warp), with the same out.kind.
template <int V>
__device__ __forceinline__ void prepare_group(const PreparedOutput& out, int64_t group, const float (&v)[V]) {
  static_assert(V == 1 || V == 2 || V == 4, "1, 2 or 4 values a lane");
  const int position = threadIdx.x % (32 / V);  // the lane's place in its group
  const int64_t first = group * 32 + position * V;
  float largest = fabsf(v[0]);
#pragma unroll
  for (int j = 1; j < V; ++j) largest = fmaxf(largest, fabsf(v[j]));
  largest = group_max<V>(largest);
  if (out.kind == ActivationKind::Half) {
    const float scale = largest > 0.0f ? largest : 1.0f;
    if constexpr (V == 4) {  // one 8-byte store (scratch rows are 16-byte aligned, first % 4 == 0)
      const __half2 low = __halves2half2(__float2half_rn(v[0] / scale), __float2half_rn(v[1] / scale));
      const __half2 high = __halves2half2(__float2half_rn(v[2] / scale), __float2half_rn(v[3] / scale));
      uint2 both;
      both.x = *reinterpret_cast<const uint32_t*>(&low);
      both.y = *reinterpret_cast<const uint32_t*>(&high);
      *reinterpret_cast<uint2*>(out.half_values + first) = both;
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) out.half_values[first + j] = __float2half_rn(v[j] / scale);
    }
    if (position == 0) out.scales[group] = scale;
  } else if (out.kind == ActivationKind::Int8) {
    const float sum = group_sum<V>(v);
    const float scale = largest / 127.0f;
    const float inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
    float q[V];
    uint32_t packed = 0;  // V == 4: the four bytes in one store
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int quantized = max(-127, min(127, __float2int_rn(v[j] * inverse)));
      q[j] = static_cast<float>(quantized);
      if constexpr (V == 4) packed |= (static_cast<uint32_t>(quantized) & 0xffu) << (8 * j);
      else out.int8_values[first + j] = static_cast<int8_t>(quantized);
    }
    if constexpr (V == 4) *reinterpret_cast<uint32_t*>(out.int8_values + first) = packed;
    const float q_sum = group_sum<V>(q);  // exact: |sum| <= 32 * 127
    if (position == 0) {
      out.scales[group] = scale;
      out.sums[group] = sum;
      out.rounding[group] = sum - scale * q_sum;
    }
  }
}

}  // namespace glm::cuda
