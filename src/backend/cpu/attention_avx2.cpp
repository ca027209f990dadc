// AVX2 causal attention over the paged KV cache for one block of queries
// sharing a KV head: the method of attention_avx512.cpp (read its header
// first), written once in attention_vector.inc, on 8-lane ymm registers for
// CPUs without AVX-512. This file gives that code its vector operations and
// tile sizes (struct Lanes): the block's up to 64 rows lie across up to 8
// vectors, scored 4 at a time; 16 ymm hold 8-12 score accumulators and a
// value pass of 4 rows x 2 vectors. A token gets the same bits alone and in
// a prompt block, and the same bits as from the AVX-512 version (the same
// operations per lane; tested where both run); the tests hold both to the
// reference (1e-5).
//
// Compiled for AVX2 + FMA by a target pragma; called only after
// avx2_attention_available(). No standard-library templates past the pragma.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/simd_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_ATTENTION_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#endif

// Full unrolling of the loops over a tile's rows, keys and vectors, so the
// accumulator arrays stay in registers.
#define GLM_ATTENTION_UNROLL _Pragma("GCC unroll 16")

namespace glm::cpu::simd {

#ifdef GLM_ATTENTION_AVX2

bool avx2_attention_compiled() { return true; }

namespace {

#include "backend/cpu/attention_block.inc"

#include "backend/cpu/avx2_math.inc"

struct Lanes {
  using F = __m256;
  using I = __m256i;
  using Mask = __m256;  // all-ones lanes where true
  static constexpr int N = 8;
  static constexpr int kScoreKeys[4] = {8, 4, 3, 2};  // J x V = 8-12 accumulators of the 16 ymm
  static constexpr int kValueVectors = 2, kValueRows = 4;  // 8 accumulators

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float value) { return _mm256_set1_ps(value); }
  static F load(const float* p) { return _mm256_load_ps(p); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F value) { _mm256_store_ps(p, value); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F exp(F x) { return exp8(x); }
  static I load_i32(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  // Lanes whose position is at least p (p - 1 < position: AVX2 compares only for greater).
  static Mask valid(I position, int32_t p) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(position, _mm256_set1_epi32(p - 1)));
  }
  static F or_minus_infinity(Mask valid, F x) { return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), x, valid); }
  static F zero_invalid(Mask valid, F x) { return _mm256_and_ps(valid, x); }
  // n floats from `from` to `to`, zeros after them up to `padded`.
  static void copy_padded(float* to, const float* from, int64_t n, int64_t padded) {
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) _mm256_store_ps(to + d, _mm256_loadu_ps(from + d));
    for (; d < n; ++d) to[d] = from[d];
    for (; d < padded; ++d) to[d] = 0.0f;
  }
  // out[d] = sums[d] / denominator for d < n.
  static void store_divided(float* out, const float* sums, int64_t n, float denominator) {
    const __m256 divisor = _mm256_set1_ps(denominator);
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(out + d, _mm256_div_ps(_mm256_load_ps(sums + d), divisor));
    for (; d < n; ++d) out[d] = sums[d] / denominator;
  }
};

#include "backend/cpu/attention_vector.inc"

}  // namespace

void attend_block_avx2(const AttentionBlock& b) { attend_block_lanes(b); }

#else

bool avx2_attention_compiled() { return false; }
void attend_block_avx2(const AttentionBlock&) {}

#endif

}  // namespace glm::cpu::simd

#ifdef GLM_ATTENTION_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
