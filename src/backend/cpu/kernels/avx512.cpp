// AVX-512 projection kernels: the exact-activation kernel of exact_impl.inc
// over 16-lane zmm registers, and the fast-activation kernels that use
// AVX512_BF16 (VDPBF16PS: bf16 weights x bf16-rounded activations) and
// AVX512_VNNI (VPDPBUSD: affine u8/u4 weights x int8-quantized activations).
// Everything here is compiled for AVX-512 by a target pragma and only called
// after dispatch.cpp has checked the CPU, so the rest of the program stays
// baseline x86-64. No standard-library templates are used past the pragma
// (their out-of-line copies could be merged with baseline ones).
//
// GCC 12 warns that the _mm512_undefined_* placeholders inside its own
// intrinsic headers are uninitialized (a known false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backend/cpu/kernels/kernel_args.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_KERNELS_AVX512 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma,f16c")
#endif
#endif

namespace glm::cpu::kernels::avx512 {

#ifdef GLM_KERNELS_AVX512

bool compiled() { return true; }

namespace {

#include "backend/cpu/kernels/scalar_helpers.inc"

// The first n of 16 lanes (none for n <= 0, all for n >= 16).
inline __mmask16 first_lanes16(int64_t n) {
  return n >= 16 ? __mmask16{0xffff} : n <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << n) - 1);
}

// Up to 16 scales/biases from index on (lanes past `mask` are 0) as f32.
inline __m512 load_scales16(const void* base, ScaleType type, int64_t index, __mmask16 mask) {
  switch (type) {
    case ScaleType::F32: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + index);
    case ScaleType::BF16: {
      const __m256i bits = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + index);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
    }
    case ScaleType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + index));
  }
  return _mm512_setzero_ps();
}

struct V {
  using Reg = __m512;
  static constexpr int N = 16;
  static constexpr int kRows = 4;       // 4 rows x 6 tokens = 24 accumulators of 32 zmm
  static constexpr int kRowsHalf = kRows;  // bf16/f16 weights: the same tile
  static constexpr int kRowsSmall = 4;  // decode: 4 independent FMA chains per tile cover the latency
  static constexpr int kTokens = 6;
  static constexpr int kTokensAffine = 4;  // 4-bit steps hold 2 dequantized zmm per row

  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float value) { return _mm512_set1_ps(value); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg loadx(const float* p) { return _mm512_loadu_ps(p); }
  static float hsum(Reg r) { return _mm512_reduce_add_ps(r); }
  static Reg load_f32(const uint8_t* p) { return _mm512_loadu_ps(p); }
  static Reg load_bf16(const uint8_t* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static Reg load_f16(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Reg load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // 16 bytes = 32 nibbles, column 2i in the low nibble of byte i.
  static void load_u4(const uint8_t* p, Reg& first, Reg& second) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    first = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));   // columns 0..15
    second = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));  // columns 16..31
  }
};

}  // namespace

#include "backend/cpu/kernels/exact_impl.inc"

// ---- exact activations x affine weights ----
//
// exact_impl.inc dequantizes each weight (widen, convert, scale * q + bias)
// before the FMA; on one Zen 4 core that caps a 4-bit GEMV near 8 GB/s,
// below the memory's share. These kernels spend fewer instructions:
//   4-bit: the 16 values a group can take are a 16-float table (scale *
//     [0..15] + bias, one FMA per row and group), looked up with VPERMPS by
//     the nibbles themselves: 16 bytes zero-extended to dwords index the
//     table with their low nibble (even columns) and, shifted right by 4,
//     their high nibble (odd columns). prepare_exact stores x as [even,
//     odd] columns of each 32. Then 32 weights cost 1 zero-extension, 1
//     shift, 2 lookups (all shuffles) and 2 FMAs.
//   8-bit: sum_j (s q_j + b) x_j = s sum_j q_j x_j + b sum_j x_j: each q_j
//     is zero-extended and converted (2 ops per 16) and FMA'd; the group
//     sums of x are prepared once per call and the bias half is one short
//     dot product per output.
// (Tried and slower on Zen 4: 64-byte loads of 128 nibbles unpacked with
// shift+and+convert, 4 ops per 16 weights instead of 3.)
namespace {

// A tile's scales or biases as f32, [rows][groups <= kMaxGroups]: converted
// once per tile with 16-wide loads instead of per row and group.
inline void tile_scales(const void* base, ScaleType type, int64_t stride, int64_t r0, int rows, int64_t groups,
                        float* out /*[rows][groups]*/) {
  for (int r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; g += 16) {
      const int64_t left = groups - g;
      const __mmask16 mask = first_lanes16(left);
      _mm512_mask_storeu_ps(out + r * groups + g, mask, load_scales16(base, type, (r0 + r) * stride + g, mask));
    }
}

// sum_g b_g sums_g for one row: the bias half of the factored affine product.
inline float bias_dot(const LinearArgs& a, int64_t r, const float* sums, int64_t groups) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; g += 16) {
    const int64_t left = groups - g;
    const __mmask16 mask = first_lanes16(left);
    acc = _mm512_fmadd_ps(load_scales16(a.biases, a.bias_type, r * a.bias_stride + g, mask),
                          _mm512_maskz_loadu_ps(mask, sums + g), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <int R, int T>
void affine4_exact_tile(const LinearArgs& a, int64_t r0, int64_t t0) {
  const __m512 levels = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int64_t groups = a.in / a.group;
  alignas(64) float scale[R * kMaxGroups], bias[R * kMaxGroups];
  tile_scales(a.scales, a.scale_type, a.scale_stride, r0, R, groups, scale);
  tile_scales(a.biases, a.bias_type, a.bias_stride, r0, R, groups, bias);
  const uint8_t* row[R];
  GLM_UNROLL
  for (int r = 0; r < R; ++r) row[r] = a.w + (r0 + r) * a.w_stride;
  const float* xs[T];
  GLM_UNROLL
  for (int t = 0; t < T; ++t) xs[t] = a.xp + (t0 + t) * a.in;
  __m512 acc[R][T];
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 table[R];
    GLM_UNROLL
    for (int r = 0; r < R; ++r)
      table[r] = _mm512_fmadd_ps(levels, _mm512_set1_ps(scale[r * groups + g]), _mm512_set1_ps(bias[r * groups + g]));
    for (int64_t k = g * a.group, end = k + a.group; k < end; k += 32) {
      if ((k & 127) == 0) GLM_PREFETCH_ROWS(row, R, k / 2 + R * a.w_stride);
      __m512 even[R], odd[R];
      GLM_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + k / 2)));
        even[r] = _mm512_permutexvar_ps(bytes, table[r]);  // VPERMPS reads the low 4 bits of each index
        odd[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table[r]);
      }
      GLM_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 x = _mm512_loadu_ps(xs[t] + k);
        GLM_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(even[r], x, acc[r][t]);
      }
      GLM_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 x = _mm512_loadu_ps(xs[t] + k + 16);
        GLM_UNROLL
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(odd[r], x, acc[r][t]);
      }
    }
  }
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t) store_tile_outputs(a, r0 + r, t0 + t, _mm512_reduce_add_ps(acc[r][t]));
}

template <int R, int T>
void affine8_exact_tile(const LinearArgs& a, int64_t r0, int64_t t0) {
  const int64_t groups = a.in / a.group;
  alignas(64) float scale[R * kMaxGroups];
  tile_scales(a.scales, a.scale_type, a.scale_stride, r0, R, groups, scale);
  const uint8_t* row[R];
  GLM_UNROLL
  for (int r = 0; r < R; ++r) row[r] = a.w + (r0 + r) * a.w_stride;
  const float* xs[T];
  GLM_UNROLL
  for (int t = 0; t < T; ++t) xs[t] = a.x + (t0 + t) * a.in;
  __m512 acc[R][T];
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 part[R][T];  // sum_j q_j x_j over the group
    GLM_UNROLL
    for (int r = 0; r < R; ++r)
      GLM_UNROLL
      for (int t = 0; t < T; ++t) part[r][t] = _mm512_setzero_ps();
    for (int64_t k = g * a.group, end = k + a.group; k < end; k += 16) {
      if ((k & 63) == 0) GLM_PREFETCH_ROWS(row, R, k + R * a.w_stride);
      __m512 q[R];
      GLM_UNROLL
      for (int r = 0; r < R; ++r)
        q[r] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + k))));
      GLM_UNROLL
      for (int t = 0; t < T; ++t) {
        const __m512 x = _mm512_loadu_ps(xs[t] + k);
        GLM_UNROLL
        for (int r = 0; r < R; ++r) part[r][t] = _mm512_fmadd_ps(q[r], x, part[r][t]);
      }
    }
    GLM_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(scale[r * groups + g]);
      GLM_UNROLL
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(part[r][t], s, acc[r][t]);
    }
  }
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t)
      store_tile_outputs(a, r0 + r, t0 + t,
                         _mm512_reduce_add_ps(acc[r][t]) + bias_dot(a, r0 + r, a.xgs + (t0 + t) * groups, groups));
}

template <int BITS, int R, int T>
inline void affine_exact_tile(const LinearArgs& a, int64_t r0, int64_t t0) {
  if constexpr (BITS == 4) affine4_exact_tile<R, T>(a, r0, t0);
  else affine8_exact_tile<R, T>(a, r0, t0);
}

template <int BITS, int R>
void affine_exact_tiles(const LinearArgs& a, int64_t r0, int64_t t0, int64_t n_tokens) {
  switch (n_tokens) {
    case 1: return affine_exact_tile<BITS, R, 1>(a, r0, t0);
    case 2: return affine_exact_tile<BITS, R, 2>(a, r0, t0);
    case 3: return affine_exact_tile<BITS, R, 3>(a, r0, t0);
    case 4: return affine_exact_tile<BITS, R, 4>(a, r0, t0);
  }
}

template <int BITS>
void affine_exact_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  // Tiles: 3 rows x 4 tokens (12 partial sums + 12 totals of 32 zmm);
  // decode, 4 rows x 1 token.
  constexpr int R = 3, T = 4, kRowsSmall = 4;
  const int64_t block = max64(8, (int64_t{256} << 10) / max64(1, a.w_stride) / 8 * 8);
  for (int64_t rb = row_begin; rb < row_end; rb += block) {
    const int64_t re = min64(rb + block, row_end);
    for (int64_t t0 = 0; t0 < a.n_tokens; t0 += T) {
      const int64_t nt = min64(T, a.n_tokens - t0);
      int64_t r = rb;
      if (nt <= 2) {
        for (; r + kRowsSmall <= re; r += kRowsSmall) affine_exact_tiles<BITS, kRowsSmall>(a, r, t0, nt);
      } else {
        for (; r + R <= re; r += R) affine_exact_tiles<BITS, R>(a, r, t0, nt);
      }
      for (; r < re; ++r) affine_exact_tiles<BITS, 1>(a, r, t0, nt);
    }
  }
}

}  // namespace

void exact_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end) {
  switch (args.kind) {
    case WeightKind::F32: return exact_rows_of<WeightKind::F32>(args, row_begin, row_end);
    case WeightKind::BF16: return exact_rows_of<WeightKind::BF16>(args, row_begin, row_end);
    case WeightKind::F16: return exact_rows_of<WeightKind::F16>(args, row_begin, row_end);
    case WeightKind::Affine4: return affine_exact_rows<4>(args, row_begin, row_end);
    case WeightKind::Affine8: return affine_exact_rows<8>(args, row_begin, row_end);
  }
}

void prepare_exact(const float* x, int64_t in, int64_t group, int bits, float* xp, float* sums) {
  for (int64_t g = 0; bits == 8 && g < in / group; ++g) {
    __m512 total = _mm512_setzero_ps();
    for (int64_t k = 0; k < group; k += 16) total = _mm512_add_ps(total, _mm512_loadu_ps(x + g * group + k));
    sums[g] = _mm512_reduce_add_ps(total);
  }
  if (bits != 4) return;
  // Each 32 columns as [0, 2, .., 30, 1, 3, .., 31] (see affine4_exact_tile).
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t k = 0; k < in; k += 32) {
    const __m512 lo = _mm512_loadu_ps(x + k), hi = _mm512_loadu_ps(x + k + 16);
    _mm512_storeu_ps(xp + k, _mm512_permutex2var_ps(lo, even, hi));
    _mm512_storeu_ps(xp + k + 16, _mm512_permutex2var_ps(lo, odd, hi));
  }
}

// ---- bf16 weights x bf16 activations (VDPBF16PS) ----
namespace {

// Rows [r0, r0 + R) x tokens [t0, t0 + T). Each output has one accumulator
// walking the columns 32 at a time (VDPBF16PS adds lane i's pair 2i, 2i+1),
// so the result does not depend on the tile or on n_tokens.
template <int R, int T>
void bf16_tile(const LinearArgs& a, int64_t r0, int64_t t0) {
  const uint16_t* row[R];
  GLM_UNROLL
  for (int r = 0; r < R; ++r) row[r] = reinterpret_cast<const uint16_t*>(a.w + (r0 + r) * a.w_stride);
  const uint16_t* xs[T];
  GLM_UNROLL
  for (int t = 0; t < T; ++t) xs[t] = a.xb + (t0 + t) * a.xb_stride;
  __m512 acc[R][T];
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t main = a.in & ~int64_t{31};
  for (int64_t k = 0; k < main; k += 32) {
    if ((k & 31) == 0) GLM_PREFETCH_ROWS(row, R, 2 * k + R * a.w_stride);
    __m512bh w[R];
    GLM_UNROLL
    for (int r = 0; r < R; ++r) w[r] = (__m512bh)_mm512_loadu_si512(row[r] + k);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(xs[t] + k);
      GLM_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], x);
    }
  }
  if (main < a.in) {  // activations are zero padded to 32; mask the weights
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (a.in - main)) - 1);
    __m512bh w[R];
    GLM_UNROLL
    for (int r = 0; r < R; ++r) w[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, row[r] + main);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(xs[t] + main);
      GLM_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], x);
    }
  }
  GLM_UNROLL
  for (int r = 0; r < R; ++r)
    GLM_UNROLL
    for (int t = 0; t < T; ++t) store_tile_outputs(a, r0 + r, t0 + t, _mm512_reduce_add_ps(acc[r][t]));
}

template <int R>
void bf16_tiles(const LinearArgs& a, int64_t r0, int64_t t0, int64_t n_tokens) {
  switch (n_tokens) {
    case 1: return bf16_tile<R, 1>(a, r0, t0);
    case 2: return bf16_tile<R, 2>(a, r0, t0);
    case 3: return bf16_tile<R, 3>(a, r0, t0);
    case 4: return bf16_tile<R, 4>(a, r0, t0);
    case 5: return bf16_tile<R, 5>(a, r0, t0);
    case 6: return bf16_tile<R, 6>(a, r0, t0);
  }
}

}  // namespace

void bf16_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  constexpr int R = 4, T = 6;
  const int64_t block = max64(8, (int64_t{256} << 10) / max64(1, a.w_stride) / 8 * 8);
  for (int64_t rb = row_begin; rb < row_end; rb += block) {
    const int64_t re = min64(rb + block, row_end);
    for (int64_t t0 = 0; t0 < a.n_tokens; t0 += T) {
      const int64_t nt = min64(T, a.n_tokens - t0);
      int64_t r = rb;
      for (; r + R <= re; r += R) bf16_tiles<R>(a, r, t0, nt);
      for (; r < re; ++r) bf16_tiles<1>(a, r, t0, nt);
    }
  }
}

void prepare_bf16(const float* x, int64_t in, uint16_t* out) {
  const int64_t padded = bf16_stride(in);
  for (int64_t k = 0; k < padded; k += 32) {
    const int64_t left = in - k;
    const __mmask16 m0 = first_lanes16(left);
    const __mmask16 m1 = first_lanes16(left - 16);
    const __m512 lo = _mm512_maskz_loadu_ps(m0, x + k), hi = _mm512_maskz_loadu_ps(m1, x + k + 16);
    // Round to nearest even, as torch casts; the second operand fills the low half.
    _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// ---- affine u8/u4 weights x int8 activations (VPDPBUSD) ----
//
// Activations are quantized per weight group: xq = round(x / dx), dx =
// max|x| / 127 over the group, and for each row r and token t
//   sum_j (s_g q_j + b_g) x_j  ~=  sum_g s_g dx_g sum_{j in g} q_j xq_j  +  sum_g b_g xsum_g
// with q_j (unsigned) x xq_j (signed) summed exactly in int32 by VPDPBUSD and
// xsum_g = dx_g sum_{j in g} xq_j (the quantized sum: then the result is the
// exact dot product of the dequantized weights with the dequantized x, whose
// error sum_j w_j e_j is smaller than s sum_j q_j e_j would be).
//
// Calls of up to kGemvTokens tokens run each token through the one-token
// kernel (int8_block_gemv, further down). Larger ones:
// rows go in the 16 lanes. A block of 16 rows is repacked once into the
// thread's scratch as one zmm per 4 columns (lane r: row r's 4 bytes, via a
// 16 x 16 dword transpose; 4-bit dwords split into their even and odd
// columns), and then every token streams over it: per 4 columns one
// VPDPBUSD with the token's 4 bytes broadcast, summed in int32 over a group,
// then per group and token one conversion, FMUL (s_g of the 16 rows times
// the token's dx_g) and two FMAs (scale and bias terms). On Zen 4 VPDPBUSD,
// FMA and FMUL share one 512-bit multiply slot, so with g/4 VPDPBUSD per 3
// of those, the bound is 73% (g 32) to 89% (g 128) of the VPDPBUSD rate.
// (A rows-in-registers design, reducing each output horizontally, spent a
// conversion, a shuffle and an FMA per 128 columns and output and stayed
// near 35% there; for one token, where memory is the limit, it is the way,
// see int8_block_gemv.) Outputs come out as 16 contiguous floats per token.
// Each output's arithmetic is fixed (exact int32 group sums, then FMAs in
// group order), so results do not depend on the kernel, the token tile or
// the thread.
//
// x layout (prepare_int8): 8-bit natural; 4-bit, each 8 columns as the
// even then the odd ones (a packed dword holds 8 columns; its low nibbles
// are columns 0, 2, 4, 6).
namespace {

// In place: r[j] := the 16 rows' dword j (lane i: input r[i]'s dword j).
inline void transpose16x16(__m512i (&r)[16]) {
  __m512i a[16], c[16];
  GLM_UNROLL
  for (int p = 0; p < 8; ++p) {
    a[2 * p] = _mm512_unpacklo_epi32(r[2 * p], r[2 * p + 1]);
    a[2 * p + 1] = _mm512_unpackhi_epi32(r[2 * p], r[2 * p + 1]);
  }
  // c[4q + k], 128-bit lane L: rows 4q..4q+3 of dword 4L + k.
  GLM_UNROLL
  for (int q = 0; q < 4; ++q) {
    c[4 * q + 0] = _mm512_unpacklo_epi64(a[4 * q], a[4 * q + 2]);
    c[4 * q + 1] = _mm512_unpackhi_epi64(a[4 * q], a[4 * q + 2]);
    c[4 * q + 2] = _mm512_unpacklo_epi64(a[4 * q + 1], a[4 * q + 3]);
    c[4 * q + 3] = _mm512_unpackhi_epi64(a[4 * q + 1], a[4 * q + 3]);
  }
  GLM_UNROLL
  for (int k = 0; k < 4; ++k) {
    const __m512i e0 = _mm512_shuffle_i32x4(c[k], c[4 + k], 0x44), e1 = _mm512_shuffle_i32x4(c[k], c[4 + k], 0xee);
    const __m512i e2 = _mm512_shuffle_i32x4(c[8 + k], c[12 + k], 0x44), e3 = _mm512_shuffle_i32x4(c[8 + k], c[12 + k], 0xee);
    r[k] = _mm512_shuffle_i32x4(e0, e2, 0x88);       // dword k
    r[4 + k] = _mm512_shuffle_i32x4(e0, e2, 0xdd);   // dword 4 + k
    r[8 + k] = _mm512_shuffle_i32x4(e1, e3, 0x88);   // dword 8 + k
    r[12 + k] = _mm512_shuffle_i32x4(e1, e3, 0xdd);  // dword 12 + k
  }
}

// A segment is 16 dwords of a row: 64 columns (8-bit) or 128 (4-bit).
template <int BITS>
constexpr int64_t kSegmentColumns = BITS == 8 ? 64 : 128;

// Segment `start` (a column) of rows [r0, r0 + rows) (rows <= 16; missing
// rows are zero), transposed and handed to use(q, quad) for each 4 columns
// start + 4q .. + 3 present (lane r of quad = row r's 4 bytes), in order.
template <int BITS, class Use>
inline void for_segment_quads(const LinearArgs& a, int64_t r0, int rows, int64_t start, Use&& use) {
  const int64_t columns = min64(kSegmentColumns<BITS>, a.in - start);
  const int64_t bytes = columns * BITS / 8;
  const __mmask64 mask = bytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1;
  __m512i r[16];
  GLM_UNROLL
  for (int i = 0; i < 16; ++i) {
    const uint8_t* p = a.w + (r0 + i) * a.w_stride + start * BITS / 8;
    r[i] = i < rows ? _mm512_maskz_loadu_epi8(mask, p) : _mm512_setzero_si512();
    if (i < rows) __builtin_prefetch(p + 4 * 64, 0, 2);
  }
  transpose16x16(r);
  const int dwords = static_cast<int>(bytes / 4);
  if constexpr (BITS == 8) {
    for (int j = 0; j < dwords; ++j) use(j, r[j]);
  } else {  // dword j: columns 8j..8j+7, the even ones in the low nibbles
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    for (int j = 0; j < dwords; ++j) {
      use(2 * j, _mm512_and_si512(r[j], nibble));
      use(2 * j + 1, _mm512_and_si512(_mm512_srli_epi16(r[j], 4), nibble));
    }
  }
}

// Repacks rows [r0, r0 + rows) into packed[q] (zmm per 4 columns, lane r =
// row r).
template <int BITS>
void repack_block(const LinearArgs& a, int64_t r0, int rows, __m512i* packed) {
  for (int64_t start = 0; start < a.in; start += kSegmentColumns<BITS>)
    for_segment_quads<BITS>(a, r0, rows, start,
                            [&](int q, __m512i quad) { _mm512_store_si512(packed + start / 4 + q, quad); });
}

// The block's scales and biases as [group][16 rows] f32.
inline void repack_scales(const LinearArgs& a, int64_t r0, int rows, float* scales, float* biases) {
  const int64_t groups = a.in / a.group;
  // Scales and biases: 16 groups of 16 rows at a time, transposed the same way.
  for (int64_t g0 = 0; g0 < groups; g0 += 16) {
    const int64_t left = groups - g0;
    const __mmask16 mask = first_lanes16(left);
    const int n = static_cast<int>(min64(16, left));
    __m512i s[16], b[16];
    GLM_UNROLL
    for (int i = 0; i < 16; ++i) {
      s[i] = i < rows ? _mm512_castps_si512(load_scales16(a.scales, a.scale_type, (r0 + i) * a.scale_stride + g0, mask))
                      : _mm512_setzero_si512();
      b[i] = i < rows ? _mm512_castps_si512(load_scales16(a.biases, a.bias_type, (r0 + i) * a.bias_stride + g0, mask))
                      : _mm512_setzero_si512();
    }
    transpose16x16(s);
    transpose16x16(b);
    for (int j = 0; j < n; ++j) {
      _mm512_store_si512(scales + (g0 + j) * 16, s[j]);
      _mm512_store_si512(biases + (g0 + j) * 16, b[j]);
    }
  }
}

// The block's scales and biases when both are 16-bit (bf16 or f16, the
// usual mlx case), for the one-token kernel: [group][16 rows] dwords, the
// scale in the low half and the bias in the high half. One transpose of
// interleaved pairs instead of two of widened floats; each group widens
// its pair when it is used.
inline void repack_scale_pairs(const LinearArgs& a, int64_t r0, int rows, uint32_t* pairs) {
  const int64_t groups = a.in / a.group;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  const uint16_t* biases = static_cast<const uint16_t*>(a.biases);
  // After the interleave, dword j of a row holds group kGroupOfDword[j] of
  // the 16 (unpacklo/hi work within 128-bit lanes).
  constexpr int kGroupOfDword[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
  for (int64_t g0 = 0; g0 < groups; g0 += 16) {
    const int64_t left = groups - g0;
    const __mmask16 mask = first_lanes16(left);
    __m512i r[16];
    GLM_UNROLL
    for (int i = 0; i < 16; ++i) {
      const int64_t row = r0 + min64(i, rows - 1);  // missing rows repeat the last (their outputs are not stored)
      const __m256i s = _mm256_maskz_loadu_epi16(mask, scales + row * a.scale_stride + g0);
      const __m256i b = _mm256_maskz_loadu_epi16(mask, biases + row * a.bias_stride + g0);
      r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(s, b)), _mm256_unpackhi_epi16(s, b), 1);
    }
    transpose16x16(r);
    GLM_UNROLL
    for (int j = 0; j < 16; ++j)
      if (kGroupOfDword[j] < left) _mm512_store_si512(pairs + (g0 + kGroupOfDword[j]) * 16, r[j]);
  }
}

// repack_scales' arrays from the block's pairs laid out at load
// (block_scale_pairs, 16-bit scale low, bias high): the same f32 values, so
// once the pairs exist no kernel reads the weight's own scales and biases
// again (the CPU backend then lets their pages go).
inline void scales_from_pairs(const uint32_t* pairs, int64_t groups, ScaleType type, float* scales, float* biases) {
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i both = _mm512_load_si512(pairs + g * 16);
    __m512 scale, bias;
    if (type == ScaleType::BF16) {  // bf16 is the top half of an f32
      scale = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
      bias = _mm512_castsi512_ps(_mm512_and_si512(both, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
    } else {
      scale = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(both));
      bias = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(both, 16)));
    }
    _mm512_store_ps(scales + g * 16, scale);
    _mm512_store_ps(biases + g * 16, bias);
  }
}

// Group g's scales and biases of the block's 16 rows as f32: from
// repack_scales' arrays (ST = F32, whatever the stored type) or widened
// from repack_scale_pairs' pairs (ST = BF16 or F16).
struct BlockScales {
  const float* scales = nullptr;   // [group][16]
  const float* biases = nullptr;   // [group][16]
  const uint32_t* pairs = nullptr; // [group][16]
};

template <ScaleType ST>
inline void group_scales(const BlockScales& block, int64_t g, __m512& s, __m512& b) {
  if constexpr (ST == ScaleType::F32) {
    s = _mm512_load_ps(block.scales + 16 * g);
    b = _mm512_load_ps(block.biases + 16 * g);
  } else {
    const __m512i pair = _mm512_load_si512(block.pairs + 16 * g);
    if constexpr (ST == ScaleType::BF16) {
      s = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
      b = _mm512_castsi512_ps(_mm512_and_si512(pair, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
    } else {
      s = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(pair));
      b = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(pair, 16)));
    }
  }
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t value;
  std::memcpy(&value, p, 4);
  return _mm512_set1_epi32(value);
}

// The block's rows x tokens [t0, t0 + T).
template <int T>
void int8_block_tile(const LinearArgs& a, int64_t r0, int rows, int64_t t0, const __m512i* packed, const float* scales,
                     const float* biases) {
  const int64_t groups = a.in / a.group, quads = a.group / 4;
  const TileTokens<T> tokens(a, t0, groups);
  const int8_t* const* xq = tokens.xq;
  const float* const* dx = tokens.dx;
  const float* const* xsum = tokens.xsum;
  __m512 acc[T], bias_acc[T];
  GLM_UNROLL
  for (int t = 0; t < T; ++t) acc[t] = bias_acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dot[T];
    GLM_UNROLL
    for (int t = 0; t < T; ++t) dot[t] = _mm512_setzero_si512();
    const __m512i* w = packed + g * quads;
    const int64_t q0 = g * quads;
    for (int64_t q = 0; q < quads; ++q) {
      const __m512i weights = _mm512_load_si512(w + q);
      GLM_UNROLL
      for (int t = 0; t < T; ++t) dot[t] = _mm512_dpbusd_epi32(dot[t], weights, broadcast4(xq[t] + 4 * (q0 + q)));
    }
    const __m512 s = _mm512_load_ps(scales + 16 * g), b = _mm512_load_ps(biases + 16 * g);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(s, _mm512_set1_ps(dx[t][g])), acc[t]);
      bias_acc[t] = _mm512_fmadd_ps(b, _mm512_set1_ps(xsum[t][g]), bias_acc[t]);
    }
  }
  const __mmask16 mask = first_lanes16(rows);
  const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + r0) : _mm512_setzero_ps();
  GLM_UNROLL
  for (int t = 0; t < T; ++t)
    _mm512_mask_storeu_ps(a.out + (t0 + t) * a.out_features + r0, mask,
                          _mm512_add_ps(_mm512_add_ps(acc[t], bias_acc[t]), bias));
}

// Decode (calls of up to kGemvTokens tokens, one token at a time): rows stay
// in their own registers instead of being transposed. Row i's 64 bytes of a
// segment go through VPDPBUSD against the token's int8 x as a whole vector,
// so lane l of D[i] sums the 8 (4-bit: the low and the high nibbles of
// dword l) or 4 (8-bit) columns of that lane, exactly. Then one reduction tree over the 16 rows' D turns "16 rows x 16
// lanes" into "per group, 16 rows in lanes": the same exact int32 group sums
// int8_block_tile forms, so the same FMAs follow and the bits agree. The
// tree costs 44 shuffles and adds per 16 x 64 bytes where transposing the
// weights costs 56, and x needs no broadcast per 4 columns.
//
// The block's two halves run 8 segments apart (rows 8-15 trail rows 0-7):
// rows a power-of-two stride apart (4 KB for 8-bit rows of 4096) share an
// L1 set at each column, and 16 lines of one set in flight at once (8-way)
// evict each other before use (8-bit, weight in L2, one core: 24 GB/s with
// the 16 rows in step, 57 with the rows 64 bytes apart, 43 staggered). Each
// half's D is reduced to 2 vectors of partial sums straight away; the tree
// is linear, so those also add up over the two segments of an 8-bit group
// of 128.
//
// 4-bit x arrives as each 8 columns [0, 2, 4, 6, 1, 3, 5, 7] (prepare_int8):
// lane l's low nibbles meet bytes 8l..8l+3 (the even dwords of the segment's
// 128 x bytes), its high nibbles bytes 8l+4..8l+7 (the odd dwords).
namespace {

// Rows 8h..8h+7 of D (8 vectors, lane l = that row's sum over lane l's
// columns) to f[0] (rows 8h..8h+3) and f[1] (rows 8h+4..8h+7): 128-bit lane
// k of each holds its 4 rows' sums over D lanes 4k..4k+3.
inline void reduce_half(__m512i (&d)[8], __m512i (&f)[2]) {
  __m512i e[4];
  GLM_UNROLL
  for (int p = 0; p < 4; ++p)  // 128-bit lane k of e[p]: rows 2p, 2p+1 interleaved, pairs of lanes summed
    e[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2 * p], d[2 * p + 1]), _mm512_unpackhi_epi32(d[2 * p], d[2 * p + 1]));
  GLM_UNROLL
  for (int q = 0; q < 2; ++q)
    f[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(e[2 * q], e[2 * q + 1]), _mm512_unpackhi_epi64(e[2 * q], e[2 * q + 1]));
}

// The two halves' partial sums (lo: rows 0-7, hi: rows 8-15) to, for each
// group they hold (16 / kLanes of them; kLanes = 4, 8 or 16 D lanes per
// group), the 16 rows' group sums in row order: out[0] for D lanes
// 0..kLanes-1, ...
template <int kLanes>
inline void reduce_groups(const __m512i (&lo)[2], const __m512i (&hi)[2], __m512i* out) {
  if constexpr (kLanes == 4) {  // group k = 128-bit lane k: a 4 x 4 transpose of 128-bit blocks
    const __m512i t0 = _mm512_shuffle_i32x4(lo[0], lo[1], 0x44), t1 = _mm512_shuffle_i32x4(lo[0], lo[1], 0xee);
    const __m512i t2 = _mm512_shuffle_i32x4(hi[0], hi[1], 0x44), t3 = _mm512_shuffle_i32x4(hi[0], hi[1], 0xee);
    out[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
    out[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
    out[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
    out[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
  } else {  // w0, w1: [rows 8h..8h+3 of lanes 0-7, of lanes 8-15, rows 8h+4..8h+7 of lanes 0-7, of 8-15]
    const __m512i w0 = _mm512_add_epi32(_mm512_shuffle_i32x4(lo[0], lo[1], 0x88), _mm512_shuffle_i32x4(lo[0], lo[1], 0xdd));
    const __m512i w1 = _mm512_add_epi32(_mm512_shuffle_i32x4(hi[0], hi[1], 0x88), _mm512_shuffle_i32x4(hi[0], hi[1], 0xdd));
    const __m512i low = _mm512_shuffle_i32x4(w0, w1, 0x88), high = _mm512_shuffle_i32x4(w0, w1, 0xdd);
    if constexpr (kLanes == 8) {
      out[0] = low;
      out[1] = high;
    } else {
      out[0] = _mm512_add_epi32(low, high);
    }
  }
}

// Rows r0.. r0 + 15 start at `base`, `stride` bytes apart (a partial last
// block comes copied and zero padded); `next_block` is how far the next
// block's rows are (0: none): while a row's segment is read, the same
// segment of the row 16 further on is prefetched, a whole block ahead
// (prefetching along the row instead left int4 at ~65% of the read
// bandwidth; two or three blocks ahead measured 0.98-1.01x, session 27).
// Token t's outputs r0 .. r0 + rows - 1 are stored.
template <int BITS, int G, ScaleType ST>
void int8_block_gemv(const LinearArgs& a, const uint8_t* base, int64_t stride, int64_t next_block, int64_t r0, int rows,
                     int64_t t, const BlockScales& block) {
  constexpr int64_t kSegment = kSegmentColumns<BITS>;
  constexpr int kColumnsPerLane = 32 / BITS;
  constexpr int kGroupLanes = G / kColumnsPerLane;              // 4-bit: 4, 8, 16; 8-bit: 8, 16, 32
  constexpr int kLanes = kGroupLanes < 16 ? kGroupLanes : 16;  // lanes of one group within a segment
  constexpr int64_t kSegmentsPerGroup = kGroupLanes > 16 ? kGroupLanes / 16 : 1;
  constexpr int64_t kBytes = 64;
  const int64_t full = a.in / kSegment;                         // whole segments
  const int64_t segments = full + (full * kSegment < a.in);     // and a part one (whole groups, G < kSegment)
  const int64_t part_columns = a.in - full * kSegment;
  const __mmask64 part_mask = (__mmask64{1} << (part_columns * BITS / 8)) - 1;
  const int64_t groups = a.in / G;
  const int8_t* xq = a.xq + t * a.xq_stride;
  const float* dx = a.xscale + t * groups;
  const float* xsum = a.xsum + t * groups;
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512 acc = _mm512_setzero_ps(), bias_acc = _mm512_setzero_ps();
  int64_t g = 0;
  auto finish_group = [&](__m512i sum) {
    __m512 s, b;
    group_scales<ST>(block, g, s, b);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(s, _mm512_set1_ps(dx[g])), acc);
    bias_acc = _mm512_fmadd_ps(b, _mm512_set1_ps(xsum[g]), bias_acc);
    ++g;
  };
  // Segment `segment`'s x as the two vectors lanes meet (8-bit: one, twice).
  auto load_x = [&](int64_t segment, __m512i (&x)[2]) {
    if constexpr (BITS == 4) {
      const __m512i even_dwords = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i x0 = _mm512_loadu_si512(xq + segment * kSegment), x1 = _mm512_loadu_si512(xq + segment * kSegment + 64);
      x[0] = _mm512_permutex2var_epi32(x0, even_dwords, x1);
      x[1] = _mm512_permutex2var_epi32(x0, _mm512_add_epi32(even_dwords, _mm512_set1_epi32(1)), x1);
    } else {
      x[0] = x[1] = _mm512_loadu_si512(xq + segment * kSegment);
    }
  };
  // Half h's rows on segment `segment`, reduced to f. Each row's 64 bytes
  // are loaded just before their use; one walking pointer instead of 8
  // keeps the general registers (and so the vector ones) from spilling.
  auto dot_half = [&](int h, int64_t segment, __m512i (&f)[2]) {
    __m512i x[2];
    load_x(segment, x);
    __m512i d[8];
    const uint8_t* p = base + 8 * h * stride + segment * kBytes;
    auto dot_row = [&](int i, __m512i w) {
      if constexpr (BITS == 4) {
        d[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w, nibble), x[0]);
        d[i] = _mm512_dpbusd_epi32(d[i], _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble), x[1]);
      } else {
        d[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[0]);
      }
    };
    if (segment < full) {
      GLM_UNROLL
      for (int i = 0; i < 8; ++i) {
        const __m512i w = _mm512_loadu_si512(p);
        __builtin_prefetch(p + next_block, 0, 2);
        p += stride;
        __asm__("" : "+r"(p));  // stops GCC from keeping 8 row pointers per half (which spill)
        dot_row(i, w);
      }
    } else {
      GLM_UNROLL
      for (int i = 0; i < 8; ++i, p += stride) dot_row(i, _mm512_maskz_loadu_epi8(part_mask, p));
    }
    reduce_half(d, f);
  };
  // Rows 8-15 trail rows 0-7 by kStagger segments, so that the lines in
  // flight at once (each half's demanded ones and those the hardware
  // prefetcher pulls next in each row) fall in different L1 sets (8-bit
  // rows of 4096, weight in L2, one core: stagger 1 30 GB/s, 4 40, 8 43).
  // Rows 0-7's finished partial sums wait in a ring.
  constexpr int64_t kStagger = 8;
  __m512i lo_sums[2], hi_sums[2];
  __m512i lo_done[kStagger][2];  // by (segment ending the group) % kStagger
  for (int64_t s = 0; s < segments + kStagger; ++s) {
    if (s >= kStagger) {  // rows 8-15 on segment s - kStagger, then the groups it ends
      const int64_t trailing = s - kStagger;
      __m512i f[2];
      dot_half(1, trailing, f);
      const bool first = trailing % kSegmentsPerGroup == 0;
      GLM_UNROLL
      for (int q = 0; q < 2; ++q) hi_sums[q] = first ? f[q] : _mm512_add_epi32(hi_sums[q], f[q]);
      if (trailing % kSegmentsPerGroup == kSegmentsPerGroup - 1 || trailing == full) {
        __m512i sums[16 / kLanes];
        reduce_groups<kLanes>(lo_done[trailing % kStagger], hi_sums, sums);
        const int present = trailing == full ? static_cast<int>(part_columns / G) : 16 / kLanes;
        GLM_UNROLL
        for (int k = 0; k < 16 / kLanes; ++k)
          if (k < present) finish_group(sums[k]);
      }
    }
    if (s < segments) {  // rows 0-7 on segment s
      __m512i f[2];
      dot_half(0, s, f);
      const bool first = s % kSegmentsPerGroup == 0;
      GLM_UNROLL
      for (int q = 0; q < 2; ++q) lo_sums[q] = first ? f[q] : _mm512_add_epi32(lo_sums[q], f[q]);
      if (s % kSegmentsPerGroup == kSegmentsPerGroup - 1 || s == full) {
        lo_done[s % kStagger][0] = lo_sums[0];
        lo_done[s % kStagger][1] = lo_sums[1];
      }
    }
  }
  const __mmask16 mask = first_lanes16(rows);
  const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(mask, a.bias + r0) : _mm512_setzero_ps();
  _mm512_mask_storeu_ps(a.out + t * a.out_features + r0, mask, _mm512_add_ps(_mm512_add_ps(acc, bias_acc), bias));
}

// Each token through rows [r0, r0 + rows), one after another (the block's
// weights stay in L2 for the next token): a partial block is copied into
// `spare` (16 rows, zero padded) so the kernel always reads 16.
template <int BITS, int G, ScaleType ST>
void int8_gemv_block(const LinearArgs& a, int64_t r0, int rows, int64_t row_end, uint8_t* spare, const BlockScales& block) {
  const int64_t row_bytes = a.in * BITS / 8;
  if (rows == 16) {
    const int64_t next_block = r0 + 32 <= row_end ? 16 * a.w_stride : 0;
    for (int64_t t = 0; t < a.n_tokens; ++t)
      int8_block_gemv<BITS, G, ST>(a, a.w + r0 * a.w_stride, a.w_stride, next_block, r0, rows, t, block);
    return;
  }
  for (int i = 0; i < 16; ++i)
    if (i < rows) std::memcpy(spare + i * row_bytes, a.w + (r0 + i) * a.w_stride, static_cast<size_t>(row_bytes));
    else std::memset(spare + i * row_bytes, 0, static_cast<size_t>(row_bytes));
  for (int64_t t = 0; t < a.n_tokens; ++t) int8_block_gemv<BITS, G, ST>(a, spare, row_bytes, 0, r0, rows, t, block);
}

template <int BITS, ScaleType ST>
void int8_gemv_block_of_group(const LinearArgs& a, int64_t r0, int rows, int64_t row_end, uint8_t* spare,
                              const BlockScales& block) {
  switch (a.group) {
    case 32: return int8_gemv_block<BITS, 32, ST>(a, r0, rows, row_end, spare, block);
    case 64: return int8_gemv_block<BITS, 64, ST>(a, r0, rows, row_end, spare, block);
    default: return int8_gemv_block<BITS, 128, ST>(a, r0, rows, row_end, spare, block);
  }
}

}  // namespace

// Tokens per call up to which each goes through the one-token kernel (the
// block's weights in L2 after the first) rather than through a repacked
// block (one core, 4096 columns in L2; 192 int4 rows: 5 tokens 52 us this
// way, 60 us repacked, 6 tokens 62 vs 64; 96 int8 rows: 38 vs 38, 46 vs 41).
constexpr int64_t kGemvTokens = 5;

template <int BITS>
void int8_rows_of(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  constexpr int T = 8;  // 8 int32 sums + 8 + 8 f32 sums of 32 zmm
  const int64_t groups = a.in / a.group;
  __m512i* packed = reinterpret_cast<__m512i*>(a.scratch);
  float* scales = reinterpret_cast<float*>(a.scratch + int8_packed_bytes(a.in));
  float* biases = scales + 16 * groups;
  const bool gemv = a.n_tokens <= kGemvTokens;
  // There, 16-bit scales and biases of one type travel as pairs.
  const bool pairs = gemv && a.scale_type == a.bias_type && a.scale_type != ScaleType::F32;
  const int64_t block_pair_count = groups * 16;  // of one block in a.block_pairs
  BlockScales block;
  block.scales = scales;
  block.biases = biases;
  block.pairs = reinterpret_cast<const uint32_t*>(scales);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += 16) {
    const int rows = static_cast<int>(min64(16, row_end - r0));
    if (pairs) {
      // Precomputed at load (row ranges start on blocks of 16), else transposed now.
      if (a.block_pairs) block.pairs = a.block_pairs + r0 / 16 * block_pair_count;
      else repack_scale_pairs(a, r0, rows, reinterpret_cast<uint32_t*>(scales));
      if (a.scale_type == ScaleType::BF16) int8_gemv_block_of_group<BITS, ScaleType::BF16>(a, r0, rows, row_end, a.scratch, block);
      else int8_gemv_block_of_group<BITS, ScaleType::F16>(a, r0, rows, row_end, a.scratch, block);
      continue;
    }
    if (a.block_pairs) scales_from_pairs(a.block_pairs + r0 / 16 * block_pair_count, groups, a.scale_type, scales, biases);
    else repack_scales(a, r0, rows, scales, biases);
    if (gemv) {
      int8_gemv_block_of_group<BITS, ScaleType::F32>(a, r0, rows, row_end, a.scratch, block);
      continue;
    }
    repack_block<BITS>(a, r0, rows, packed);
    for (int64_t t0 = 0; t0 < a.n_tokens; t0 += T) {
      switch (min64(T, a.n_tokens - t0)) {
        case 1: int8_block_tile<1>(a, r0, rows, t0, packed, scales, biases); break;
        case 2: int8_block_tile<2>(a, r0, rows, t0, packed, scales, biases); break;
        case 3: int8_block_tile<3>(a, r0, rows, t0, packed, scales, biases); break;
        case 4: int8_block_tile<4>(a, r0, rows, t0, packed, scales, biases); break;
        case 5: int8_block_tile<5>(a, r0, rows, t0, packed, scales, biases); break;
        case 6: int8_block_tile<6>(a, r0, rows, t0, packed, scales, biases); break;
        case 7: int8_block_tile<7>(a, r0, rows, t0, packed, scales, biases); break;
        case 8: int8_block_tile<8>(a, r0, rows, t0, packed, scales, biases); break;
      }
    }
  }
}

}  // namespace

void int8_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  if (a.kind == WeightKind::Affine4) int8_rows_of<4>(a, row_begin, row_end);
  else int8_rows_of<8>(a, row_begin, row_end);
}

void fill_block_scale_pairs(const LinearArgs& a, uint32_t* out) {
  const int64_t groups = a.in / a.group;
  for (int64_t r0 = 0; r0 < a.out_features; r0 += 16)
    repack_scale_pairs(a, r0, static_cast<int>(min64(16, a.out_features - r0)), out + r0 / 16 * groups * 16);
}

void prepare_int8(const float* x, int64_t in, int64_t group, int bits, int8_t* xq, float* steps, float* sums) {
  const int64_t groups = in / group;
  for (int64_t g = 0; g < groups; ++g) {
    const float* block = x + g * group;
    __m512 absmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < group; k += 16) absmax = _mm512_max_ps(absmax, _mm512_abs_ps(_mm512_loadu_ps(block + k)));
    const float top = _mm512_reduce_max_ps(absmax);
    const __m512 inverse = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    __m512i total = _mm512_setzero_si512();
    for (int64_t k = 0; k < group; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(block + k), inverse));  // nearest even
      total = _mm512_add_epi32(total, q);
      __m128i bytes = _mm512_cvtsepi32_epi8(q);
      if (bits == 4)  // each 8 columns as [0, 2, 4, 6, 1, 3, 5, 7]
        bytes = _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * group + k), bytes);
    }
    steps[g] = top / 127.0f;
    sums[g] = steps[g] * static_cast<float>(_mm512_reduce_add_epi32(total));
  }
}

// ---- bf16 weights x bf16 activations, packed panels (fast-prompts) ----
//
// bf16_rows keeps rows in registers: per 32 columns it loads 4 weight rows
// and 6 tokens, each load a new cache line from L2, and reduces every output
// horizontally at the end. On a 2-core Zen 4 VM it reached 85-90% of the
// VDPBF16PS peak on a lone 512-token projection, but 55-70% inside the model
// (an expert's ~32 tokens of a 512-token prompt, L2 shared with whatever the
// neighbours run). Here rows go in the 16 lanes instead, as int8_rows does:
// a block of 48 rows (3 vectors of 16) is transposed, kBf16PanelColumns
// columns at a time, into the thread's scratch as one zmm per column pair
// and vector (lane r: row r's two bf16), and every token then streams over
// it with its pair broadcast: per column pair 3 loads of the panel (one
// sequential stream) and, per token, one broadcast dword that stays in L1
// for 16 pairs. 3 x 8 accumulators hold 48 rows x 8 tokens; the outputs
// come out as 48 contiguous floats per token, with no reduction.
//
// A lane sums its row's column pairs in column order, whatever the tile or
// the thread, so a token's bits do not depend on the batch within this
// kernel; they differ from bf16_rows' (another order), which is why only
// fast-prompts uses it (for calls of packed_min_tokens or more; smaller
// ones take bf16_lanes_rows below, with the same bits): there a token's
// bits depend only on whether its step was a prompt.
namespace {

// A block is kBf16PanelRows rows: kPanelVectors vectors of 16 rows. A tile
// keeps kPanelVectors x kBf16PanelTokens = 24 accumulators in registers, the
// panel vectors of one column pair and a broadcast beside them (of 32).
constexpr int kPanelVectors = kBf16PanelRows / 16;
constexpr int kBf16PanelTokens = 24 / kPanelVectors;

// Columns [k0, k0 + columns) of rows [r0, r0 + rows) (rows <= 16 kPanelVectors; missing
// rows and columns past `in` are zero) into panel[pair][h] (vector h: rows
// r0 + 16h ..).
inline void bf16_pack_panel(const LinearArgs& a, int64_t r0, int rows, int64_t k0, int64_t columns, __m512i* panel) {
  for (int64_t c = 0; c < columns; c += 32) {
    const int64_t left = a.in - (k0 + c);
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << left) - 1);  // left > 0: c < columns
    for (int h = 0; h < kPanelVectors; ++h) {
      __m512i r[16];
      GLM_UNROLL
      for (int i = 0; i < 16; ++i) {
        const int row = 16 * h + i;
        r[i] = row < rows ? _mm512_maskz_loadu_epi16(mask, a.w + (r0 + row) * a.w_stride + (k0 + c) * 2)
                          : _mm512_setzero_si512();
      }
      transpose16x16(r);  // r[j]: columns k0 + c + 2j, + 1 of the 16 rows
      GLM_UNROLL
      for (int j = 0; j < 16; ++j) _mm512_store_si512(panel + (c / 2 + j) * kPanelVectors + h, r[j]);
    }
  }
}

// The next panel's source rows, pulled into L2 a few lines per column pair
// while this panel's token tiles run, so that its transposition reads L2.
struct PanelPrefetch {
  const uint8_t* base = nullptr;  // first row, first column of the next panel (null: none)
  int64_t stride = 0, rows = 0, lines_per_row = 0;
  int per_step = 0;              // lines per column pair
  int64_t row = 0, line = 0;     // the next line to pull
  void step() {
    for (int i = 0; i < per_step && row < rows; ++i) {
      __builtin_prefetch(base + row * stride + line * 64, 0, 2);
      if (++line == lines_per_row) line = 0, ++row;
    }
  }
};

// Tokens [t0, t0 + T) x the block's rows over the panel's `pairs` column
// pairs from column k0. The first panel starts the sums at zero, later ones
// continue the partial sums left in `out`; the last adds the bias.
template <int T>
void bf16_panel_tile(const LinearArgs& a, const __m512i* panel, int64_t pairs, int64_t r0, int rows, int64_t t0,
                     int64_t k0, bool first, bool last, PanelPrefetch& prefetch) {
  __mmask16 mask[kPanelVectors];
  GLM_UNROLL
  for (int h = 0; h < kPanelVectors; ++h) {
    mask[h] = first_lanes16(rows - 16 * h);
  }
  const uint16_t* xs[T];  // each token's columns from k0, read a pair (a dword) at a time
  GLM_UNROLL
  for (int t = 0; t < T; ++t) xs[t] = a.xb + (t0 + t) * a.xb_stride + k0;
  __m512 acc[kPanelVectors][T];
  GLM_UNROLL
  for (int t = 0; t < T; ++t)
    GLM_UNROLL
    for (int h = 0; h < kPanelVectors; ++h)
      acc[h][t] = first ? _mm512_setzero_ps()
                        : _mm512_maskz_loadu_ps(mask[h], a.out + (t0 + t) * a.out_features + r0 + 16 * h);
  for (int64_t j = 0; j < pairs; ++j) {
    prefetch.step();
    __m512bh w[kPanelVectors];
    GLM_UNROLL
    for (int h = 0; h < kPanelVectors; ++h) w[h] = (__m512bh)_mm512_load_si512(panel + kPanelVectors * j + h);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      int32_t pair;
      std::memcpy(&pair, xs[t] + 2 * j, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      GLM_UNROLL
      for (int h = 0; h < kPanelVectors; ++h) acc[h][t] = _mm512_dpbf16_ps(acc[h][t], w[h], x);
    }
  }
  __m512 bias[kPanelVectors];
  GLM_UNROLL
  for (int h = 0; h < kPanelVectors; ++h)
    bias[h] = last && a.bias ? _mm512_maskz_loadu_ps(mask[h], a.bias + r0 + 16 * h) : _mm512_setzero_ps();
  GLM_UNROLL
  for (int t = 0; t < T; ++t)
    GLM_UNROLL
    for (int h = 0; h < kPanelVectors; ++h)
      _mm512_mask_storeu_ps(a.out + (t0 + t) * a.out_features + r0 + 16 * h, mask[h],
                            last ? _mm512_add_ps(acc[h][t], bias[h]) : acc[h][t]);
}

// A tile of `tokens` (<= T) tokens.
template <int T>
void bf16_panel_tiles(int64_t tokens, const LinearArgs& a, const __m512i* panel, int64_t pairs, int64_t r0, int rows,
                      int64_t t0, int64_t k0, bool first, bool last, PanelPrefetch& prefetch) {
  if constexpr (T > 0) {
    if (tokens == T) return bf16_panel_tile<T>(a, panel, pairs, r0, rows, t0, k0, first, last, prefetch);
    bf16_panel_tiles<T - 1>(tokens, a, panel, pairs, r0, rows, t0, k0, first, last, prefetch);
  }
}

}  // namespace

void bf16_packed_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  __m512i* panel = reinterpret_cast<__m512i*>(a.scratch);
  const int64_t padded = bf16_stride(a.in);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kBf16PanelRows) {
    const int rows = static_cast<int>(min64(kBf16PanelRows, row_end - r0));
    for (int64_t k0 = 0; k0 < padded; k0 += kBf16PanelColumns) {
      const int64_t columns = min64(kBf16PanelColumns, padded - k0);
      bf16_pack_panel(a, r0, rows, k0, columns, panel);
      PanelPrefetch next;
      next.stride = a.w_stride;
      if (k0 + columns < padded) {  // the same rows' next columns
        next.base = a.w + r0 * a.w_stride + (k0 + columns) * 2;
        next.rows = rows;
        next.lines_per_row = min64(kBf16PanelColumns, padded - k0 - columns) / 32;
      } else if (r0 + kBf16PanelRows < row_end) {  // the next rows' first columns
        next.base = a.w + (r0 + kBf16PanelRows) * a.w_stride;
        next.rows = min64(kBf16PanelRows, row_end - r0 - kBf16PanelRows);
        next.lines_per_row = min64(kBf16PanelColumns, padded) / 32;
      }
      // Spread over every tile's column pairs (at least one line a pair).
      const int64_t steps = (a.n_tokens + kBf16PanelTokens - 1) / kBf16PanelTokens * (columns / 2);
      next.per_step = static_cast<int>((next.rows * next.lines_per_row + steps - 1) / steps);
      const bool first = k0 == 0, last = k0 + columns >= padded;
      for (int64_t t0 = 0; t0 < a.n_tokens; t0 += kBf16PanelTokens) {
        const int64_t tokens = min64(kBf16PanelTokens, a.n_tokens - t0);
        bf16_panel_tiles<kBf16PanelTokens>(tokens, a, panel, columns / 2, r0, rows, t0, k0, first, last, next);
      }
    }
  }
}

// ---- the same bits for small calls: tokens in the lanes ----
//
// An expert's share of a prompt (~32 tokens of 512) does not repay the
// panels' transposition, and bf16_rows sums in another order. Here the
// roles are swapped: the call's few tokens are transposed instead (once per
// call and thread, cheap next to the weights), 16 tokens a vector and one
// vector per column pair, and each weight row's column pair is broadcast
// against them, straight from the row as stored (R rows streaming, no
// copy). A lane holds one (row, token) and adds the row's pairs in column
// order with the same VDPBF16PS, so every output gets the bits
// bf16_packed_rows gives it (bf16 products are exact in f32, so which
// operand is broadcast does not matter): fast-prompts takes this kernel
// below packed_min_tokens and a token's bits do not depend on how many
// tokens its call had. V vectors of tokens (up to 4: 64 tokens) x R rows;
// results are scattered to out[token][row].
namespace {

// xb's tokens [0, n_tokens) as [pair][V * 16] dwords (missing tokens zero).
inline void bf16_transpose_tokens(const LinearArgs& a, int vectors, int32_t* xt) {
  const int64_t pairs = bf16_stride(a.in) / 2;
  for (int v = 0; v < vectors; ++v)
    for (int64_t j0 = 0; j0 < pairs; j0 += 16) {
      __m512i r[16];
      GLM_UNROLL
      for (int i = 0; i < 16; ++i) {
        const int64_t token = 16 * v + i;
        r[i] = token < a.n_tokens ? _mm512_loadu_si512(a.xb + token * a.xb_stride + 2 * j0) : _mm512_setzero_si512();
      }
      transpose16x16(r);  // r[i]: pair j0 + i of the 16 tokens
      GLM_UNROLL
      for (int i = 0; i < 16; ++i) _mm512_store_si512(xt + ((j0 + i) * vectors + v) * 16, r[i]);
    }
}

// V vectors of 16 tokens; with kHalf the last holds at most 8 tokens and
// goes in a ymm (half a zmm's work on a core that splits zmm operations in
// two, as Zen 4 does): 40 tokens take two zmm and a ymm, not three zmm with
// 8 lanes idle (bench_linear --compare-bf16 on a 2-core Zen 4 VM, in three
// runs: 33 tokens 1.09-1.22x, 40 1.10-1.24x, 56 1.02-1.17x). A lane's
// arithmetic is the same in either width.
template <int V, int R, bool kHalf>
void bf16_lanes_tile(const LinearArgs& a, const int32_t* xt, int64_t r0) {
  constexpr int kFull = kHalf ? V - 1 : V;  // zmm vectors of tokens
  const int64_t pairs = bf16_stride(a.in) / 2;
  const uint8_t* row[R];
  GLM_UNROLL
  for (int r = 0; r < R; ++r) row[r] = a.w + (r0 + r) * a.w_stride;
  __m512 acc[R][kFull > 0 ? kFull : 1];
  __m256 acc_half[R];
  GLM_UNROLL
  for (int r = 0; r < R; ++r) {
    GLM_UNROLL
    for (int v = 0; v < kFull; ++v) acc[r][v] = _mm512_setzero_ps();
    acc_half[r] = _mm256_setzero_ps();
  }
  // Pair j of row r as stored; past the row (the zero padding of x up to a
  // multiple of 32 columns, and an odd width's last pair) only the values
  // the row has, the rest zero, as the panels hold them.
  const int64_t whole = a.in / 2;
  auto step = [&](int64_t j, bool inside) {
    __m512bh x[kFull > 0 ? kFull : 1];
    GLM_UNROLL
    for (int v = 0; v < kFull; ++v) x[v] = (__m512bh)_mm512_load_si512(xt + (j * V + v) * 16);
    __m256bh x_half;
    if constexpr (kHalf) x_half = (__m256bh)_mm256_load_si256(reinterpret_cast<const __m256i*>(xt + (j * V + kFull) * 16));
    GLM_UNROLL
    for (int r = 0; r < R; ++r) {
      int32_t pair = 0;
      if (inside) std::memcpy(&pair, row[r] + 4 * j, 4);
      else if (2 * j < a.in) std::memcpy(&pair, row[r] + 4 * j, 2);
      const __m512i w = _mm512_set1_epi32(pair);
      GLM_UNROLL
      for (int v = 0; v < kFull; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)w, x[v]);
      if constexpr (kHalf) acc_half[r] = _mm256_dpbf16_ps(acc_half[r], (__m256bh)_mm512_castsi512_si256(w), x_half);
    }
  };
  for (int64_t j = 0; j < whole; ++j) {
    if ((j & 15) == 0) GLM_PREFETCH_ROWS(row, R, 4 * j + 1024);
    step(j, true);
  }
  for (int64_t j = whole; j < pairs; ++j) step(j, false);
  const __m512i token_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                   _mm512_set1_epi32(static_cast<int>(a.out_features)));
  GLM_UNROLL
  for (int v = 0; v < kFull; ++v) {
    const __mmask16 mask = first_lanes16(a.n_tokens - 16 * v);
    GLM_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 sum = a.bias ? _mm512_add_ps(acc[r][v], _mm512_set1_ps(a.bias[r0 + r])) : acc[r][v];
      _mm512_mask_i32scatter_ps(a.out + 16 * v * a.out_features + r0 + r, mask, token_offsets, sum, 4);
    }
  }
  if constexpr (kHalf) {
    const __mmask8 mask = static_cast<__mmask8>(first_lanes16(a.n_tokens - 16 * kFull));
    GLM_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 sum = a.bias ? _mm256_add_ps(acc_half[r], _mm256_set1_ps(a.bias[r0 + r])) : acc_half[r];
      _mm256_mask_i32scatter_ps(a.out + 16 * kFull * a.out_features + r0 + r, mask, _mm512_castsi512_si256(token_offsets),
                                sum, 4);
    }
  }
}

// R rows a tile: 24 / V accumulators' worth, at most 12 (the rows' pointers
// must stay in registers); 24 rows, the threads' unit, are whole tiles.
template <int V, bool kHalf>
void bf16_lanes_rows_of(const LinearArgs& a, const int32_t* xt, int64_t row_begin, int64_t row_end) {
  constexpr int R = 24 / V < 12 ? 24 / V : 12;
  int64_t r = row_begin;
  for (; r + R <= row_end; r += R) bf16_lanes_tile<V, R, kHalf>(a, xt, r);
  for (; r < row_end; ++r) bf16_lanes_tile<V, 1, kHalf>(a, xt, r);
}

}  // namespace

void bf16_lanes_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  int32_t* xt = reinterpret_cast<int32_t*>(a.scratch);
  const int vectors = static_cast<int>((a.n_tokens + 15) / 16);
  bf16_transpose_tokens(a, vectors, xt);
  // The last vector's tokens fit a ymm. Only from 3 vectors on: with one or
  // two it measured slower or even (8 tokens 120 -> 100 GFLOP/s, 20 and 24
  // tokens 0.80-1.07x): there a tile's row broadcasts, not its products, set
  // the pace.
  const bool half = vectors >= 3 && a.n_tokens - 16 * (vectors - 1) <= 8;
  switch (vectors) {
    case 1: return bf16_lanes_rows_of<1, false>(a, xt, row_begin, row_end);
    case 2: return bf16_lanes_rows_of<2, false>(a, xt, row_begin, row_end);
    case 3: return half ? bf16_lanes_rows_of<3, true>(a, xt, row_begin, row_end) : bf16_lanes_rows_of<3, false>(a, xt, row_begin, row_end);
    case 4: return half ? bf16_lanes_rows_of<4, true>(a, xt, row_begin, row_end) : bf16_lanes_rows_of<4, false>(a, xt, row_begin, row_end);
  }
}

#else  // not an x86-64 GCC/Clang build: never selected

bool compiled() { return false; }
void exact_rows(const LinearArgs&, int64_t, int64_t) {}
void bf16_rows(const LinearArgs&, int64_t, int64_t) {}
void bf16_packed_rows(const LinearArgs&, int64_t, int64_t) {}
void bf16_lanes_rows(const LinearArgs&, int64_t, int64_t) {}
void int8_rows(const LinearArgs&, int64_t, int64_t) {}
void prepare_bf16(const float*, int64_t, uint16_t*) {}
void prepare_int8(const float*, int64_t, int64_t, int, int8_t*, float*, float*) {}
void fill_block_scale_pairs(const LinearArgs&, uint32_t*) {}

#endif

}  // namespace glm::cpu::kernels::avx512

#ifdef GLM_KERNELS_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
