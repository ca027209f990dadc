// The contract between the dispatcher (dispatch.cpp: picks a kernel, prepares
// activations, splits rows over threads) and the per-ISA kernel files
// (avx2.cpp, avx512.cpp). Plain pointers and integers only: the ISA files are
// compiled for instructions the baseline CPU may lack, so they include no
// standard-library templates that the linker could merge with baseline
// copies.
#pragma once

#include <cstdint>

// Full unrolling of the loops over a tile's rows, tokens and sub-steps, so
// that accumulator arrays live in registers whatever the optimisation level
// (at -O2 GCC otherwise keeps them on the stack).
#define GLM_UNROLL _Pragma("GCC unroll 16")

// While a tile of R rows is read, the same columns of the next tile's rows
// (`ahead` = R row strides further) are prefetched into L2. A decode GEMV is
// memory-bound yet spends real arithmetic per byte (4-bit: a lookup and an
// FMA per weight); left to the hardware prefetchers, too few misses were in
// flight and memory time and compute time added up instead of overlapping
// (Zen 4, one core: bf16 15.7 -> 20.4 GB/s, int8 11.6 -> 18.8, int4 7.4 ->
// 10.6). A macro, so no function is instantiated under two target ISAs.
#define GLM_PREFETCH_ROWS(rows, R, ahead)                              \
  do {                                                                 \
    for (int prefetch_row_ = 0; prefetch_row_ < (R); ++prefetch_row_) \
      __builtin_prefetch((rows)[prefetch_row_] + (ahead), 0, 2);       \
  } while (0)

namespace glm::cpu::kernels {

enum class WeightKind : uint8_t { F32, BF16, F16, Affine4, Affine8 };
// Element type of affine scales/biases.
enum class ScaleType : uint8_t { F32, BF16, F16 };

struct LinearArgs {
  // Activations: x [n_tokens, in] dense f32; out [n_tokens, out_features].
  const float* x = nullptr;
  int64_t n_tokens = 0;
  int64_t in = 0;
  float* out = nullptr;
  int64_t out_features = 0;
  const float* bias = nullptr;  // [out_features] f32, or null

  // Weight row r starts at w + r * w_stride (bytes): in values of `kind`.
  WeightKind kind = WeightKind::F32;
  const uint8_t* w = nullptr;
  int64_t w_stride = 0;
  // Affine: value = scale * q + bias per `group` columns; scales/biases row r
  // start at scales + r * scale_stride (elements of scale_type).
  int64_t group = 0;
  const void* scales = nullptr;
  const void* biases = nullptr;
  int64_t scale_stride = 0;
  int64_t bias_stride = 0;
  ScaleType scale_type = ScaleType::F32;
  ScaleType bias_type = ScaleType::F32;
  // Optional: WeightFormat::block_scale_pairs (16-bit scales and biases of
  // one type), which the one-token int8 kernel reads instead of transposing
  // each block's scales and biases itself.
  const uint32_t* block_pairs = nullptr;
  // Weight::f32_activations: this weight takes the exact kernels in every
  // mode (x is never rounded to bf16 nor quantized to int8 for it).
  bool f32_activations = false;

  // Exact-mode activations of affine weights (AVX-512), prepared once per
  // call by avx512::prepare_exact: x reordered for 4-bit weights, the exact
  // f32 sum of x over each group for 8-bit weights.
  const float* xp = nullptr;  // [n_tokens, in]
  const float* xgs = nullptr;  // [n_tokens, in / group]

  // Fast-mode activations, prepared once per call by prepare_* below.
  const uint16_t* xb = nullptr;  // bf16 [n_tokens, xb_stride], zero padded past `in`
  int64_t xb_stride = 0;
  const int8_t* xq = nullptr;    // int8 [n_tokens, xq_stride] in the kernel's column order (prepare_int8)
  int64_t xq_stride = 0;
  const float* xscale = nullptr;  // [n_tokens, in / group] step of xq per group
  const float* xsum = nullptr;    // [n_tokens, in / group] sum of the dequantized xq per group
  // avx2::int8_rows' prompts (more than int8_avx2_gemv_tokens tokens): xq
  // again, in the tiles the kernel takes tokens in (kInt8Avx2TileTokens).
  const int8_t* xq_tiles = nullptr;
  // The AVX2 float panels' x, prepared once per call by
  // avx2::pack_panel_token: [n_tokens * in] f32 in tiles of tokens.
  const float* x_tiles = nullptr;
  // Per-thread scratch, 64-byte aligned: int8_rows' int8_scratch_bytes(in,
  // group), bf16_packed_rows' bf16_panel_bytes(), bf16_lanes_rows'
  // bf16_lanes_bytes(in, n_tokens).
  uint8_t* scratch = nullptr;
};

// Computes out rows [row_begin, row_end) for every token.
using RowsKernel = void (*)(const LinearArgs& args, int64_t row_begin, int64_t row_end);

// Rounding of activations to the padded widths the fast kernels read.
inline int64_t bf16_stride(int64_t in) { return (in + 31) / 32 * 32; }
// (int8: whole 128-column segments, which the one-token kernel loads whole.)
inline int64_t int8_stride(int64_t in) { return (in + 127) / 128 * 128; }
// int8_rows' scratch: a block of 16 rows repacked (a zmm per 4 columns; for
// the one-token kernel, a partial last block copied whole, which fits the
// same bytes) and their scales and biases as f32 (or 16-bit pairs).
inline int64_t int8_packed_bytes(int64_t in) { return (in + 127) / 128 * 128 / 4 * 64; }
inline int64_t int8_scratch_bytes(int64_t in, int64_t group) { return int8_packed_bytes(in) + 2 * 16 * 4 * (in / group); }
// avx512::bf16_packed_rows transposes kBf16PanelColumns columns of a block
// of kBf16PanelRows rows at a time into the thread's scratch (3 vectors of
// 16 rows x 8 tokens = 24 accumulators; 48 KB panels; of 32/48/64 rows and
// 256/512/2048 columns these did best on Zen 4, within that VM's noise).
constexpr int kBf16PanelRows = 48;
constexpr int64_t kBf16PanelColumns = 512;
inline int64_t bf16_panel_bytes() { return kBf16PanelColumns * kBf16PanelRows * 2; }
// avx512::bf16_lanes_rows: up to 4 vectors of 16 tokens, each column pair's
// tokens transposed into the thread's scratch; tiles of up to 24 rows.
constexpr int64_t kBf16LanesMaxTokens = 64;
constexpr int64_t kBf16LanesRows = 24;
inline int64_t bf16_lanes_bytes(int64_t in, int64_t n_tokens) {
  return bf16_stride(in) / 2 * ((n_tokens + 15) / 16) * 64;
}
// The AVX-512 affine kernels keep a tile's scales on the stack.
constexpr int64_t kMaxGroups = 1024;

namespace avx2 {
bool compiled();
void exact_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// Affine 4- and 8-bit, group 32, 64 or 128, activations args.xq, scratch
// args.scratch (int8_scratch_bytes). Row ranges should start at multiples
// of 8 (rows go in blocks of 8). Calls of up to int8_avx2_gemv_tokens(bits)
// tokens go in passes over each block (4-bit: up to 3 tokens a pass, 8-bit:
// one), longer ones through repacked blocks. 4-bit passes beat the repacked
// tiles up to ~96 tokens (session 25, in turns: one expert 1408 x 4096, 6-96
// tokens 1.07-1.59x; the 3-layer int4 model, batch decode of 6-32
// sequences 1.08-1.31, prompts of 64 tokens 1.05 and 1.07 again with 64
// over 32); 8-bit passes, one token each, do not (prompts of 32-128 tokens
// even at a threshold of 32).
constexpr int64_t int8_avx2_gemv_tokens(int bits) { return bits == 4 ? 64 : 5; }
void int8_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// Prompts take tokens in tiles of kInt8Avx2TileTokens (the last one
// shorter) and read them from args.xq_tiles: tile [t0, t0 + T) stored from
// xq_tiles + t0 * xq_stride as [in / 4][T][4 bytes] (the dispatcher writes
// it from xq), so a quad's broadcasts for the tile come from one line. The
// rows of xq lie a page apart at 4096 columns: a tile's lines of a group
// would share one L1 set with the repacked block streaming through it.
constexpr int64_t kInt8Avx2TileTokens = 4;
// A token's activations for int8_rows: xq [int8_stride(in)] (even_odd, for
// the one-token 4-bit kernel: each 64 columns as the even then the odd
// ones; else in order), steps and sums [in / group], the values
// avx512::prepare_int8 gives.
void prepare_int8(const float* x, int64_t in, int64_t group, bool even_odd, int8_t* xq, float* steps, float* sums);
// avx512::fill_block_scale_pairs' layout (the same dwords), for int8_rows:
// with args.block_pairs set it widens a block's 8 pairs per group instead
// of gathering the scales and biases through transposes.
void fill_block_scale_pairs(const LinearArgs& args, uint32_t* out);
// Float weights (f32, bf16, f16) on AVX2, every mode: each block of
// kAvx2PanelRows rows widened into the thread's scratch as f32 panels
// (a column's 16 rows in two vectors), kAvx2PanelColumns columns at a time,
// each chunk passed over by tiles of up to kAvx2PanelTileTokens tokens
// (sizes as even as the tile count allows), each token's x broadcast per
// column from args.x_tiles (scratch avx2_panel_bytes(n_tokens)). Each
// output is two FMA chains (its even and its odd columns, each in order)
// added at the end, whatever the call's size.
constexpr int kAvx2PanelRows = 16;
constexpr int64_t kAvx2PanelTileTokens = 6;
// x as the panels read it: the call's n_tokens cut into
// ceil(n_tokens / kAvx2PanelTileTokens) consecutive tiles whose sizes differ
// by at most one, tile [t0, t0 + size) stored from x_tiles + t0 * in column
// by column ([in][size]). A column's broadcasts for a tile then come from
// one line, where the rows of x (a whole number of pages apart at GLM's
// widths) would put `size` lines into the same L1 set and, from 32 tokens,
// 8 or more into one L2 set. Writes token `token`'s row x_row.
void pack_panel_token(const float* x_row, int64_t token, int64_t n_tokens, int64_t in, float* x_tiles);
constexpr int64_t kAvx2PanelColumns = 1024;  // a chunk: 64 KB of panel
// Blocks of rows that take each chunk in turn before the next chunk, so a
// chunk's x (2 MB at 512 tokens) is read from L3 by each of them; each
// block's chains wait in scratch between chunks.
constexpr int kAvx2PanelGroupBlocks = 4;
inline int64_t avx2_panel_bytes(int64_t n_tokens) {  // the panel, then [group block][n_tokens][C <= 2][16] chains
  return (kAvx2PanelColumns + kAvx2PanelGroupBlocks * n_tokens * 2) * kAvx2PanelRows * 4;
}
void float_panel_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// fast-prompts' prompt steps: the same panels, one chain per output (one
// pass over each chunk instead of two), another order.
void float_panel_rows_one_chain(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// float_panel_rows' bits for calls of a few tokens, no scratch: 8 rows at
// a time transposed in registers, tokens in groups of up to 3 (each block
// of 8 rows takes every group before the next block). Row ranges should
// start at multiples of 8.
constexpr int64_t kAvx2LanesRowUnit = 8;
// Calls of at least this many tokens take the panels.
// Up to 9 tokens the lanes kernel is the faster (in turns, bf16: 7-9 tokens
// panels/lanes 0.85-0.95, 10-11 even, 12-14 1.06-1.10; session 23).
constexpr int64_t kAvx2PanelMinTokens = 10;
void float_lanes_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
}  // namespace avx2

namespace avx512 {
bool compiled();
void exact_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// BF16 weights, activations args.xb (needs AVX512_BF16).
void bf16_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// The same from packed panels (fast-prompts), another summation order;
// scratch args.scratch (bf16_panel_bytes()). Row ranges should start at
// multiples of kBf16PanelRows.
void bf16_packed_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// Calls of up to kBf16LanesMaxTokens tokens with bf16_packed_rows' bits,
// tokens in the lanes; scratch bf16_lanes_bytes(in, n_tokens). Row ranges
// should start at multiples of kBf16LanesRows.
void bf16_lanes_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// Affine 4/8-bit, group 32, 64 or 128, activations args.xq, scratch
// args.scratch (needs AVX512_VNNI). Row ranges should start at multiples of
// 16 (rows go in blocks of 16).
void int8_rows(const LinearArgs& args, int64_t row_begin, int64_t row_end);
// Token t's activations for exact_rows on affine weights: xp [in] (4-bit),
// group sums [in / group] (8-bit).
void prepare_exact(const float* x, int64_t in, int64_t group, int bits, float* xp, float* sums);
// Token t's activations for bf16_rows: out [bf16_stride(in)].
void prepare_bf16(const float* x, int64_t in, uint16_t* out);
// A token's activations for int8_rows: xq [int8_stride(in)], steps and sums [in / group].
void prepare_int8(const float* x, int64_t in, int64_t group, int bits, int8_t* xq, float* steps, float* sums);
// The block_scale_pairs of an affine weight whose scales and biases are both
// bf16 or both f16: out [ceil(out_features / 16) * in / group * 16].
void fill_block_scale_pairs(const LinearArgs& args, uint32_t* out);
}  // namespace avx512

}  // namespace glm::cpu::kernels
