// AVX2 + FMA + F16C projection kernels, for CPUs without AVX-512 (and for
// GLM_CPU_ISA=avx2): float weights (f32, bf16, f16) in one FMA chain order
// from f32 panels (prompts) or rows transposed in registers (a few tokens),
// the exact-activation kernel of exact_impl.inc over 8-lane ymm registers
// for affine weights, and an int8-activation kernel for affine 4- and 8-bit
// weights (VPMADDUBSW) for CPUs without AVX512_VNNI. Compiled for those
// instructions by a target pragma and only called after dispatch.cpp has
// checked the CPU. No bf16-activation kernel (AVX2 has no bf16 dot
// product). 8-bit weights take the int8 kernel with one side split into
// nibbles (x for one token, q for prompt tiles), since VPMADDUBSW's int16
// pair sums would saturate for 255 x 127 x 2.
#include <immintrin.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

#include "backend/cpu/avx2_math.inc"
#include "backend/cpu/kernels/scalar_helpers.inc"

struct V {
  using Reg = __m256;
  static constexpr int N = 8;
  static constexpr int kRows = 2;  // 2 rows x 4 tokens = 8 accumulators of 16 ymm
  // bf16/f16: 3 rows x 4 tokens = 12 accumulators + 3 weights + 1 x, all 16 ymm.
  // Per 8 columns that is 48 + 128 bytes from L2 for 12 FMAs, against 160
  // for 8 with 2 rows: 512 tokens bf16 65-81 -> 87-98 GFLOP/s. f32 (wider
  // weight loads) and the affine kinds (dequantized weights need more
  // registers) were as fast or slower with 3.
  static constexpr int kRowsHalf = 3;
  static constexpr int kRowsSmall = 4;  // decode: 4 independent FMA chains
  static constexpr int kTokens = 4;
  static constexpr int kTokensAffine = 4;

  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float value) { return _mm256_set1_ps(value); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg loadx(const float* p) { return _mm256_loadu_ps(p); }
  static float hsum(Reg r) { return hsum8(r); }
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

// Prompt kernels that first rewrite a block of weight rows (widen_panel,
// repack_block) and then pass over it with tiles of tokens read nothing
// from memory during the tiles and wait on DRAM during the rewrite. So the
// tiles prefetch into L2, a few lines at a time, the lines the next rewrite
// will read; it then finds them there. (Prefetching inside the rewrite
// instead, or copying rows to a staging buffer first, was slower:
// docs/benchmarks.md, session 23.)
struct NextLines {
  const uint8_t* row[kAvx2PanelRows] = {};
  int rows = 0;
  int64_t issued = 0, total = 0;
  int64_t per_issue = 0;

  // Rows [r0, r0 + n_rows), bytes [byte0, byte1) of each, spread over `issues` calls of issue().
  void start(const LinearArgs& a, int64_t r0, int n_rows, int64_t byte0, int64_t byte1, int64_t issues) {
    rows = n_rows;
    for (int i = 0; i < rows; ++i) row[i] = a.w + (r0 + i) * a.w_stride + byte0;
    const int64_t lines_per_row = (byte1 - byte0 + 63) / 64 + 1;  // + 1: a row need not start on a line
    issued = 0;
    total = rows * lines_per_row;
    per_issue = (total + issues - 1) / issues;
  }
  void issue() {
    for (int64_t n = 0; n < per_issue && issued < total; ++n, ++issued)  // line by line, the rows in turn
      _mm_prefetch(reinterpret_cast<const char*>(row[issued % rows] + (issued / rows) * 64), _MM_HINT_T1);
  }
};

// Calls part(t0, size) for n tokens cut into ceil(n / most) consecutive
// parts whose sizes differ by at most one (32 by 6: 6, 6, 5, 5, 5, 5, not
// 6 x 5 and 2): a short last tile keeps fewer independent FMA chains than
// the units' latency needs.
template <class Part>
inline void even_parts(int64_t n, int64_t most, Part&& part) {
  if (n <= 0) return;
  const int64_t parts = (n + most - 1) / most, size = n / parts, one_more = n % parts;
  for (int64_t i = 0, t0 = 0; i < parts; ++i) {
    const int64_t this_size = size + (i < one_more ? 1 : 0);
    part(t0, this_size);
    t0 += this_size;
  }
}

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

// ---- affine 4- and 8-bit weights x int8 activations (VPMADDUBSW) ----
//
// The arithmetic of the AVX-512 VPDPBUSD kernels (avx512.cpp), with the
// int32 group sums formed another way: x is quantized the same way
// (prepare_int8 below: per group xq = round(x / dx), dx = max|x| / 127,
// xsum = dx sum xq), each row's exact int32 group sums are dotted the same
// way, and per group and output the same f32 operations follow (one FMA of
// the scale term, one of the bias term, in group order). So a token gets
// the bits the AVX-512 kernels give it, and the same bits alone or in any
// batch (each token is computed on its own).
//
// Rows go in blocks of 8 (the lanes of the finishing FMAs). For each row and
// 64 columns (32 bytes), the low nibbles (even columns) and high nibbles
// (odd columns) meet x's even and odd columns in VPMADDUBSW (u8 x s8 pairs
// to int16: 2 x 15 x 127 at most, far from saturating), their int16 sum
// (lane m = columns 4m..4m+3), and a tree of horizontal adds over the
// block's 8 rows, widened to int32 by VPMADDWD part way (reduce_pairs8),
// turns those into the rows' group sums, rows in lanes.
//
// 8-bit weights: per row and 32 columns (32 bytes), VPMADDUBSW multiplies
// q (unsigned) by each nibble of x (signed), so no pair saturates; the low
// nibble's and 16 x the high nibble's sums are the exact int32 sum of q x,
// as VPDPBUSD forms it (int8_block_token_8bit).
//
// x layout (prepare_int8): for the one-token 4-bit kernel each 64 columns
// as the 32 even ones then the 32 odd ones; otherwise columns in order.
namespace {

// The halves of an 8-row block's sums: low = rows 0-3 from k0 and 4-7 from
// k1 over their low 128-bit halves, high = the same over the high halves.
inline void join_halves(__m256i k0, __m256i k1, __m256i& low, __m256i& high) {
  low = _mm256_permute2x128_si256(k0, k1, 0x20);
  high = _mm256_permute2x128_si256(k0, k1, 0x31);
}

// 8-bit: lane k of v[i] (int32) is row i's sum over 4 columns of a group,
// and p[j] = VPHADDD(v[2j], v[2j + 1]); returns the 8 rows' whole sums,
// rows in lanes.
inline __m256i reduce_row_pairs8(const __m256i (&p)[4]) {
  // 128-bit half h of k0: rows 0-3, each the sum of its lanes 4h..4h+3; k1: rows 4-7.
  __m256i low, high;
  join_halves(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]), low, high);
  return _mm256_add_epi32(low, high);
}

// 4-bit: lane m of p[i] (int16) is row i's sum over columns 4m..4m+3 of a
// 64-column chunk (at most 4 x 15 x 127 = 7620 in magnitude). Two rounds of
// VPHADDW add 2, then 4 of them (at most 30480: no wrap), and one VPMADDWD
// per 4 rows widens the sums of 8 to int32 (2 multiplies for the block, not
// one per row). kLanes = 4: out[0] = the 8 rows' sums over columns 0-31
// (int16 lanes 0-7), out[1] over 32-63; kLanes = 8: out[0] = the whole sums.
template <int kLanes>
inline void reduce_pairs8(const __m256i (&p)[8], __m256i* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i h0 = _mm256_hadd_epi16(p[0], p[1]), h1 = _mm256_hadd_epi16(p[2], p[3]);
  const __m256i h2 = _mm256_hadd_epi16(p[4], p[5]), h3 = _mm256_hadd_epi16(p[6], p[7]);
  // 128-bit half h of k0: rows 0-3, each the int32 sum of its int16 lanes 8h..8h+7; k1: rows 4-7.
  __m256i low, high;
  join_halves(_mm256_madd_epi16(_mm256_hadd_epi16(h0, h1), ones), _mm256_madd_epi16(_mm256_hadd_epi16(h2, h3), ones),
              low, high);
  if constexpr (kLanes == 4) {
    out[0] = low;
    out[1] = high;
  } else {
    out[0] = _mm256_add_epi32(low, high);
  }
}

// Token t's outputs of rows r0 .. r0 + rows - 1 (rows <= 8): lane i of sums,
// plus the row's bias.
inline void store_rows8(const LinearArgs& a, int64_t r0, int rows, int64_t t, __m256 sums) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sums);
  for (int i = 0; i < rows; ++i) a.out[t * a.out_features + r0 + i] = lanes[i] + (a.bias ? a.bias[r0 + i] : 0.0f);
}

// A pair dword per row (scale in the low half, bias in the high half, both
// bf16) widened to f32: bf16 is the top half of an f32.
inline void widen_bf16_pairs(__m256i both, __m256& scale, __m256& bias) {
  scale = _mm256_castsi256_ps(_mm256_slli_epi32(both, 16));
  bias = _mm256_castsi256_ps(_mm256_and_si256(both, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// Where a one-token pass finds group g's scales and biases for its block's
// 8 rows (lanes): [group][8] f32 arrays filled before the block's passes
// (gather_block_scales, scales_from_pairs8), or, for bf16 scales laid out
// at load, the block's pair dwords themselves, widened in the group's
// epilogue (one load and two operations a group, and no pass writing the
// arrays first). The same f32 values either way.
struct ScaleArrays {
  const float* scales;  // [group][8]
  const float* biases;
  void at(int64_t g, __m256& scale, __m256& bias) const {
    scale = _mm256_loadu_ps(scales + 8 * g);
    bias = _mm256_loadu_ps(biases + 8 * g);
  }
};
struct Bf16Pairs {
  const uint32_t* pairs;  // the block's 8 dwords of group g at pairs[16 g] (fill_block_scale_pairs)
  void at(int64_t g, __m256& scale, __m256& bias) const {
    widen_bf16_pairs(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pairs + 16 * g)), scale, bias);
  }
};

// Tokens t .. t + T - 1 (T = 1 to 3) through rows [r0, r0 + rows) (rows <=
// 8; missing rows repeat the last and are not stored), the block's scales
// and biases from `block`. The tokens share each row's loads and nibble
// split (calls of 2-5 tokens, in turns on the 3-layer int4 model, session
// 25: batch-2 decode 1.16 and batch 4 1.10 with pairs; threes over pairs
// and singles, batch 3 1.10 and batch 5 1.06); each token's sums are the
// same.
template <int G, int T, bool kPrefetchNext, typename Scales>
void int8_block_token(const LinearArgs& a, int64_t r0, int rows, int64_t t, const Scales& block) {
  constexpr int kChunk = 64;                          // columns per 32 weight bytes
  constexpr int kLanes = G == 32 ? 4 : 8;             // int32 lanes per group within a chunk
  constexpr int kChunksPerGroup = G == 128 ? 2 : 1;
  const int64_t groups = a.in / G;
  const int64_t full = a.in / kChunk, chunks = full + (full * kChunk < a.in);
  const int8_t* xq[T];
  const float *dx[T], *xsum[T];
  GLM_UNROLL
  for (int u = 0; u < T; ++u) {
    xq[u] = a.xq + (t + u) * a.xq_stride;
    dx[u] = a.xscale + (t + u) * groups;
    xsum[u] = a.xsum + (t + u) * groups;
  }
  const uint8_t* row[8];
  GLM_UNROLL
  for (int i = 0; i < 8; ++i) row[i] = a.w + (r0 + min64(i, rows - 1)) * a.w_stride;
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  __m256 acc[T], bias_acc[T];
  __m256i first_half[T];  // groups of 128: the first chunk's sums
  GLM_UNROLL
  for (int u = 0; u < T; ++u) acc[u] = bias_acc[u] = _mm256_setzero_ps(), first_half[u] = _mm256_setzero_si256();
  int64_t g = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    __m256i x_even[T], x_odd[T];
    GLM_UNROLL
    for (int u = 0; u < T; ++u) {
      x_even[u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[u] + c * kChunk));
      x_odd[u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[u] + c * kChunk + 32));
    }
    const bool part = c == full;  // 32 columns: 16 bytes, the rest zero
    if (kPrefetchNext && c % 2 == 0)  // the next block's rows, a line each
      GLM_UNROLL
      for (int i = 0; i < 8; ++i) _mm_prefetch(reinterpret_cast<const char*>(row[i] + 8 * a.w_stride + c * 32), _MM_HINT_T1);
    __m256i pairs[T][8];  // [token][row]
    GLM_UNROLL
    for (int i = 0; i < 8; ++i) {
      const uint8_t* p = row[i] + c * 32;
      const __m256i w = part ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
                             : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i low = _mm256_and_si256(w, nibble), high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);
      GLM_UNROLL
      for (int u = 0; u < T; ++u)
        pairs[u][i] = _mm256_add_epi16(_mm256_maddubs_epi16(low, x_even[u]), _mm256_maddubs_epi16(high, x_odd[u]));
    }
    __m256i group_sums[T][8 / kLanes];
    GLM_UNROLL
    for (int u = 0; u < T; ++u) reduce_pairs8<kLanes>(pairs[u], group_sums[u]);
    if constexpr (kChunksPerGroup == 2) {
      if (c % 2 == 0) {  // the group's second half is next
        GLM_UNROLL
        for (int u = 0; u < T; ++u) first_half[u] = group_sums[u][0];
        continue;
      }
      GLM_UNROLL
      for (int u = 0; u < T; ++u) group_sums[u][0] = _mm256_add_epi32(first_half[u], group_sums[u][0]);
    }
    const int present = part ? 1 : 8 / kLanes;  // a part chunk holds one group of 32
    for (int k = 0; k < present; ++k, ++g) {
      __m256 s, b;
      block.at(g, s, b);
      GLM_UNROLL
      for (int u = 0; u < T; ++u) {
        acc[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(group_sums[u][k]), _mm256_mul_ps(s, _mm256_set1_ps(dx[u][g])), acc[u]);
        bias_acc[u] = _mm256_fmadd_ps(b, _mm256_set1_ps(xsum[u][g]), bias_acc[u]);
      }
    }
  }
  GLM_UNROLL
  for (int u = 0; u < T; ++u) store_rows8(a, r0, rows, t + u, _mm256_add_ps(acc[u], bias_acc[u]));
}

// int8_block_token for 8-bit weights (G = 32, 64 or 128 columns a group):
// x = 16 xh + xl split into its nibbles (xl = x & 15 in [0, 15], xh = x >> 4
// in [-8, 7]), so each VPMADDUBSW takes the weights q as they are (unsigned)
// against one nibble (signed): a pair is at most 2 x 255 x 15 = 7650 (low)
// or 2 x 255 x 8 = 4080 (high) in magnitude, and a group's 4 chunks at most
// add up in int16 (30600) before one VPMADDWD each, the high one by 16.
// sum q x = sum q xl + 16 sum q xh, exactly: VPDPBUSD's group sums. The
// split is made once per chunk for the block's 8 rows; each row then needs
// two VPMADDUBSW and an add per 32 bytes, against an XOR, VPABSB, VPSIGNB,
// VPMADDUBSW, VPMADDWD and two adds for the |q - 128| form it replaced
// (session 25: one core, the weight in L2, 21.0 -> 23.5 GB/s; batch-4
// decode of the 3-layer int8 model 1.11 in turns).
template <int G, bool kPrefetchNext, typename Scales>
void int8_block_token_8bit(const LinearArgs& a, int64_t r0, int rows, int64_t t, const Scales& block) {
  constexpr int kChunk = 32;  // columns per 32 weight bytes
  constexpr int kChunksPerGroup = G / kChunk;
  const int64_t groups = a.in / G;  // a.in is whole groups
  const int8_t* xq = a.xq + t * a.xq_stride;
  const float* dx = a.xscale + t * groups;
  const float* xsum = a.xsum + t * groups;
  const uint8_t* row[8];
  GLM_UNROLL
  for (int i = 0; i < 8; ++i) row[i] = a.w + (r0 + min64(i, rows - 1)) * a.w_stride;
  const __m256i nibble = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1),
                sixteens = _mm256_set1_epi16(16);
  __m256 acc = _mm256_setzero_ps(), bias_acc = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c0 = g * kChunksPerGroup;
    __m256i x_low[kChunksPerGroup], x_high[kChunksPerGroup];  // [chunk] the group's x nibbles
    GLM_UNROLL
    for (int k = 0; k < kChunksPerGroup; ++k) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (c0 + k) * kChunk));
      x_low[k] = _mm256_and_si256(x, nibble);
      // No byte shift in AVX2: the high nibble unsigned, then its sign extended ((h ^ 8) - 8).
      x_high[k] = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), nibble), eight), eight);
      if (kPrefetchNext && (c0 + k) % 2 == 0)  // the next block's rows, a line each
        GLM_UNROLL
        for (int i = 0; i < 8; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(row[i] + 8 * a.w_stride + (c0 + k) * kChunk), _MM_HINT_T1);
    }
    // Row i's int32 lanes (4 columns each) of the group, paired as they come
    // into the first of reduce_row_pairs8's rounds of horizontal adds.
    __m256i even_row = _mm256_setzero_si256(), row_pairs[4];
    GLM_UNROLL
    for (int i = 0; i < 8; ++i) {
      const uint8_t* p = row[i] + c0 * kChunk;
      __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      __m256i low = _mm256_maddubs_epi16(w, x_low[0]), high = _mm256_maddubs_epi16(w, x_high[0]);
      GLM_UNROLL
      for (int k = 1; k < kChunksPerGroup; ++k) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k * kChunk));
        low = _mm256_add_epi16(low, _mm256_maddubs_epi16(w, x_low[k]));
        high = _mm256_add_epi16(high, _mm256_maddubs_epi16(w, x_high[k]));
      }
      const __m256i lanes = _mm256_add_epi32(_mm256_madd_epi16(low, ones), _mm256_madd_epi16(high, sixteens));
      if (i % 2 == 0) even_row = lanes;
      else row_pairs[i / 2] = _mm256_hadd_epi32(even_row, lanes);
    }
    const __m256i group_sums = reduce_row_pairs8(row_pairs);
    __m256 s, b;
    block.at(g, s, b);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(group_sums), _mm256_mul_ps(s, _mm256_set1_ps(dx[g])), acc);
    bias_acc = _mm256_fmadd_ps(b, _mm256_set1_ps(xsum[g]), bias_acc);
  }
  store_rows8(a, r0, rows, t, _mm256_add_ps(acc, bias_acc));
}

// Eight consecutive entries of a scale or bias row, widened to f32 (V's
// weight loaders, which take bytes).
inline __m256 load8_scales(const void* base, ScaleType type, int64_t index) {
  const auto* bytes = static_cast<const uint8_t*>(base);
  switch (type) {
    case ScaleType::F32: return V::load_f32(bytes + 4 * index);
    case ScaleType::BF16: return V::load_bf16(bytes + 2 * index);
    case ScaleType::F16: return V::load_f16(bytes + 2 * index);
  }
  return _mm256_setzero_ps();
}

// The 8 x 8 transpose of rows[i] (lane j) into out[j] (lane i).
inline void transpose8(const __m256 (&rows)[8], __m256 (&out)[8]) {
  __m256 t[8], u[8];  // unrolled, so that all of it stays in registers
  GLM_UNROLL
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
  }
  GLM_UNROLL
  for (int i = 0; i < 2; ++i)
    GLM_UNROLL
    for (int h = 0; h < 2; ++h) {
      u[4 * i + 2 * h] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0x44);
      u[4 * i + 2 * h + 1] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0xee);
    }
  GLM_UNROLL
  for (int j = 0; j < 4; ++j) {
    out[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    out[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// A block's scales (or biases) as [group][8 rows] f32: rows r0..r0+7 (the
// rows past `rows` repeat the last), 8 groups at a time through a transpose.
// Scalar per value, this was most of a one-token call's time.
void gather_block_scales(const void* base, ScaleType type, int64_t stride, int64_t r0, int rows, int64_t groups,
                         float* out) {
  int64_t row_of[8];
  for (int i = 0; i < 8; ++i) row_of[i] = r0 + min64(i, rows - 1);
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    __m256 by_row[8], by_group[8];
    for (int i = 0; i < 8; ++i) by_row[i] = load8_scales(base, type, row_of[i] * stride + g);
    transpose8(by_row, by_group);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + 8 * (g + j), by_group[j]);
  }
  for (; g < groups; ++g)
    for (int i = 0; i < 8; ++i) out[8 * g + i] = scale_scalar(base, type, row_of[i] * stride + g);
}

// The block's scales and biases from the pairs laid out at load
// (fill_block_scale_pairs: [16-row block][group][16 rows] dwords, the scale
// in the low half, the bias in the high half): this block's 8 dwords a
// group, widened with a shift and an AND (bf16) or two conversions (f16).
// The same f32 values as gather_block_scales.
void scales_from_pairs8(const uint32_t* pairs, int64_t groups, ScaleType type, float* scales, float* biases) {
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i both = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pairs + g * 16));
    __m256 scale, bias;
    if (type == ScaleType::BF16) {
      widen_bf16_pairs(both, scale, bias);
    } else {  // the 8 halves packed into 128 bits, then widened
      const __m256i low = _mm256_and_si256(both, _mm256_set1_epi32(0xffff)), high = _mm256_srli_epi32(both, 16);
      scale = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(low, low), 0x08)));
      bias = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0x08)));
    }
    _mm256_storeu_ps(scales + 8 * g, scale);
    _mm256_storeu_ps(biases + 8 * g, bias);
  }
}

// ---- prompts: a block of 8 rows repacked, tokens 4 at a time ----
//
// Calls of more than int8_avx2_gemv_tokens tokens repack each block of 8
// rows once into the thread's scratch, a ymm per 4 columns (dword lane i =
// row i's 4 weights as bytes: 4-bit nibbles widened, 8-bit q as stored),
// and stream tokens over it:
// each token's 4 int8 x broadcast against the quad (from args.xq_tiles: a
// tile's tokens side by side), VPMADDUBSW + VPMADDWD into the rows' lanes.
// Rows sit in lanes, so no reduction tree is needed, and the weights are
// unpacked once per block instead of once per token.
// The int32 group sums are the one-token kernel's, exactly, and the same
// f32 operations follow: the same bits (tested).

inline __m256i broadcast4(const int8_t* p) {
  int32_t value;
  std::memcpy(&value, p, 4);
  return _mm256_set1_epi32(value);
}

// Rows r0..r0+7 (past `rows`, the last repeated) of columns [0, a.in) into
// packed[a.in / 4].
template <int BITS>
void repack_block(const LinearArgs& a, int64_t r0, int rows, __m256i* packed) {
  const uint8_t* row[8];
  for (int i = 0; i < 8; ++i) row[i] = a.w + (r0 + min64(i, rows - 1)) * a.w_stride;
  const __m128i nibble = _mm_set1_epi8(0x0f);
  for (int64_t c = 0; c < a.in; c += 32) {  // 32 columns: 8 quads
    __m256 by_row[8], by_quad[8];
    for (int i = 0; i < 8; ++i) {
      __m256i bytes;
      if constexpr (BITS == 8) {
        bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[i] + c));
      } else {  // 16 bytes, column 2j in the low nibble of byte j
        const __m128i packed_bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row[i] + c / 2));
        const __m128i lo = _mm_and_si128(packed_bytes, nibble), hi = _mm_and_si128(_mm_srli_epi16(packed_bytes, 4), nibble);
        bytes = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
      }
      by_row[i] = _mm256_castsi256_ps(bytes);
    }
    transpose8(by_row, by_quad);
    for (int j = 0; j < 8; ++j) _mm256_store_si256(packed + c / 4 + j, _mm256_castps_si256(by_quad[j]));
  }
}

// The block's rows x tokens [t0, t0 + T); x in column order, from the
// tile's xq_tiles. 8-bit weights go as their two nibbles, q = 16 h + l:
// sum q x = sum l x + 16 sum h x, each VPMADDUBSW pair of a nibble within
// 2 x 15 x 128 like a 4-bit weight's, so 8 quads' pairs are summed in int16
// (at most 30720) before VPMADDWD. Splitting a quad's bytes is shared by
// the tile's tokens; the |q - 128| form it replaced took a VPSIGNB per
// token and quad and ran ~10% slower in prompts (session 24).
//
// Registers: the 8-bit loop holds 4 tokens' low and high int16 sums and
// int32 group sums (12 ymm) beside the quad's two nibbles, x and the mask,
// which is all 16. So the f32 sums (acc, bias_acc), touched once a group,
// live in memory, the quads are unrolled by 2 only (fully unrolled, the
// compiler kept every quad's nibbles live), and x 16 is a shift, not a
// multiply by a constant register. Kept in registers, they spilled inside
// the quad loop: 8-bit prompts ran 1.26-1.30x slower (session 26).
template <int BITS, int T>
void int8_block_tile(const LinearArgs& a, int64_t r0, int rows, int64_t t0, const __m256i* packed, const float* scales,
                     const float* biases, NextLines& next) {
  const int64_t groups = a.in / a.group, quads = a.group / 4;
  const TileTokens<T> tokens(a, t0, groups);
  const int8_t* const x_tile = a.xq_tiles + t0 * a.xq_stride;  // [in / 4][T][4]
  const __m256i ones = _mm256_set1_epi16(1), nibble = _mm256_set1_epi8(0x0f);
  alignas(32) float acc[T][8], bias_acc[T][8];  // [token][row]: the f32 sums, in memory (above)
  GLM_UNROLL
  for (int t = 0; t < T; ++t) {
    _mm256_store_ps(acc[t], _mm256_setzero_ps());
    _mm256_store_ps(bias_acc[t], _mm256_setzero_ps());
  }
  for (int64_t g = 0; g < groups; ++g) {
    next.issue();
    __m256i dot[T];  // [token] the group's int32 sums of q x, 8 rows
    GLM_UNROLL
    for (int t = 0; t < T; ++t) dot[t] = _mm256_setzero_si256();
    const __m256i* w = packed + g * quads;
    const int8_t* x_group = x_tile + 4 * g * quads * T;  // [quads][T][4]
    auto x_of = [&](int64_t q, int t) { return broadcast4(x_group + 4 * (q * T + t)); };
    if constexpr (BITS == 4) {
#pragma GCC unroll 4
      for (int64_t q = 0; q < quads; ++q) {
        const __m256i weights = _mm256_load_si256(w + q);
        GLM_UNROLL
        for (int t = 0; t < T; ++t)
          dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(_mm256_maddubs_epi16(weights, x_of(q, t)), ones));
      }
    } else {
      for (int64_t run = 0; run < quads; run += 8) {
        __m256i lows[T], highs[T];  // int16 pair sums of the low and the high nibbles
        GLM_UNROLL
        for (int t = 0; t < T; ++t) lows[t] = highs[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int64_t q = run; q < run + 8; ++q) {
          const __m256i weights = _mm256_load_si256(w + q);
          const __m256i low = _mm256_and_si256(weights, nibble);
          const __m256i high = _mm256_and_si256(_mm256_srli_epi16(weights, 4), nibble);
          GLM_UNROLL
          for (int t = 0; t < T; ++t) {
            const __m256i x = x_of(q, t);
            lows[t] = _mm256_add_epi16(lows[t], _mm256_maddubs_epi16(low, x));
            highs[t] = _mm256_add_epi16(highs[t], _mm256_maddubs_epi16(high, x));
          }
        }
        GLM_UNROLL
        for (int t = 0; t < T; ++t)  // the low nibbles' sums + 16 x the high ones' (exact in int32)
          dot[t] = _mm256_add_epi32(dot[t], _mm256_add_epi32(_mm256_madd_epi16(lows[t], ones),
                                                             _mm256_slli_epi32(_mm256_madd_epi16(highs[t], ones), 4)));
      }
    }
    const __m256 s = _mm256_loadu_ps(scales + 8 * g), b = _mm256_loadu_ps(biases + 8 * g);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      const __m256 scale = _mm256_mul_ps(s, _mm256_set1_ps(tokens.dx[t][g]));
      _mm256_store_ps(acc[t], _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), scale, _mm256_load_ps(acc[t])));
      _mm256_store_ps(bias_acc[t], _mm256_fmadd_ps(b, _mm256_set1_ps(tokens.xsum[t][g]), _mm256_load_ps(bias_acc[t])));
    }
  }
  GLM_UNROLL
  for (int t = 0; t < T; ++t) store_rows8(a, r0, rows, t0 + t, _mm256_add_ps(_mm256_load_ps(acc[t]), _mm256_load_ps(bias_acc[t])));
}

// Tiles of 4 tokens (their f32 sums in memory: int8_block_tile); while they
// run they prefetch the next block's rows (`next_rows` of them from r0 + 8)
// for its repack. (Tiles as even as their count allows, as the float panels
// have, measured even here: a token's sums are chains of VPADDD, which a
// short tile does not leave waiting on latency.)
template <int BITS>
void int8_block_tiles(const LinearArgs& a, int64_t r0, int rows, const __m256i* packed, const float* scales,
                      const float* biases, int next_rows) {
  constexpr int T = kInt8Avx2TileTokens;
  NextLines next;
  next.start(a, r0 + 8, next_rows, 0, a.in * BITS / 8, (a.n_tokens + T - 1) / T * (a.in / a.group));
  for (int64_t t0 = 0; t0 < a.n_tokens; t0 += T) {
    switch (min64(T, a.n_tokens - t0)) {
      case 1: int8_block_tile<BITS, 1>(a, r0, rows, t0, packed, scales, biases, next); break;
      case 2: int8_block_tile<BITS, 2>(a, r0, rows, t0, packed, scales, biases, next); break;
      case 3: int8_block_tile<BITS, 3>(a, r0, rows, t0, packed, scales, biases, next); break;
      default: int8_block_tile<BITS, 4>(a, r0, rows, t0, packed, scales, biases, next); break;
    }
  }
}

// Tokens t .. t + T - 1 through one block (T = 2, 3: 4-bit only).
template <int T, bool kPrefetchNext, typename Scales>
void int8_block_pass(const LinearArgs& a, int64_t r0, int rows, int64_t t, const Scales& block, bool eight) {
  switch (a.group) {
    case 32: return eight ? int8_block_token_8bit<32, kPrefetchNext>(a, r0, rows, t, block)
                          : int8_block_token<32, T, kPrefetchNext>(a, r0, rows, t, block);
    case 64: return eight ? int8_block_token_8bit<64, kPrefetchNext>(a, r0, rows, t, block)
                          : int8_block_token<64, T, kPrefetchNext>(a, r0, rows, t, block);
    default: return eight ? int8_block_token_8bit<128, kPrefetchNext>(a, r0, rows, t, block)
                          : int8_block_token<128, T, kPrefetchNext>(a, r0, rows, t, block);
  }
}

// The token passes over one block (GEMV calls): the first one asks for the
// next block's rows (into L2), so a one-token call streams memory while it
// computes. 4-bit tokens go up to three to a pass, the passes as even as
// their count allows (4 tokens: 2 + 2); 8-bit ones one at a time (their
// kernel splits x, which tokens would not share).
template <typename Scales>
void int8_block_passes(const LinearArgs& a, int64_t r0, int rows, bool more_blocks, const Scales& block, bool eight) {
  auto pass = [&](auto tokens, int64_t t) {
    constexpr int T = decltype(tokens)::value;
    if (t == 0 && more_blocks) int8_block_pass<T, true>(a, r0, rows, t, block, eight);
    else int8_block_pass<T, false>(a, r0, rows, t, block, eight);
  };
  even_parts(a.n_tokens, eight ? 1 : 3, [&](int64_t t0, int64_t size) {
    switch (size) {
      case 1: pass(std::integral_constant<int, 1>{}, t0); break;
      case 2: pass(std::integral_constant<int, 2>{}, t0); break;
      default: pass(std::integral_constant<int, 3>{}, t0); break;
    }
  });
}

}  // namespace

void int8_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t groups = a.in / a.group;
  float* scales = reinterpret_cast<float*>(a.scratch);  // [group][8]
  float* biases = scales + 8 * groups;
  auto* packed = reinterpret_cast<__m256i*>(a.scratch + 64 * groups);  // [in / 4] (prompts)
  const bool eight = a.kind == WeightKind::Affine8;
  const bool gemv = a.n_tokens <= int8_avx2_gemv_tokens(eight ? 8 : 4);
  for (int64_t r0 = row_begin; r0 < row_end; r0 += 8) {
    const int rows = static_cast<int>(min64(8, row_end - r0));
    // r0 is a multiple of 8: half r0 / 8 % 2 of 16-row block r0 / 16.
    const uint32_t* pairs = a.block_pairs ? a.block_pairs + (r0 / 16 * groups * 16 + r0 / 8 % 2 * 8) : nullptr;
    if (gemv && pairs && a.scale_type == ScaleType::BF16 && a.bias_type == ScaleType::BF16) {
      int8_block_passes(a, r0, rows, r0 + 8 < row_end, Bf16Pairs{pairs}, eight);
      continue;
    }
    if (pairs) {
      scales_from_pairs8(pairs, groups, a.scale_type, scales, biases);
    } else {
      gather_block_scales(a.scales, a.scale_type, a.scale_stride, r0, rows, groups, scales);
      gather_block_scales(a.biases, a.bias_type, a.bias_stride, r0, rows, groups, biases);
    }
    if (!gemv) {
      const int next_rows = static_cast<int>(max64(0, min64(8, row_end - r0 - 8)));
      if (eight) {
        repack_block<8>(a, r0, rows, packed);
        int8_block_tiles<8>(a, r0, rows, packed, scales, biases, next_rows);
      } else {
        repack_block<4>(a, r0, rows, packed);
        int8_block_tiles<4>(a, r0, rows, packed, scales, biases, next_rows);
      }
      continue;
    }
    int8_block_passes(a, r0, rows, r0 + 8 < row_end, ScaleArrays{scales, biases}, eight);
  }
}

void fill_block_scale_pairs(const LinearArgs& a, uint32_t* out) {
  const int64_t groups = a.in / a.group;
  const auto* scales = static_cast<const uint16_t*>(a.scales);
  const auto* biases = static_cast<const uint16_t*>(a.biases);
  for (int64_t r0 = 0; r0 < a.out_features; r0 += 16)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t row = min64(r0 + i, a.out_features - 1);  // past the last row: the last repeated
        out[(r0 / 16 * groups + g) * 16 + i] =
            scales[row * a.scale_stride + g] | uint32_t{biases[row * a.bias_stride + g]} << 16;
      }
}

// ---- float weights (f32, bf16, f16): two FMA chains per output ----
//
// Every output (row, token) is two FMA chains, acc = fma(w[row][k],
// x[token][k], acc) over its even columns and over its odd ones, each in
// column order, added at the end, then + bias: the same bits whatever the
// call, the tile or the thread, in every mode but fast-prompts' prompt
// steps (one chain there). Lanes hold rows (8 to a vector), so a token's x
// is broadcast per column and no reduction across lanes is needed. Two
// kernels give those bits:
//
// - prompts (float_panel_rows): each block of 16 rows is widened into the
//   thread's scratch as f32 panels (a column's 16 rows in two vectors),
//   1024 columns at a time, and tiles of up to 6 tokens pass over each
//   chunk once per chain: 12 accumulators, 2 panel loads and 6 broadcasts
//   per 12 FMAs, the broadcasts from x in tiles (args.x_tiles: a tile's
//   tokens column by column, one line for a column's 6 values). The tiles
//   also prefetch the lines the next widening reads;
// - a few tokens (float_lanes_rows): widening costs more than such a call,
//   so each step reads 8 rows straight from the weight and transposes them
//   in registers, then adds its columns in order. Two chains per output
//   are for this kernel: one chain is 4096 dependent FMAs for a 4096-wide
//   row, and chains of different rows that follow each other in program
//   order fill the scheduler with waiting FMAs.
//
// A step is one 8 x 8 dword transpose. bf16 takes 16 columns a step: a
// row's 32 bytes are 8 dwords, each a column pair, so the transpose gives 8
// pair vectors, and a pair's even column is its dword shifted left 16, its
// odd one the dword with the low half cleared (bf16 is the top half of an
// f32): 24 shuffles per 16 columns, against 40 to widen first. f32 and f16
// take 8 columns a step (f16 widened, then transposed).
//
// Rows a whole number of pages apart share L1 sets (a bf16 row of 4096
// columns is 8 KB), and a set holds 8 lines: so 8 rows' 64-byte lines are
// used whole, step after step, before other rows' lines are read. Even so
// their 8 lines in one set make a step ~2x slower from L2 than rows off the
// page (measured; kernels/README.md).
namespace {

template <WeightKind K>
constexpr int lanes_step() {
  return K == WeightKind::BF16 ? 16 : 8;
}
template <WeightKind K>
constexpr int64_t weight_bytes() {
  return K == WeightKind::F32 ? 4 : 2;
}

// The step's columns of 8 rows (by_row: each row's bytes of the step, as
// loaded) as column vectors, row i in lane i, handed to use(c, column) in
// column order.
template <WeightKind K, class Use>
inline void for_each_column(__m256 (&by_row)[8], Use&& use) {
  if constexpr (K == WeightKind::F16)
    GLM_UNROLL
    for (int i = 0; i < 8; ++i) by_row[i] = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_castps_si256(by_row[i])));
  __m256 by_column[8];
  transpose8(by_row, by_column);  // bf16: by_column[j] = column pair j, as dwords
  GLM_UNROLL
  for (int j = 0; j < 8; ++j) {
    if constexpr (K == WeightKind::BF16) {
      const __m256i pair = _mm256_castps_si256(by_column[j]);
      use(2 * j, _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16)));
      use(2 * j + 1, _mm256_castsi256_ps(_mm256_and_si256(pair, _mm256_set1_epi32(-65536))));
    } else {
      use(j, by_column[j]);
    }
  }
}

// A step's bytes of one row: 16 bf16 or 8 f32 in a ymm, 8 f16 in its low half.
template <WeightKind K>
inline __m256 load_step(const uint8_t* p) {
  if constexpr (K == WeightKind::F16)
    return _mm256_castps128_ps256(_mm_loadu_ps(reinterpret_cast<const float*>(p)));
  else
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
}

// Row strides of a block of 8 rows: row i is at p + i * s1, which the loads
// address as p + {0, 1, 2, 4} * s1 or p + {1, 2} * s3, p + s5, p + s7, so a
// tile keeps its row pointers in registers.
struct RowStrides {
  int64_t s1, s3, s5, s7;
  explicit RowStrides(int64_t stride) : s1(stride), s3(3 * stride), s5(5 * stride), s7(7 * stride) {}
};

inline void prefetch_rows8(const uint8_t* p, const RowStrides& r) {
  __builtin_prefetch(p, 0, 2), __builtin_prefetch(p + r.s1, 0, 2);
  __builtin_prefetch(p + 2 * r.s1, 0, 2), __builtin_prefetch(p + r.s3, 0, 2);
  __builtin_prefetch(p + 4 * r.s1, 0, 2), __builtin_prefetch(p + r.s5, 0, 2);
  __builtin_prefetch(p + 2 * r.s3, 0, 2), __builtin_prefetch(p + r.s7, 0, 2);
}

// panel[(k - c0) * 16 + i] = the weight of row r0 + i at column k, for
// the chunk's columns [c0, c1); rows past `rows` are zeros. Each half of
// the block (8 rows) a line at a time.
template <WeightKind K>
void widen_panel(const LinearArgs& a, int64_t r0, int rows, int64_t c0, int64_t c1, float* panel) {
  constexpr int kStep = lanes_step<K>();
  constexpr int64_t kLine = 64 / weight_bytes<K>();
  const uint8_t* row[kAvx2PanelRows];
  for (int i = 0; i < kAvx2PanelRows; ++i) row[i] = i < rows ? a.w + (r0 + i) * a.w_stride : nullptr;
  auto widen_step = [&](int64_t k, int half) {
    __m256 by_row[8];
    for (int i = 0; i < 8; ++i) {
      const uint8_t* r = row[8 * half + i];
      by_row[i] = r ? load_step<K>(r + k * weight_bytes<K>()) : _mm256_setzero_ps();
    }
    for_each_column<K>(by_row, [&](int c, __m256 column) {
      _mm256_store_ps(panel + (k - c0 + c) * kAvx2PanelRows + 8 * half, column);
    });
  };
  int64_t k = c0;
  for (; k + kLine <= c1; k += kLine)
    for (int half = 0; half < 2; ++half)
      GLM_UNROLL
      for (int64_t sub = 0; sub < kLine; sub += kStep) widen_step(k + sub, half);
  for (; k + kStep <= c1; k += kStep)
    for (int half = 0; half < 2; ++half) widen_step(k, half);
  for (; k < c1; ++k)
    for (int i = 0; i < kAvx2PanelRows; ++i)
      panel[(k - c0) * kAvx2PanelRows + i] = row[i] ? weight_scalar<K>(row[i], k) : 0.0f;
}

constexpr int64_t kPrefetchColumns = 64;  // a panel tile issues its share of prefetches every this many columns
// How far ahead a tile asks for its own panel lines and x, in columns: the
// panel (64 KB, L2) is read one line of every two in the exact order (a
// chain's columns), a stride the L1 prefetcher did not follow, and x
// tiles stream from L3. 16 panel columns are 8 steps ahead at stride 2;
// x's 48 columns are 1 KB for a tile of 6 tokens (24-96 columns measured
// the same).
constexpr int64_t kPanelAheadColumns = 16, kXAheadColumns = 48;

// The block's rows x tokens [t0, t0 + T) over the chunk's columns [c0, c1)
// (c0 even), per token and half of the block C chains: C = 2, an even and
// an odd one (the exact order), C = 1, one (fast-prompts' order). The tile
// takes its chains one after another (the even columns, then the odd
// ones), so 6 tokens x 2 halves fit the registers either way and each
// panel vector read serves 12 FMAs. Between chunks, and between the two
// passes, the chains wait in `carry` [token][chain][half][8] (stored and
// reloaded whole, so the order of the additions does not change); the
// chunk that ends the row adds each output's chains and stores it.
template <int T, int C>
void panel_tile(const LinearArgs& a, int64_t r0, int rows, int64_t t0, const float* panel, int64_t c0, int64_t c1,
                float* carry, NextLines& next) {
  const float* x_tile = a.x_tiles + t0 * a.in;  // [in][T]
  auto chain_of = [&](int t, int chain) { return carry + ((t0 + t) * C + chain) * 16; };
  for (int chain = 0; chain < C; ++chain) {
    __m256 acc[T][2];  // [token][half of the block]
    GLM_UNROLL
    for (int t = 0; t < T; ++t)
      GLM_UNROLL
      for (int h = 0; h < 2; ++h) acc[t][h] = c0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(chain_of(t, chain) + 8 * h);
    for (int64_t k_stretch = c0 + chain; k_stretch < c1; k_stretch += kPrefetchColumns) {
      next.issue();
      const int64_t k_end = min64(k_stretch + kPrefetchColumns, c1);
      for (int64_t k = k_stretch; k < k_end; k += C) {
        const float* column = panel + (k - c0) * kAvx2PanelRows;
        // Past the chunk or the tile these touch other scratch or nothing: a prefetch never faults.
        _mm_prefetch(reinterpret_cast<const char*>(column + kPanelAheadColumns * kAvx2PanelRows), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(x_tile + (k + kXAheadColumns) * T), _MM_HINT_T0);
        const __m256 low = _mm256_load_ps(column), high = _mm256_load_ps(column + 8);
        GLM_UNROLL
        for (int t = 0; t < T; ++t) {
          const __m256 xk = _mm256_broadcast_ss(x_tile + k * T + t);
          acc[t][0] = _mm256_fmadd_ps(low, xk, acc[t][0]);
          acc[t][1] = _mm256_fmadd_ps(high, xk, acc[t][1]);
        }
      }
    }
    const bool last = c1 == a.in && chain == C - 1;
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      if (!last) {
        GLM_UNROLL
        for (int h = 0; h < 2; ++h) _mm256_store_ps(chain_of(t, chain) + 8 * h, acc[t][h]);
        continue;
      }
      __m256 sum[2];
      GLM_UNROLL
      for (int h = 0; h < 2; ++h)  // the even chain + the odd one
        sum[h] = C == 2 ? _mm256_add_ps(_mm256_load_ps(chain_of(t, 0) + 8 * h), acc[t][h]) : acc[t][h];
      store_rows8(a, r0, rows < 8 ? rows : 8, t0 + t, sum[0]);
      if (rows > 8) store_rows8(a, r0 + 8, rows - 8, t0 + t, sum[1]);
    }
  }
}

// Each block of 16 rows a chunk of kAvx2PanelColumns columns at a time, so
// that the panel stays in L2 (64 KB) whatever the width: o_proj's 12288
// columns would make a 768 KB panel. Tiles of up to 6 tokens: 12
// accumulators.
//
// Blocks go in groups of kAvx2PanelGroupBlocks: the group's blocks take
// chunk 0 in turn, then chunk 1, and so on. Block by block, every block
// read all of x, which at 512 tokens is 22 MB for the dense MLP's down
// projection (10944 columns) and 25 MB for o_proj (12288): more than this
// L3 keeps, so x came from DRAM again for every block, and those
// projections ran at 77-81 GFLOP/s against 106-112 at 4096 columns, or at
// 128-256 tokens (session 26). In groups a chunk's x (2 MB) is read from
// DRAM once a group.
template <WeightKind K, int C>
void float_panel_rows_of(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  constexpr int T = kAvx2PanelTileTokens, G = kAvx2PanelGroupBlocks;
  float* panel = reinterpret_cast<float*>(a.scratch);
  float* carries = panel + kAvx2PanelColumns * kAvx2PanelRows;  // [G][n_tokens][C chains][2 halves][8]
  if (a.n_tokens <= 0) return;
  const int64_t tiles = (a.n_tokens + T - 1) / T;  // as even_parts cuts them
  auto rows_at = [&](int64_t r0) { return static_cast<int>(min64(kAvx2PanelRows, row_end - r0)); };
  NextLines next;
  for (int64_t g0 = row_begin; g0 < row_end; g0 += G * kAvx2PanelRows) {
    const int64_t g1 = min64(g0 + G * kAvx2PanelRows, row_end);
    for (int64_t c0 = 0; c0 < a.in; c0 += kAvx2PanelColumns) {
      const int64_t c1 = min64(c0 + kAvx2PanelColumns, a.in);
      for (int64_t r0 = g0; r0 < g1; r0 += kAvx2PanelRows) {
        const int rows = rows_at(r0);
        float* carry = carries + (r0 - g0) / kAvx2PanelRows * (a.n_tokens * C * kAvx2PanelRows);
        widen_panel<K>(a, r0, rows, c0, c1, panel);
        // The lines the next widening reads: the group's next block at this
        // chunk, else its first block at the next chunk, else the next group.
        const int64_t issues = tiles * C * ((c1 - c0 + kPrefetchColumns - 1) / kPrefetchColumns);
        if (r0 + kAvx2PanelRows < g1)
          next.start(a, r0 + kAvx2PanelRows, rows_at(r0 + kAvx2PanelRows), c0 * weight_bytes<K>(),
                     c1 * weight_bytes<K>(), issues);
        else if (c1 < a.in)
          next.start(a, g0, rows_at(g0), c1 * weight_bytes<K>(),
                     min64(c1 + kAvx2PanelColumns, a.in) * weight_bytes<K>(), issues);
        else if (g1 < row_end)
          next.start(a, g1, rows_at(g1), 0, min64(kAvx2PanelColumns, a.in) * weight_bytes<K>(), issues);
        else
          next.start(a, r0, 0, 0, 0, issues);
        even_parts(a.n_tokens, T, [&](int64_t t0, int64_t size) {
          switch (size) {
            case 1: panel_tile<1, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
            case 2: panel_tile<2, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
            case 3: panel_tile<3, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
            case 4: panel_tile<4, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
            case 5: panel_tile<5, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
            default: panel_tile<6, C>(a, r0, rows, t0, panel, c0, c1, carry, next); break;
          }
        });
      }
    }
  }
}

// Adds the step's columns [k, k + lanes_step<K>()) of 8 rows into acc[t].
// acc[t][p]: token t's chain over the columns of parity p (k is even).
template <WeightKind K, int T>
inline void add_step(__m256 (&by_row)[8], const float* const* x, int64_t k, __m256 (*acc)[2]) {
  for_each_column<K>(by_row, [&](int c, __m256 column) {
    GLM_UNROLL
    for (int t = 0; t < T; ++t) acc[t][c & 1] = _mm256_fmadd_ps(column, _mm256_broadcast_ss(x[t] + k + c), acc[t][c & 1]);
  });
}

// Adds one 64-byte line of each of 8 rows (columns [k, k + line columns))
// into acc: its steps one after another, so the 8 lines are read while
// they are in L1.
template <WeightKind K, int T>
inline void add_line(const uint8_t* p, const RowStrides& r, const float* const* x, int64_t k, __m256 (*acc)[2]) {
  constexpr int kStep = lanes_step<K>();
  constexpr int64_t kBytes = weight_bytes<K>();
  GLM_UNROLL
  for (int sub = 0; sub < 64 / (kStep * kBytes); ++sub) {
    const uint8_t* q = p + sub * kStep * kBytes;
    __m256 by_row[8] = {load_step<K>(q),          load_step<K>(q + r.s1),     load_step<K>(q + 2 * r.s1),
                        load_step<K>(q + r.s3),   load_step<K>(q + 4 * r.s1), load_step<K>(q + r.s5),
                        load_step<K>(q + 2 * r.s3), load_step<K>(q + r.s7)};
    add_step<K, T>(by_row, x, k + sub * kStep, acc);
  }
}

// Columns [k0, in) of 8 rows (row[i]: row i's first byte) into acc: whole
// steps, then the columns past the last whole step one at a time (the same
// chains).
template <WeightKind K, int T>
inline void add_rest(const uint8_t* const* row, const float* const* x, int64_t k0, int64_t in, __m256 (*acc)[2]) {
  constexpr int kStep = lanes_step<K>();
  for (; k0 + kStep <= in; k0 += kStep) {
    __m256 by_row[8];
    for (int i = 0; i < 8; ++i) by_row[i] = load_step<K>(row[i] + k0 * weight_bytes<K>());
    add_step<K, T>(by_row, x, k0, acc);
  }
  for (int64_t k = k0; k < in; ++k) {
    alignas(32) float lanes[8];
    for (int i = 0; i < 8; ++i) lanes[i] = weight_scalar<K>(row[i], k);
    const __m256 column = _mm256_load_ps(lanes);
    GLM_UNROLL
    for (int t = 0; t < T; ++t) {
      __m256& chain = k % 2 ? acc[t][1] : acc[t][0];
      chain = _mm256_fmadd_ps(column, _mm256_broadcast_ss(x[t] + k), chain);
    }
  }
}

// Stores tokens [t0, t0 + T) of 8 rows from r0 (the first `rows` of them).
template <int T>
inline void store_chains(const LinearArgs& a, int64_t r0, int rows, int64_t t0, const __m256 (*acc)[2]) {
  GLM_UNROLL
  for (int t = 0; t < T; ++t) store_rows8(a, r0, rows, t0 + t, _mm256_add_ps(acc[t][0], acc[t][1]));
}

// 8 whole rows from r0 x tokens [t0, t0 + T): a line of each row at a
// time. One block of 8 rows per tile: with two chains per output it reads
// as fast as the column-strided kernel did from memory, and two blocks side
// by side (4 chains, more row lines in flight) were no faster.
template <WeightKind K, int T>
void lanes_tile(const LinearArgs& a, int64_t r0, int64_t t0) {
  constexpr int64_t kLine = 64 / weight_bytes<K>();  // columns per line
  const RowStrides strides(a.w_stride);
  const uint8_t* const first = a.w + r0 * a.w_stride;
  const float* x[T];
  __m256 acc[T][2];  // [token][column parity]
  GLM_UNROLL
  for (int t = 0; t < T; ++t) x[t] = a.x + (t0 + t) * a.in, acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  const int64_t lines = a.in / kLine;
  for (int64_t line = 0; line < lines; ++line) {
    const uint8_t* p = first + line * 64;
    // The next block's rows start 8 rows on: asking for their line here
    // brings them a block ahead (a block's later token groups ask again
    // and find them cached).
    prefetch_rows8(p + 8 * a.w_stride, strides);
    add_line<K, T>(p, strides, x, line * kLine, acc);
  }
  const uint8_t* row[8];
  for (int i = 0; i < 8; ++i) row[i] = first + i * a.w_stride;
  add_rest<K, T>(row, x, lines * kLine, a.in, acc);
  store_chains<T>(a, r0, 8, t0, acc);
}

// The last rows of a range, fewer than 8: lanes past the last row read row
// r0 (any valid row) and are not stored.
template <WeightKind K, int T>
void lanes_tile_partial(const LinearArgs& a, int64_t r0, int rows, int64_t t0) {
  const uint8_t* row[8];
  for (int i = 0; i < 8; ++i) row[i] = a.w + (i < rows ? r0 + i : r0) * a.w_stride;
  const float* x[T];
  __m256 acc[T][2];
  for (int t = 0; t < T; ++t) x[t] = a.x + (t0 + t) * a.in, acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  add_rest<K, T>(row, x, 0, a.in, acc);
  store_chains<T>(a, r0, rows, t0, acc);
}

// Tokens in groups of up to 3 (6 accumulators beside a step's 8 column
// vectors), as even as their count allows (even_parts; 4 tokens: 2 + 2).
// Each block of 8 rows takes every group before the next block, so a call
// of 4-9 tokens reads its weight from memory once; the groups after the
// first find the block (8 rows: 64 KB of a 4096-wide bf16 weight) in L2.
template <WeightKind K>
void float_lanes_rows_of(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  auto each_group = [&](auto&& tile) {
    even_parts(a.n_tokens, 3, [&](int64_t t0, int64_t size) {
      switch (size) {
        case 1: tile(std::integral_constant<int, 1>{}, t0); break;
        case 2: tile(std::integral_constant<int, 2>{}, t0); break;
        default: tile(std::integral_constant<int, 3>{}, t0); break;
      }
    });
  };
  int64_t r0 = row_begin;
  for (; r0 + 8 <= row_end; r0 += 8)
    each_group([&](auto tokens, int64_t t0) { lanes_tile<K, decltype(tokens)::value>(a, r0, t0); });
  if (r0 < row_end)
    each_group([&](auto tokens, int64_t t0) {
      lanes_tile_partial<K, decltype(tokens)::value>(a, r0, static_cast<int>(row_end - r0), t0);
    });
}

// body(std::integral_constant<WeightKind, K>{}) for the float kind of a;
// dispatch.cpp sends float weights only.
template <class Body>
void with_float_kind(const LinearArgs& a, Body&& body) {
  switch (a.kind) {
    case WeightKind::F32: return body(std::integral_constant<WeightKind, WeightKind::F32>{});
    case WeightKind::BF16: return body(std::integral_constant<WeightKind, WeightKind::BF16>{});
    case WeightKind::F16: return body(std::integral_constant<WeightKind, WeightKind::F16>{});
    default: return;
  }
}

}  // namespace

void float_lanes_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  with_float_kind(a, [&](auto kind) { float_lanes_rows_of<decltype(kind)::value>(a, row_begin, row_end); });
}

void float_panel_rows(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  with_float_kind(a, [&](auto kind) { float_panel_rows_of<decltype(kind)::value, 2>(a, row_begin, row_end); });
}

void float_panel_rows_one_chain(const LinearArgs& a, int64_t row_begin, int64_t row_end) {
  with_float_kind(a, [&](auto kind) { float_panel_rows_of<decltype(kind)::value, 1>(a, row_begin, row_end); });
}

void pack_panel_token(const float* x_row, int64_t token, int64_t n_tokens, int64_t in, float* x_tiles) {
  even_parts(n_tokens, kAvx2PanelTileTokens, [&](int64_t t0, int64_t size) {  // the panels' tiles
    if (token < t0 || token >= t0 + size) return;
    float* out = x_tiles + t0 * in + (token - t0);
    for (int64_t k = 0; k < in; ++k) out[k * size] = x_row[k];
  });
}

void prepare_int8(const float* x, int64_t in, int64_t group, bool even_odd, int8_t* xq, float* steps, float* sums) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t g = 0; g < in / group; ++g) {  // natural column order first
    const float* block = x + g * group;
    __m256 absmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < group; k += 8) absmax = _mm256_max_ps(absmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(block + k)));
    __m128 top4 = _mm_max_ps(_mm256_castps256_ps128(absmax), _mm256_extractf128_ps(absmax, 1));
    top4 = _mm_max_ps(top4, _mm_movehl_ps(top4, top4));
    const float top = _mm_cvtss_f32(_mm_max_ss(top4, _mm_movehdup_ps(top4)));
    const __m256 inverse = _mm256_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    __m256i total = _mm256_setzero_si256();
    for (int64_t k = 0; k < group; k += 16) {
      const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(block + k), inverse));  // nearest even
      const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(block + k + 8), inverse));
      total = _mm256_add_epi32(total, _mm256_add_epi32(q0, q1));
      const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8);  // 16 int16 in order
      const __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * group + k), bytes);
    }
    __m128i total4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    total4 = _mm_add_epi32(total4, _mm_shuffle_epi32(total4, 0x4e));
    total4 = _mm_add_epi32(total4, _mm_shuffle_epi32(total4, 0xb1));
    steps[g] = top / 127.0f;
    sums[g] = steps[g] * static_cast<float>(_mm_cvtsi128_si32(total4));
  }
  if (!even_odd) return;  // the 8-bit and the prompt kernels read x in column order
  // Then each 64 columns as [even | odd]; a last chunk of 32 is zero padded.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int64_t c = 0; c < in; c += 64) {
    if (in - c < 64) std::memset(xq + in, 0, static_cast<size_t>(c + 64 - in));
    // Per 128-bit lane: [8 even, 8 odd]; then qwords regrouped even first.
    const __m256i a = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c)), split), 0xd8);
    const __m256i b = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c + 32)), split), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + c), _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + c + 32), _mm256_permute2x128_si256(a, b, 0x31));
  }
}

#else  // not an x86-64 GCC/Clang build: never selected

bool compiled() { return false; }
void exact_rows(const LinearArgs&, int64_t, int64_t) {}
void int8_rows(const LinearArgs&, int64_t, int64_t) {}
void prepare_int8(const float*, int64_t, int64_t, bool, int8_t*, float*, float*) {}
void fill_block_scale_pairs(const LinearArgs&, uint32_t*) {}
void float_panel_rows(const LinearArgs&, int64_t, int64_t) {}
void float_panel_rows_one_chain(const LinearArgs&, int64_t, int64_t) {}
void pack_panel_token(const float*, int64_t, int64_t, int64_t, float*) {}
void float_lanes_rows(const LinearArgs&, int64_t, int64_t) {}

#endif

}  // namespace glm::cpu::kernels::avx2

#ifdef GLM_KERNELS_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
