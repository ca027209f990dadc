// AVX2 + FMA SwiGLU, RMSNorm row, add and scaled add (simd_ops.h's
// ElementwiseOps), for CPUs without AVX-512: elementwise_avx512.cpp on 8
// lanes. Whole vectors first, then one masked vector for the tail (the same
// instructions on fewer lanes), so an element's result does not depend on
// where it falls relative to a vector boundary, and a token's row is computed
// the same way whatever else is in the batch.
//
// Compiled for AVX2 + FMA by a target pragma; called only after
// elementwise_ops() chose it. No standard-library templates past the pragma.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/simd_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_ELEMENTWISE_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#endif

namespace glm::cpu::simd {

#ifdef GLM_ELEMENTWISE_AVX2

namespace {

#include "backend/cpu/avx2_math.inc"

// f(i, lanes) over [0, count) in vectors of 8: lanes is every lane for whole
// vectors and first_lanes8 for the tail; f loads and stores through it.
template <class F>
inline void each_vector(int64_t count, F f) {
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) f(i, all);
  if (i < count) f(i, first_lanes8(count - i));
}

// silu(g) * u = g / (1 + e^-g) * u, as the reference computes it.
void swiglu(float* out, const float* gate, const float* up, int64_t count) {
  const __m256 one = _mm256_set1_ps(1.0f);
  each_vector(count, [&](int64_t i, __m256i lanes) {
    const __m256 g = _mm256_maskload_ps(gate + i, lanes);
    const __m256 u = _mm256_maskload_ps(up + i, lanes);
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_maskstore_ps(out + i, lanes, _mm256_mul_ps(silu, u));
  });
}

void rms_norm_row(float* out, const float* x, const float* gamma, int64_t dim, float eps) {
  __m256 squares = _mm256_setzero_ps();
  each_vector(dim, [&](int64_t i, __m256i lanes) {
    const __m256 value = _mm256_maskload_ps(x + i, lanes);
    squares = _mm256_fmadd_ps(value, value, squares);
  });
  const __m256 inverse_rms =
      _mm256_set1_ps(1.0f / __builtin_sqrtf(hsum8(squares) / static_cast<float>(dim) + eps));
  each_vector(dim, [&](int64_t i, __m256i lanes) {
    const __m256 normalised = _mm256_mul_ps(_mm256_maskload_ps(x + i, lanes), inverse_rms);
    _mm256_maskstore_ps(out + i, lanes, _mm256_mul_ps(_mm256_maskload_ps(gamma + i, lanes), normalised));
  });
}

void add(float* out, const float* a, const float* b, int64_t count) {
  each_vector(count, [&](int64_t i, __m256i lanes) {
    _mm256_maskstore_ps(out + i, lanes, _mm256_add_ps(_mm256_maskload_ps(a + i, lanes), _mm256_maskload_ps(b + i, lanes)));
  });
}

void add_scaled(float* out, const float* x, float weight, int64_t count) {
  const __m256 w = _mm256_set1_ps(weight);
  each_vector(count, [&](int64_t i, __m256i lanes) {
    _mm256_maskstore_ps(out + i, lanes,
                        _mm256_fmadd_ps(w, _mm256_maskload_ps(x + i, lanes), _mm256_maskload_ps(out + i, lanes)));
  });
}

}  // namespace

const ElementwiseOps* avx2_elementwise_ops() {
  static const ElementwiseOps ops{swiglu, rms_norm_row, add, add_scaled};
  return &ops;
}

#else

const ElementwiseOps* avx2_elementwise_ops() { return nullptr; }

#endif

}  // namespace glm::cpu::simd

#ifdef GLM_ELEMENTWISE_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
