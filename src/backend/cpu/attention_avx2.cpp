// AVX2 causal attention over the paged KV cache for one block of queries
// sharing a KV head: the method of attention_avx512.cpp (read its header
// first) on 8-lane ymm registers, for CPUs without AVX-512. The block's rows
// (token i, head j -> row i * n_heads + j, up to 64) lie across up to 8
// vectors of 8 lanes; scores come out per key as one vector per 8 rows, the
// online softmax runs lane-wise over absolute key chunks, and values are
// accumulated per row over head_dim with the row's weight broadcast.
//
// Every per-row quantity has one fixed order of operations (a dot product is
// one FMA chain over d; sums over keys go in position order; chunks start at
// absolute positions; keys past a row's position give exact zeros), so a
// token alone and the same token inside a prompt block get identical bits,
// as with the AVX-512 version. The tests hold both to the reference (1e-5);
// whether the two agree bit for bit is not tested.
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

// scores[j][row] = sum_d query_t[d][row] * key_j[d] for J keys and 8 V rows:
// one FMA chain over d per (row, key), whatever J and V are.
template <int V, int J>
inline void score_keys(const float* query_t, int64_t head_dim, const float* const* keys, float* scores) {
  __m256 acc[J][V];
  GLM_ATTENTION_UNROLL
  for (int j = 0; j < J; ++j) {
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) acc[j][v] = _mm256_setzero_ps();
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    __m256 query[V];
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) query[v] = _mm256_load_ps(query_t + d * kRowSlots + v * 8);
    GLM_ATTENTION_UNROLL
    for (int j = 0; j < J; ++j) {
      const __m256 key = _mm256_set1_ps(keys[j][d]);
      GLM_ATTENTION_UNROLL
      for (int v = 0; v < V; ++v) acc[j][v] = _mm256_fmadd_ps(query[v], key, acc[j][v]);
    }
  }
  GLM_ATTENTION_UNROLL
  for (int j = 0; j < J; ++j) {
    GLM_ATTENTION_UNROLL
    for (int v = 0; v < V; ++v) _mm256_store_ps(scores + j * kRowSlots + v * 8, acc[j][v]);
  }
}

// Scores of n_keys keys for V (<= 4) vectors of rows: groups of J keys
// (J x V accumulators ~ 8-12 registers), the rest one at a time.
template <int V>
void score_rows(const float* query_t, int64_t head_dim, const float* const* keys, int64_t n_keys, float* scores) {
  constexpr int J = V == 1 ? 8 : V == 2 ? 4 : V == 3 ? 3 : 2;
  int64_t j = 0;
  for (; j + J <= n_keys; j += J) score_keys<V, J>(query_t, head_dim, keys + j, scores + j * kRowSlots);
  for (; j < n_keys; ++j) score_keys<V, 1>(query_t, head_dim, keys + j, scores + j * kRowSlots);
}

// All `vectors` (1..8) vectors of rows, 4 at a time.
void score_chunk(const float* query_t, int64_t head_dim, const float* const* keys, int64_t n_keys, int64_t vectors,
                 float* scores) {
  for (int64_t v0 = 0; v0 < vectors; v0 += 4) {
    const float* q = query_t + v0 * 8;
    float* s = scores + v0 * 8;
    switch (vectors - v0 < 4 ? vectors - v0 : 4) {
      case 1: score_rows<1>(q, head_dim, keys, n_keys, s); break;
      case 2: score_rows<2>(q, head_dim, keys, n_keys, s); break;
      case 3: score_rows<3>(q, head_dim, keys, n_keys, s); break;
      default: score_rows<4>(q, head_dim, keys, n_keys, s); break;
    }
  }
}

// For R rows and DV vectors of head_dim starting at d0 (the packed values
// and the outputs are zero-padded past head_dim, so whole vectors are read):
//   out[r] = out[r] * alpha[r] + sum_{j < n_keys} weights[j][r] * value_j
template <int R, int DV>
inline void accumulate_values(float* out, int64_t out_stride, const float* alpha, const float* weights,
                              const float* const* values, int64_t n_keys, int64_t d0) {
  __m256 acc[R][DV];
  GLM_ATTENTION_UNROLL
  for (int r = 0; r < R; ++r) {
    const __m256 scale = _mm256_set1_ps(alpha[r]);
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x) acc[r][x] = _mm256_mul_ps(_mm256_load_ps(out + r * out_stride + x * 8), scale);
  }
  for (int64_t j = 0; j < n_keys; ++j) {
    __m256 value[DV];
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x) value[x] = _mm256_load_ps(values[j] + d0 + x * 8);
    GLM_ATTENTION_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 weight = _mm256_set1_ps(weights[j * kRowSlots + r]);
      GLM_ATTENTION_UNROLL
      for (int x = 0; x < DV; ++x) acc[r][x] = _mm256_fmadd_ps(weight, value[x], acc[r][x]);
    }
  }
  GLM_ATTENTION_UNROLL
  for (int r = 0; r < R; ++r) {
    GLM_ATTENTION_UNROLL
    for (int x = 0; x < DV; ++x) _mm256_store_ps(out + r * out_stride + x * 8, acc[r][x]);
  }
}

// accumulate_values over the whole (padded) head_dim: 2 vectors at a time
// (R <= 4 rows x 2 = 8 accumulators).
template <int R>
void accumulate_head(float* out, int64_t out_stride, const float* alpha, const float* weights,
                     const float* const* values, int64_t n_keys, int64_t head_dim) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += 16)
    accumulate_values<R, 2>(out + d0, out_stride, alpha, weights, values, n_keys, d0);
}

void accumulate_rows(int64_t rows, float* out, int64_t out_stride, const float* alpha, const float* weights,
                     const float* const* values, int64_t n_keys, int64_t head_dim) {
  switch (rows) {
    case 4: accumulate_head<4>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 3: accumulate_head<3>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    case 2: accumulate_head<2>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
    default: accumulate_head<1>(out, out_stride, alpha, weights, values, n_keys, head_dim); break;
  }
}

// n floats from `from` to `to`, zeros after them up to `padded`.
inline void copy_padded(float* to, const float* from, int64_t n, int64_t padded) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) _mm256_store_ps(to + d, _mm256_loadu_ps(from + d));
  for (; d < n; ++d) to[d] = from[d];
  for (; d < padded; ++d) to[d] = 0.0f;
}

}  // namespace

void attend_block_avx2(const AttentionBlock& b) {
  const int64_t head_dim = b.head_dim, rows = b.n_tokens * b.n_heads;
  const int64_t vectors = (rows + 7) / 8;  // 1..8
  const BlockScratch scratch = carve_scratch(b);
  const int64_t out_stride = scratch.out_stride;
  alignas(32) int32_t row_position[kMaxBlockRows];
  alignas(32) float row_max[kMaxBlockRows], row_sum[kMaxBlockRows], row_alpha[kMaxBlockRows];
  const float* keys[kKeyChunk];
  const float* values[kKeyChunk];
  const int32_t last_position = prepare_rows(b, vectors * 8, scratch, row_position, row_max, row_sum);
  float* const scores = scratch.scores;

  const __m256 minus_infinity = _mm256_set1_ps(-__builtin_inff());
  const __m256 scale = _mm256_set1_ps(b.scale);
  for (int64_t chunk = 0; chunk <= last_position; chunk += kKeyChunk) {
    const int64_t n_keys = last_position + 1 - chunk < kKeyChunk ? last_position + 1 - chunk : kKeyChunk;
    // The chunk's keys and values copied next to each other (zeros past
    // head_dim), the next chunk's prefetched into L2 (prefetch_position).
    for (int64_t j = 0; j < n_keys; ++j) {
      const int64_t slot = slot_of(b, chunk + j);
      if (chunk + j + kKeyChunk <= last_position) prefetch_position(b, chunk + j + kKeyChunk);
      float* key_copy = scratch.packed_keys + j * scratch.pack_stride;
      float* value_copy = scratch.packed_values + j * scratch.pack_stride;
      copy_padded(key_copy, b.keys + slot * b.slot_stride, head_dim, out_stride);
      copy_padded(value_copy, b.values + slot * b.slot_stride, head_dim, out_stride);
      keys[j] = key_copy;
      values[j] = value_copy;
    }
    score_chunk(scratch.query_t, head_dim, keys, n_keys, vectors, scores);

    // Online softmax, lane-wise per row: keys past a row's position are -inf
    // for the max and exact zeros in the sum.
    for (int64_t v = 0; v < vectors; ++v) {
      const __m256i position = _mm256_load_si256(reinterpret_cast<const __m256i*>(row_position + v * 8));
      __m256 chunk_max = minus_infinity;
      for (int64_t j = 0; j < n_keys; ++j) {
        const __m256 valid = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(position, _mm256_set1_epi32(static_cast<int32_t>(chunk + j) - 1)));
        float* s = scores + j * kRowSlots + v * 8;
        const __m256 scaled = _mm256_blendv_ps(minus_infinity, _mm256_mul_ps(_mm256_load_ps(s), scale), valid);
        _mm256_store_ps(s, scaled);
        chunk_max = _mm256_max_ps(chunk_max, scaled);
      }
      const __m256 old_max = _mm256_load_ps(row_max + v * 8);
      const __m256 new_max = _mm256_max_ps(old_max, chunk_max);
      // Chunk 0 always holds position 0, so new_max is finite from the first
      // chunk on; then old - new is -inf only there, where alpha multiplies zeros.
      const __m256 alpha = exp8(_mm256_sub_ps(old_max, new_max));
      __m256 sum = _mm256_setzero_ps();
      for (int64_t j = 0; j < n_keys; ++j) {
        const __m256 valid = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(position, _mm256_set1_epi32(static_cast<int32_t>(chunk + j) - 1)));
        float* s = scores + j * kRowSlots + v * 8;
        const __m256 weight = _mm256_and_ps(valid, exp8(_mm256_sub_ps(_mm256_load_ps(s), new_max)));
        _mm256_store_ps(s, weight);
        sum = _mm256_add_ps(sum, weight);
      }
      _mm256_store_ps(row_sum + v * 8, _mm256_fmadd_ps(_mm256_load_ps(row_sum + v * 8), alpha, sum));
      _mm256_store_ps(row_max + v * 8, new_max);
      _mm256_store_ps(row_alpha + v * 8, alpha);
    }

    // Values over the padded head_dim (whole vectors; the lanes past head_dim are zeros).
    accumulate_tokens(b, scratch, chunk, n_keys, row_alpha, values, 4, out_stride, accumulate_rows);
  }

  for (int64_t r = 0; r < rows; ++r) {
    float* out = b.out + (r / b.n_heads) * b.token_stride + (r % b.n_heads) * head_dim;
    const float* sums = scratch.outputs + r * out_stride;
    const __m256 denominator = _mm256_set1_ps(row_sum[r]);
    int64_t d = 0;
    for (; d + 8 <= head_dim; d += 8) _mm256_storeu_ps(out + d, _mm256_div_ps(_mm256_load_ps(sums + d), denominator));
    for (; d < head_dim; ++d) out[d] = sums[d] / row_sum[r];
  }
}

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
