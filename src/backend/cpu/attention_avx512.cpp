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

// scores[j][row] = sum_d query_t[d][row] * key_j[d] for J keys and 16 V rows:
// one FMA chain over d per (row, key), whatever J and V are.
template <int V, int J>
inline void score_keys(const float* query_t, int64_t head_dim, const float* const* keys, float* scores) {
  __m512 acc[J][V];
  GLM_ATTENTION_UNROLL
  for (int j = 0; j < J; ++j) {
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    __m512 query[V];
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) query[v] = _mm512_load_ps(query_t + d * kRowSlots + v * 16);
    GLM_ATTENTION_UNROLL
    for (int j = 0; j < J; ++j) {
      const __m512 key = _mm512_set1_ps(keys[j][d]);
      GLM_ATTENTION_UNROLL
      for (int v = 0; v < V; ++v) acc[j][v] = _mm512_fmadd_ps(query[v], key, acc[j][v]);
    }
  }
  GLM_ATTENTION_UNROLL
  for (int j = 0; j < J; ++j) {
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) _mm512_store_ps(scores + j * kRowSlots + v * 16, acc[j][v]);
  }
}

// Scores of n_keys keys: groups of J (J x V accumulators ~ 24 registers),
// the rest one at a time (the same per-(row, key) arithmetic).
template <int V>
void score_chunk(const float* query_t, int64_t head_dim, const float* const* keys, int64_t n_keys, float* scores) {
  constexpr int J = V == 1 ? 16 : V == 2 ? 12 : V == 3 ? 8 : 6;
  int64_t j = 0;
  for (; j + J <= n_keys; j += J) score_keys<V, J>(query_t, head_dim, keys + j, scores + j * kRowSlots);
  for (; j < n_keys; ++j) score_keys<V, 1>(query_t, head_dim, keys + j, scores + j * kRowSlots);
}

// For R rows and DV vectors of head_dim starting at d0:
//   out[r] = out[r] * alpha[r] + sum_{j < n_keys} weights[j][r] * value_j
// The last vector loads only the lanes in last_mask (the head_dim tail).
template <int R, int DV>
inline void accumulate_values(float* out, int64_t out_stride, const float* alpha, const float* weights,
                              const float* const* values, int64_t n_keys, int64_t d0, __mmask16 last_mask) {
  __m512 acc[R][DV];
  GLM_ATTENTION_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m512 scale = _mm512_set1_ps(alpha[r]);
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x) acc[r][x] = _mm512_mul_ps(_mm512_load_ps(out + r * out_stride + x * 16), scale);
  }
  for (int64_t j = 0; j < n_keys; ++j) {
    __m512 value[DV];
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x)
      value[x] = x == DV - 1 ? _mm512_maskz_loadu_ps(last_mask, values[j] + d0 + x * 16)
                             : _mm512_loadu_ps(values[j] + d0 + x * 16);
    GLM_ATTENTION_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 weight = _mm512_set1_ps(weights[j * kRowSlots + r]);
      GLM_ATTENTION_UNROLL
      for (int x = 0; x < DV; ++x) acc[r][x] = _mm512_fmadd_ps(weight, value[x], acc[r][x]);
    }
  }
  GLM_ATTENTION_UNROLL
  for (int r = 0; r < R; ++r) {
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x) _mm512_store_ps(out + r * out_stride + x * 16, acc[r][x]);
  }
}

// accumulate_values over the whole head_dim: 4 vectors at a time (R <= 6 rows
// x 4 = 24 accumulators), then the 1-3 left.
template <int R>
void accumulate_head(float* out, int64_t out_stride, const float* alpha, const float* weights,
                     const float* const* values, int64_t n_keys, int64_t head_dim) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
    const int64_t left = head_dim - d0;
    const int64_t vectors = left >= 64 ? 4 : (left + 15) / 16;
    const __mmask16 last = first_lanes(left - (vectors - 1) * 16);
    float* o = out + d0;
    switch (vectors) {
      case 4: accumulate_values<R, 4>(o, out_stride, alpha, weights, values, n_keys, d0, last); break;
      case 3: accumulate_values<R, 3>(o, out_stride, alpha, weights, values, n_keys, d0, last); break;
      case 2: accumulate_values<R, 2>(o, out_stride, alpha, weights, values, n_keys, d0, last); break;
      default: accumulate_values<R, 1>(o, out_stride, alpha, weights, values, n_keys, d0, last); break;
    }
  }
}

void accumulate_rows(int64_t rows, float* out, int64_t out_stride, const float* alpha, const float* weights,
                     const float* const* values, int64_t n_keys, int64_t head_dim) {
  switch (rows) {
    case 6: accumulate_head<6>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 5: accumulate_head<5>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 4: accumulate_head<4>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 3: accumulate_head<3>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 2: accumulate_head<2>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    default: accumulate_head<1>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
  }
}

}  // namespace

void attend_block(const AttentionBlock& b) {
  const int64_t head_dim = b.head_dim, rows = b.n_tokens * b.n_heads;
  const int64_t vectors = (rows + 15) / 16;  // 1..4
  const BlockScratch scratch = carve_scratch(b);
  const int64_t out_stride = scratch.out_stride;
  float* const query_t = scratch.query_t;
  float* const scores = scratch.scores;
  float* const outputs = scratch.outputs;
  alignas(64) int32_t row_position[kMaxBlockRows];
  alignas(64) float row_max[kMaxBlockRows], row_sum[kMaxBlockRows], row_alpha[kMaxBlockRows];
  const float* keys[kKeyChunk];
  const float* values[kKeyChunk];
  const int32_t last_position = prepare_rows(b, vectors * 16, scratch, row_position, row_max, row_sum);

  const __m512 minus_infinity = _mm512_set1_ps(-__builtin_inff());
  const __m512 scale = _mm512_set1_ps(b.scale);
  for (int64_t chunk = 0; chunk <= last_position; chunk += kKeyChunk) {
    const int64_t n_keys = last_position + 1 - chunk < kKeyChunk ? last_position + 1 - chunk : kKeyChunk;
    // The chunk's keys and values copied next to each other (lanes past
    // head_dim zero), the next chunk's prefetched into L2 (prefetch_position).
    for (int64_t j = 0; j < n_keys; ++j) {
      const int64_t slot = slot_of(b, chunk + j);
      if (chunk + j + kKeyChunk <= last_position) prefetch_position(b, chunk + j + kKeyChunk);
      const float* key = b.keys + slot * b.slot_stride;
      const float* value = b.values + slot * b.slot_stride;
      float* key_copy = scratch.packed_keys + j * scratch.pack_stride;
      float* value_copy = scratch.packed_values + j * scratch.pack_stride;
      for (int64_t d = 0; d < head_dim; d += 16) {
        const __mmask16 lanes = first_lanes(head_dim - d);
        _mm512_store_ps(key_copy + d, _mm512_maskz_loadu_ps(lanes, key + d));
        _mm512_store_ps(value_copy + d, _mm512_maskz_loadu_ps(lanes, value + d));
      }
      keys[j] = key_copy;
      values[j] = value_copy;
    }
    switch (vectors) {
      case 1: score_chunk<1>(query_t, head_dim, keys, n_keys, scores); break;
      case 2: score_chunk<2>(query_t, head_dim, keys, n_keys, scores); break;
      case 3: score_chunk<3>(query_t, head_dim, keys, n_keys, scores); break;
      default: score_chunk<4>(query_t, head_dim, keys, n_keys, scores); break;
    }

    // Online softmax, lane-wise per row: keys past a row's position are -inf
    // for the max and exact zeros in the sum.
    for (int64_t v = 0; v < vectors; ++v) {
      const __m512i position = _mm512_load_si512(row_position + v * 16);
      __m512 chunk_max = minus_infinity;
      for (int64_t j = 0; j < n_keys; ++j) {
        const __mmask16 valid = _mm512_cmpge_epi32_mask(position, _mm512_set1_epi32(static_cast<int32_t>(chunk + j)));
        float* s = scores + j * kRowSlots + v * 16;
        const __m512 scaled = _mm512_mask_mul_ps(minus_infinity, valid, _mm512_load_ps(s), scale);
        _mm512_store_ps(s, scaled);
        chunk_max = _mm512_max_ps(chunk_max, scaled);
      }
      const __m512 old_max = _mm512_load_ps(row_max + v * 16);
      const __m512 new_max = _mm512_max_ps(old_max, chunk_max);
      // Chunk 0 always holds position 0, so new_max is finite from the first
      // chunk on; then old - new is -inf only there, where alpha multiplies zeros.
      const __m512 alpha = exp16(_mm512_sub_ps(old_max, new_max));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < n_keys; ++j) {
        const __mmask16 valid = _mm512_cmpge_epi32_mask(position, _mm512_set1_epi32(static_cast<int32_t>(chunk + j)));
        float* s = scores + j * kRowSlots + v * 16;
        const __m512 weight = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(_mm512_load_ps(s), new_max)));
        _mm512_store_ps(s, weight);
        sum = _mm512_add_ps(sum, weight);
      }
      _mm512_store_ps(row_sum + v * 16, _mm512_fmadd_ps(_mm512_load_ps(row_sum + v * 16), alpha, sum));
      _mm512_store_ps(row_max + v * 16, new_max);
      _mm512_store_ps(row_alpha + v * 16, alpha);
    }

    accumulate_tokens(b, scratch, chunk, n_keys, row_alpha, values, 6, head_dim, accumulate_rows);
  }

  for (int64_t r = 0; r < rows; ++r) {
    float* out = b.out + (r / b.n_heads) * b.token_stride + (r % b.n_heads) * head_dim;
    const __m512 denominator = _mm512_set1_ps(row_sum[r]);
    for (int64_t d = 0; d < head_dim; d += 16) {
      const __mmask16 lanes = first_lanes(head_dim - d);
      _mm512_mask_storeu_ps(out + d, lanes, _mm512_div_ps(_mm512_load_ps(outputs + r * out_stride + d), denominator));
    }
  }
}

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
