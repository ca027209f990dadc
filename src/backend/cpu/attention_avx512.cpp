// AVX-512 causal attention over the paged KV cache for one block of queries
// sharing a KV head (simd_ops.h): the query heads of a GQA group and a few
// consecutive tokens of one sequence are processed together, so each cached
// key and value is read once per block rather than once per query head.
//
// Layout: the block's rows (token i, head j -> row i * n_heads + j, up to 64)
// lie across the 16 lanes of up to 4 vectors. Scores come out as, per key,
// one vector per 16 rows (the query block transposed once, then every key
// element broadcast against it: no per-chunk transpose of K, no horizontal
// sums), so the softmax statistics are plain lane-wise max / exp / add.
// Keys are consumed in chunks of kKeyChunk positions aligned to absolute
// positions (online softmax: running max m, running sum l, output rescaled
// by e^(m_old - m_new) per chunk). Values are then accumulated per row,
// vectorised over head_dim with the row's weight broadcast.
//
// Why a query's bits do not depend on its block: every per-row quantity is
// computed lane-wise in a fixed order (dot products: one FMA chain over d;
// sums over keys: in position order), chunk boundaries are absolute, keys
// past a row's position are masked to exact zeros (and skipped in the value
// sum), and a chunk in which a row has no valid key leaves it exactly as it
// was (alpha = e^0 = 1). So a decode token alone and the same token inside a
// prompt block get identical results.
//
// The code is written once over a vector width (attention_vector.inc, shared
// with attention_avx2.cpp); this file gives it 16-lane zmm operations and
// tile sizes (struct Lanes): up to 4 vectors of rows scored at once (J x V
// ~ 24 of the 32 zmm), value passes of 6 rows x 4 vectors.
//
// Compiled for AVX-512 by a target pragma; called only after
// simd_ops_available(). No standard-library templates past the pragma.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "backend/cpu/simd_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_ATTENTION_AVX512 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#endif
#endif

// Full unrolling of the loops over a tile's rows, keys and vectors, so the
// accumulator arrays stay in registers.
#define GLM_ATTENTION_UNROLL _Pragma("GCC unroll 16")

namespace glm::cpu::simd {

#ifdef GLM_ATTENTION_AVX512

namespace {

#include "backend/cpu/attention_block.inc"
#include "backend/cpu/avx512_math.inc"

struct Lanes {
  using F = __m512;
  using I = __m512i;
  using Mask = __mmask16;
  static constexpr int N = 16;
  static constexpr int kScoreKeys[4] = {16, 12, 8, 6};  // J x V ~ 24 accumulators of the 32 zmm
  static constexpr int kValueVectors = 4, kValueRows = 6;  // 24 accumulators

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float value) { return _mm512_set1_ps(value); }
  static F load(const float* p) { return _mm512_load_ps(p); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F value) { _mm512_store_ps(p, value); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F exp(F x) { return exp16(x); }
  static I load_i32(const int32_t* p) { return _mm512_load_si512(p); }
  static Mask valid(I position, int32_t p) { return _mm512_cmpge_epi32_mask(position, _mm512_set1_epi32(p)); }
  static F or_minus_infinity(Mask valid, F x) { return _mm512_mask_mov_ps(_mm512_set1_ps(-__builtin_inff()), valid, x); }
  static F zero_invalid(Mask valid, F x) { return _mm512_maskz_mov_ps(valid, x); }
  // n floats from `from` to `to`, zeros after them up to the next multiple of
  // 16 (which is `padded`, padded_head_dim).
  static void copy_padded(float* to, const float* from, int64_t n, int64_t /*padded*/) {
    for (int64_t d = 0; d < n; d += 16) _mm512_store_ps(to + d, _mm512_maskz_loadu_ps(first_lanes(n - d), from + d));
  }
  // out[d] = sums[d] / denominator for d < n.
  static void store_divided(float* out, const float* sums, int64_t n, float denominator) {
    const __m512 divisor = _mm512_set1_ps(denominator);
    for (int64_t d = 0; d < n; d += 16)
      _mm512_mask_storeu_ps(out + d, first_lanes(n - d), _mm512_div_ps(_mm512_load_ps(sums + d), divisor));
  }
};

#include "backend/cpu/attention_vector.inc"

}  // namespace

void attend_block(const AttentionBlock& b) { attend_block_lanes(b); }

#else

void attend_block(const AttentionBlock&) {}

#endif

}  // namespace glm::cpu::simd

#ifdef GLM_ATTENTION_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
