// AVX-512 SwiGLU, RMSNorm row, add and scaled add (simd_ops.h's
// ElementwiseOps). Tails are masked vectors rather than scalar loops, so an
// element's result does not depend on where it falls relative to a vector
// boundary: a token's row is computed the same way whatever else is in the
// batch. elementwise_avx2.cpp is the same on 8 lanes.
//
// Compiled for AVX-512 by a target pragma; called only after
// elementwise_ops() chose it. No standard-library templates past the pragma.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/simd_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_ELEMENTWISE_AVX512 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#endif
#endif

namespace glm::cpu::simd {

#ifdef GLM_ELEMENTWISE_AVX512

bool compiled_for_avx512() { return true; }

namespace {

#include "backend/cpu/avx512_math.inc"

// silu(g) * u = g / (1 + e^-g) * u, as the reference computes it.
void swiglu(float* out, const float* gate, const float* up, int64_t count) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 lanes = first_lanes(count - i);
    const __m512 g = _mm512_maskz_loadu_ps(lanes, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(lanes, up + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_mul_ps(silu, u));
  }
}

void rms_norm_row(float* out, const float* x, const float* gamma, int64_t dim, float eps) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < dim; i += 16) {
    const __m512 value = _mm512_maskz_loadu_ps(first_lanes(dim - i), x + i);
    squares = _mm512_fmadd_ps(value, value, squares);
  }
  const float sum_squares = _mm512_reduce_add_ps(squares);
  const __m512 inverse_rms = _mm512_set1_ps(1.0f / __builtin_sqrtf(sum_squares / static_cast<float>(dim) + eps));
  for (int64_t i = 0; i < dim; i += 16) {
    const __mmask16 lanes = first_lanes(dim - i);
    const __m512 normalised = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + i), inverse_rms);
    _mm512_mask_storeu_ps(out + i, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, gamma + i), normalised));
  }
}

void add(float* out, const float* a, const float* b, int64_t count) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 lanes = first_lanes(count - i);
    _mm512_mask_storeu_ps(out + i, lanes,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, a + i), _mm512_maskz_loadu_ps(lanes, b + i)));
  }
}

void add_scaled(float* out, const float* x, float weight, int64_t count) {
  const __m512 w = _mm512_set1_ps(weight);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 lanes = first_lanes(count - i);
    _mm512_mask_storeu_ps(out + i, lanes,
                          _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes, x + i), _mm512_maskz_loadu_ps(lanes, out + i)));
  }
}

}  // namespace

const ElementwiseOps* avx512_elementwise_ops() {
  static const ElementwiseOps ops{swiglu, rms_norm_row, add, add_scaled};
  return &ops;
}

#else

bool compiled_for_avx512() { return false; }
const ElementwiseOps* avx512_elementwise_ops() { return nullptr; }

#endif

}  // namespace glm::cpu::simd

#ifdef GLM_ELEMENTWISE_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
