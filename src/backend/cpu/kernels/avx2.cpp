// AVX2 + FMA + F16C projection kernels: the exact-activation kernel of
// exact_impl.inc over 8-lane ymm registers, for CPUs without AVX-512 (and
// for GLM_CPU_ISA=avx2). Compiled for those instructions by a target pragma
// and only called after dispatch.cpp has checked the CPU. No fast
// (bf16/int8-activation) kernels here: AVX2 has no bf16 dot product, and its
// u8 x s8 product (VPMADDUBSW) saturates in int16.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backend/cpu/kernels/kernel_args.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GLM_KERNELS_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#endif

namespace glm::cpu::kernels::avx2 {

#ifdef GLM_KERNELS_AVX2

bool compiled() { return true; }

namespace {

#include "backend/cpu/kernels/scalar_helpers.inc"

struct V {
  using Reg = __m256;
  static constexpr int N = 8;
  static constexpr int kRows = 2;       // 2 rows x 4 tokens = 8 accumulators of 16 ymm
  static constexpr int kRowsSmall = 4;  // decode: 4 independent FMA chains
  static constexpr int kTokens = 4;
  static constexpr int kTokensAffine = 4;

  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float value) { return _mm256_set1_ps(value); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg loadx(const float* p) { return _mm256_loadu_ps(p); }
  static float hsum(Reg r) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static Reg load_f32(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
  static Reg load_bf16(const uint8_t* p) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static Reg load_f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static Reg load_u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // 8 bytes = 16 nibbles, column 2i in the low nibble of byte i.
  static void load_u4(const uint8_t* p, Reg& first, Reg& second) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m128i columns = _mm_unpacklo_epi8(lo, hi);  // columns 0..15 as bytes
    first = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(columns));
    second = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(columns, 8)));
  }
};

}  // namespace

#include "backend/cpu/kernels/exact_impl.inc"

void exact_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end) {
  switch (args.kind) {
    case WeightKind::F32: return exact_rows_of<WeightKind::F32>(args, row_begin, row_end);
    case WeightKind::BF16: return exact_rows_of<WeightKind::BF16>(args, row_begin, row_end);
    case WeightKind::F16: return exact_rows_of<WeightKind::F16>(args, row_begin, row_end);
    case WeightKind::Affine4: return exact_rows_of<WeightKind::Affine4>(args, row_begin, row_end);
    case WeightKind::Affine8: return exact_rows_of<WeightKind::Affine8>(args, row_begin, row_end);
  }
}

#else  // not an x86-64 GCC/Clang build: never selected

bool compiled() { return false; }
void exact_rows(const LinearArgs&, int64_t, int64_t) {}

#endif

}  // namespace glm::cpu::kernels::avx2

#ifdef GLM_KERNELS_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
