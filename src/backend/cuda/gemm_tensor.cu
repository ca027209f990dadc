// Prompt-sized matrix products on tensor cores: out[rows, O] = x[rows, I] W[O, I]^T,
// the operands rounded to bf16 and the products summed in f32 by Hopper's
// warpgroup MMA (wgmma, sm_90a) or by mma.sync m16n8k16 (sm_80 and later).
//
// Why: a prompt of n tokens multiplies every weight by n activation rows, so
// it is bound by arithmetic, not by memory; the SIMT GEMM in linear.cu does
// ~20 TFLOP/s, the tensor cores several hundred.
//
// How one block computes a 128-row (or 64-row) x 128-feature tile of the output:
//   - The activations are rounded to bf16 once, before the product (a pass
//     over x), so the main loop copies them as they are.
//   - The depth is walked in stages of 64. Each stage's activation tile and
//     the weights' stored bytes (packed integers and their scale pairs, FP8
//     bytes, or float values) are copied into shared memory with cp.async,
//     kStages - 1 stages ahead of the arithmetic, so many loads are in flight
//     without holding registers: the loop is limited by the tensor cores, not
//     by memory latency.
//   - A weight stage is widened to a bf16 tile in shared memory by all
//     threads (the format's 8-value pieces, weight_formats.cuh), so a
//     quantized weight is never expanded in device memory. bf16 weights skip
//     this: their stored bytes are the tile.
//   - On Hopper (sm_90a code, GLM_CUDA_WGMMA not 0) the 4 warps are one
//     warpgroup: per 16 of depth it issues one wgmma m64n128k16 per 64 rows,
//     which reads both tiles straight from shared memory (128-byte rows in
//     the 128-byte swizzle) and runs asynchronously, so the threads widen
//     the next stage while the tensor cores multiply this one. Elsewhere 4
//     warps (2 along rows x 2 along features) each multiply 64 x 64 of the
//     tile (32 x 64 with 64-row tiles) with ldmatrix + mma.sync. Either
//     way the sums stay in registers and two blocks share an SM (one for
//     f16 and f32 weights).
//
// Three uses, one template:
//   plain     out = x W^T + bias                     (projections, lm_head)
//   SwiGLU    out = silu(x G^T) * (x U^T) in bf16    (expert gate and up in one pass: the
//             block's 128 weight rows are 64 gate and the same 64 up rows, so
//             each thread holds gate and up of the same outputs)
//   grouped   rows are (token, expert) assignments sorted by expert; block y
//             takes tile y of the concatenated per-expert row ranges and that
//             expert's weights, the x rows gathered by token
// Rounding the operands to bf16 costs ~2e-3 relative error per output;
// GLM_CUDA_PROMPTS=simt keeps the f32 SIMT path.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/weight_formats.cuh"

namespace glm::cuda {
namespace {

constexpr int kTileWeights = 128;       // weight rows staged per block (SwiGLU: 64 gate + 64 up)
constexpr int kTileDepth = 64;          // k per stage: 8 pieces of 8 a weight row
constexpr int kDepthUnit = 32;          // depths must be multiples of this; a last half stage is zero-filled
constexpr int kStages = 3;              // stages in flight: 2 being copied while one is multiplied
constexpr int kThreads = 128;           // 4 warps: one warpgroup (wgmma), or 2 along rows x 2 along features (mma.sync)
constexpr int kWarpFeatures = kTileWeights / 2;  // weight rows a warp multiplies: 64
constexpr int kNTiles = kWarpFeatures / 8;       // its 8-feature mma tiles
constexpr int kPitch = kTileDepth + 8;  // bf16 per shared tile row: 144 bytes, so ldmatrix's 8 rows hit distinct banks
constexpr int kMaxPairs = kTileDepth / 32;  // affine scale pairs a row's stage spans (groups of 32 and up)
// Output rows per block: 128 (warps of 64 rows) for projections and experts
// with many rows each; 64 (warps of 32) for experts with few, whose row
// ranges end in partial tiles (tensor_expert_tile_rows); 32 for experts with
// fewer still, in the register-weights kernel only.
constexpr int kRowsLarge = 128, kRowsSmall = 64, kRowsTiny = 32;

// What one launch multiplies (see the file comment for the three uses).
struct TensorGemm {
  void* out;                 // [rows, out_stride] f32 (plain) or bf16 (SwiGLU)
  int64_t out_stride;
  const __nv_bfloat16* x;    // [*, depth] activations in bf16
  const int32_t* x_rows;     // null, or [rows]: the x row of each output row (gathered tokens)
  int64_t rows;              // plain: output rows
  int64_t features;          // output features (SwiGLU: gate rows)
  int64_t depth;             // k, a multiple of kDepthUnit
  Matrix first, second;      // plain: first; SwiGLU: gate, up (ungrouped)
  const void* bias;          // null or [features]
  DType bias_dtype;
  // Grouped: per local expert e, output rows [row_begin[e], row_begin[e + 1])
  // and tiles [tile_begin[e], tile_begin[e + 1]); weights expert_first[e] (and expert_second[e]).
  const Matrix* expert_first;
  const Matrix* expert_second;
  const int32_t* row_begin;   // [held + 1]
  const int32_t* tile_begin;  // [held + 1]
  int held;
  // SwiGLU: out's features in the depth order (depth_in_order) of the
  // kernel that takes out as the down projection's operand: 0 as they are,
  // 4 or 8 the register-weights kernel's for weights of that many bits.
  int out_order;
};

void append_signature(Signature& signature, const TensorGemm& g) {
  signature.add_all(g.out, g.out_stride, g.x, g.x_rows, g.rows, g.features, g.depth, g.first, g.second, g.bias,
                    g.bias_dtype, g.expert_first, g.expert_second, g.row_begin, g.tile_begin, g.held,
                    g.out_order);
}

// ---- How each format's stored bytes of one stage (32 values of a row) are
// staged and read back as 8-value pieces.
//   kBytes        stored bytes of a row's stage (a multiple of 16)
//   kDirect       the stored bytes are already the bf16 tile
//   kHasPairs     the row's scale pairs are staged with it (affine)
//   bytes(m, row, k0)   where those bytes start in device memory
//   pair(m, row, k0)    where the scale pair starts
//   piece(m, row, k0, staged, pair, p)   piece p (values 8p..8p+7) from shared memory
template <typename Format>
struct Stage;

template <typename T>
struct Stage<FloatFormat<T>> {
  static constexpr int kBytes = kTileDepth * static_cast<int>(sizeof(T));
  static constexpr bool kDirect = std::is_same_v<T, __nv_bfloat16>;  // the stored bytes are the bf16 tile
  static constexpr bool kHasPairs = false;
  __device__ static int pair_bytes(const Matrix&) { return 0; }
  __device__ static const char* bytes(const Matrix& m, int64_t row, int64_t k0) {
    return static_cast<const char*>(m.data) + (row * m.cols + k0) * static_cast<int64_t>(sizeof(T));
  }
  __device__ static const char* pair(const Matrix&, int64_t, int64_t) { return nullptr; }
  __device__ static typename FloatFormat<T>::Piece piece(const Matrix&, int64_t, int64_t, const char* staged,
                                                         const char*, int p) {
    typename FloatFormat<T>::Piece piece;
    load8(reinterpret_cast<const T*>(staged) + 8 * p, piece.values);
    return piece;
  }
};

template <int BITS>
struct Stage<AffineFormat<BITS>> {
  static constexpr int kBytes = kTileDepth * BITS / 8;
  static constexpr bool kDirect = false;
  static constexpr bool kHasPairs = true;
  __device__ static int pair_bytes(const Matrix& m) { return m.scales_dtype == DType::BF16 ? 4 : 8; }
  __device__ static const char* bytes(const Matrix& m, int64_t row, int64_t k0) {
    return reinterpret_cast<const char*>(AffineFormat<BITS>::row_words(m, row)) + k0 * BITS / 8;
  }
  // The pair of the group holding column k0 (groups are multiples of 32:
  // see reads(); a stage spans one group, or two of 32).
  __device__ static const char* pair(const Matrix& m, int64_t row, int64_t k0) {
    return static_cast<const char*>(m.scales) + (row * m.scales_stride + k0 / m.group_size) * pair_bytes(m);
  }
  __device__ static typename AffineFormat<BITS>::Piece piece(const Matrix& m, int64_t, int64_t, const char* staged,
                                                             const char* pairs, int p) {
    typename AffineFormat<BITS>::Piece piece;
    const uint32_t* words = reinterpret_cast<const uint32_t*>(staged);
#pragma unroll
    for (int w = 0; w < BITS / 4; ++w) piece.words[w] = words[p * (BITS / 4) + w];
    const int pair = m.group_size == 32 ? p / 4 : 0;  // staged pairs: one per 32 columns with groups of 32
    AffineFormat<BITS>::pair_at(pairs, m.scales_dtype, pair, piece.scale, piece.bias);
    return piece;
  }
};

template <>
struct Stage<Fp8Format> {
  static constexpr int kBytes = kTileDepth;
  static constexpr bool kDirect = false;
  static constexpr bool kHasPairs = false;
  __device__ static int pair_bytes(const Matrix&) { return 0; }  // the scale is read where it is (L1/L2)
  __device__ static const char* bytes(const Matrix& m, int64_t row, int64_t k0) {
    return static_cast<const char*>(m.data) + row * m.cols + k0;
  }
  __device__ static const char* pair(const Matrix&, int64_t, int64_t) { return nullptr; }
  __device__ static Fp8Format::Piece piece(const Matrix& m, int64_t row, int64_t k0, const char* staged, const char*,
                                           int p) {
    return {reinterpret_cast<const uint2*>(staged)[p], Fp8Format::scale_of(m, row, k0 + 8 * p)};
  }
};

// FP8 with a tensor or channel scale gets its own kernel: the weights widen
// unscaled (exactly: every e4m3 value is a bf16) and the scale multiplies the
// f32 sums in the epilogue (sum_k x_k s w_k = s sum_k x_k w_k), instead of a
// scale read and a product per piece in the main loop. Block scales change
// along the depth and stay per piece (Fp8Format). (Its 128-row wgmma kernels
// spill ~100 bytes in the epilogue, the scale loads beside 128 live sums;
// none in the main loop.)
struct Fp8ScaledSums : Fp8Format {};
template <>
struct Stage<Fp8ScaledSums> : Stage<Fp8Format> {};

// Shared memory of one block: the rings of staged activations and weights,
// then the widened weight tile (absent for direct formats). mma.sync reads
// bf16 rows padded to kPitch; wgmma reads unpadded 128-byte rows in the
// 128-byte swizzle (mma.cuh), tiles on 1024-byte boundaries, and has two
// widened tiles, one being multiplied while the next is widened, where two
// blocks an SM still fit (int4 and FP8 stages; not 8-bit affine ones, whose
// scale pairs and wider rows would make a second tile cost one block an SM:
// int8 q_proj 214 -> 183 TFLOP/s). f16 and f32 weights fit one block an SM
// whatever the tiles (rare: checkpoints are bf16 or quantized).
constexpr int kTwoBlocksShared = 113 * 1024;  // 228 KB an SM, less 1 KB the system keeps per block
template <typename Format, int kTileRows, bool kWgmma>
struct Layout {
  using S = Stage<Format>;
  static constexpr int kRowBytes = kWgmma ? kTileDepth * 2 : kPitch * 2;  // bytes per bf16 tile row
  static constexpr int kXStage = kTileRows * kRowBytes;
  static constexpr int kWeightPitch = S::kDirect ? kRowBytes : S::kBytes + 16;  // bytes per staged weight row
  static constexpr int kWeightStage = kTileWeights * kWeightPitch;
  static constexpr int kPairStage = S::kHasPairs ? kTileWeights * 8 * kMaxPairs : 0;
  static constexpr int kTileBytes = kTileWeights * kRowBytes;
  static constexpr int kX = 0;
  static constexpr int kWeights = kX + kStages * kXStage;
  static constexpr int kPairs = kWeights + kStages * kWeightStage;
  static constexpr int kTile = (kPairs + kStages * kPairStage + 1023) / 1024 * 1024;
  static constexpr int kAlignment = kWgmma ? 1024 : 16;  // of the block's base, found at run time
  static constexpr bool kTwoTilesFit = kTile + 2 * kTileBytes + kAlignment - 16 <= kTwoBlocksShared;
  static constexpr int kTiles = S::kDirect ? 0 : kWgmma && kTwoTilesFit ? 2 : 1;
  static constexpr int kTotal = kTile + kTiles * kTileBytes + kAlignment - 16;
};

// ---- The register-weights kernel's depth orders (register_weights_kernel
// below). Its thread at column c = lane % 4 takes the 16 consecutive values
// 16c..16c+15 of each weight row's stage of 64 (one 8-byte load of packed
// 4-bit values, one 16-byte load of 8-bit ones). wgmma's register operand
// wants that thread's values at depths 2c, 2c+1, 2c+8, 2c+9 of each 16, so
// the kernel multiplies the stage in another order, the activations are
// written in that order too, and every weight still meets its own
// activation: a sum over the depth does not depend on the order of its terms.
//   4-bit: nibbles p and p + 4 of the thread's word v (one bf16 pair, the
//     cheapest to widen) go to depth step 2v + p / 2, slots 2c + 8 (p % 2)
//     and + 1.
//   8-bit: bytes 4t..4t+3 of the thread's 16 go to step t, the first two at
//     slots 2c, 2c + 1, the last two at 2c + 8, 2c + 9.
// Where position `position` (0..63) of the order for kValueBits-bit weights
// reads its stage's value from.
template <int kValueBits>
__host__ __device__ constexpr int register_depth_source(int position) {
  const int step = position / 16, slot = position % 16;
  const int column = (slot % 8) / 2, second = slot % 2, upper = slot / 8;  // upper: slots 2c + 8, 2c + 9
  if constexpr (kValueBits == 4) return 16 * column + 8 * (step / 2) + 2 * (step % 2) + upper + 4 * second;
  else return 16 * column + 4 * step + 2 * upper + second;
}
// Where value `depth` (0..63) of a stage goes in that order (the inverse).
template <int kValueBits>
__host__ __device__ constexpr int register_depth_position(int depth) {
  const int column = depth / 16, within = depth % 16;  // the thread's 16 values
  if constexpr (kValueBits == 4) {
    const int word = within / 8, pair = within % 4, second = (within % 8) / 4;
    return 16 * (2 * word + pair / 2) + 2 * column + 8 * (pair % 2) + second;
  } else {
    const int step = within / 4, byte = within % 4;
    return 16 * step + 2 * column + 8 * (byte / 2) + byte % 2;
  }
}
template <int kValueBits>
constexpr bool register_order_is_a_permutation() {
  for (int depth = 0; depth < 64; ++depth)
    if (register_depth_source<kValueBits>(register_depth_position<kValueBits>(depth)) != depth) return false;
  return true;
}
static_assert(register_order_is_a_permutation<4>() && register_order_is_a_permutation<8>(),
              "a register depth order must be a permutation of each stage");

// Position of value `depth` in the order `order` (0: as it is; 4 or 8: the
// register kernel's for weights of that many bits).
__device__ __forceinline__ int64_t depth_in_order(int64_t depth, int order) {
  if (order == 0) return depth;
  const int64_t stage = depth / kTileDepth * kTileDepth;
  const int within = static_cast<int>(depth % kTileDepth);
  return stage + (order == 4 ? register_depth_position<4>(within) : register_depth_position<8>(within));
}

// The output rows [row0, row_end) of block (x, y) and its weights (SwiGLU:
// gate and up); false for a grouped block past the last expert tile (the
// grid is sized for the worst case).
template <bool kSwiGLU, bool kGrouped, int kTileRows>
__device__ __forceinline__ bool block_work(const TensorGemm& g, int64_t& row0, int64_t& row_end, Matrix& first,
                                           Matrix& second) {
  if constexpr (kGrouped) {
    const int tile = static_cast<int>(blockIdx.y);
    if (tile >= g.tile_begin[g.held]) return false;
    int low = 0, high = g.held - 1;  // the last expert whose tiles start at or before `tile`
    while (low < high) {
      const int middle = (low + high + 1) / 2;
      if (g.tile_begin[middle] <= tile) low = middle;
      else high = middle - 1;
    }
    row0 = g.row_begin[low] + static_cast<int64_t>(tile - g.tile_begin[low]) * kTileRows;
    row_end = g.row_begin[low + 1];
    first = g.expert_first[low];
    second = kSwiGLU ? g.expert_second[low] : first;
  } else {
    row0 = static_cast<int64_t>(blockIdx.y) * kTileRows;
    row_end = g.rows;
    first = g.first;
    second = g.second;
  }
  return true;
}

// kWgmma: the block's 4 warps are one warpgroup issuing wgmma (sm_90a) on
// the whole tile instead of 4 warps each issuing mma.sync on a quarter.
// (The block's work; tensor_gemm_kernel below launches it.)
template <typename Format, bool kSwiGLU, bool kGrouped, int kTileRows, bool kWgmma>
__device__ __forceinline__ void tensor_gemm_tile(const TensorGemm& g) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  using S = Stage<Format>;
  using L = Layout<Format, kTileRows, kWgmma>;
  constexpr int kMTiles = kTileRows / 32;  // mma.sync: 16-row tiles per warp (2 warps along rows)
  extern __shared__ __align__(16) char shared_raw[];
  char* const shared = shared_raw + (L::kAlignment - shared_address(shared_raw) % L::kAlignment) % L::kAlignment;

  // The rows and weights of this block.
  int64_t row0, row_end;
  Matrix first, second;
  if (!block_work<kSwiGLU, kGrouped, kTileRows>(g, row0, row_end, first, second)) return;
  constexpr int kBlockFeatures = kSwiGLU ? kTileWeights / 2 : kTileWeights;
  const int64_t feature0 = static_cast<int64_t>(blockIdx.x) * kBlockFeatures;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_row = warp / 2, warp_feature = warp % 2;

  // Copies: activation chunk c = tid + 128 i is 16 bytes (8 values) of
  // tile row c / 8; weight row r (of the 128 staged) is the SwiGLU's up row
  // when r >= 64. Each thread keeps the row numbers of its copies (32-bit,
  // -1 past the end: registers are what limits these kernels) and forms the
  // addresses per stage.
  constexpr int kXChunks = kTileDepth / 8;  // 16-byte chunks per staged activation row
  constexpr int kXSlots = kTileRows * kXChunks / kThreads;
  int32_t x_source[kXSlots];
#pragma unroll
  for (int i = 0; i < kXSlots; ++i) {
    const int64_t row = row0 + (tid + kThreads * i) / kXChunks;
    x_source[i] = row >= row_end ? -1 : g.x_rows ? g.x_rows[row] : static_cast<int32_t>(row);
  }
  auto feature_of = [&](int r) -> int64_t { return feature0 + (kSwiGLU ? r % (kTileWeights / 2) : r); };
  auto weight_row = [&](int r, bool& valid) {
    const int64_t feature = feature_of(r);
    valid = feature < g.features;
    return valid ? feature : int64_t{0};
  };
  // Weight chunk c = tid + 128 i is 16 bytes (kValuesPerChunk values) of
  // staged row c / kChunks; the sources are fixed per thread and advance by
  // kAdvance bytes a stage.
  // (Pointers are chosen here, once: selecting between the two Matrix
  // structs inside the loop would put them in local memory.)
  constexpr int kChunks = S::kBytes / 16;
  constexpr int kValuesPerChunk = kTileDepth / kChunks;
  constexpr int kChunkSlots = (kTileWeights * kChunks + kThreads - 1) / kThreads;
  constexpr int64_t kAdvance = S::kBytes;  // stored bytes of a row per stage
  static_assert(kTileWeights * kChunks % kThreads == 0, "slots i >= kChunkSlots / 2 must be the rows 64..127");
  const char* w_first = S::bytes(first, 0, 0);
  const char* w_second = S::bytes(second, 0, 0);
  const int64_t w_stride = S::bytes(first, 1, 0) - w_first;  // bytes a row (gate and up share their format)
  int32_t w_source[kChunkSlots];  // the weight row of each copy, -1 past the features
#pragma unroll
  for (int i = 0; i < kChunkSlots; ++i) {
    bool valid;
    const int64_t row = weight_row((tid + kThreads * i) / kChunks, valid);
    w_source[i] = valid ? static_cast<int32_t>(row) : -1;
  }
  // Thread r < 128 stages row r's scale pair (affine): group g of the row at
  // pair_source + g * pair_bytes. Gate and up share their format.
  const int pair_bytes = S::pair_bytes(first);
  const char* pair_source = nullptr;
  bool pair_valid = false;
  if (pair_bytes > 0 && tid < kTileWeights) {
    const int64_t row = weight_row(tid, pair_valid);
    const char *base_first = S::pair(first, row, 0), *base_second = S::pair(second, row, 0);
    pair_source = kSwiGLU && tid >= kTileWeights / 2 ? base_second : base_first;
  }

  // Byte offset of 16-byte chunk `chunk` (values 8 chunk..) of row r of a
  // bf16 tile: padded rows for ldmatrix, the 128-byte swizzle for wgmma.
  auto tile_offset = [](int r, int chunk) {
    if constexpr (kWgmma) return swizzled_128(r, chunk);
    else return r * L::kRowBytes + chunk * 16;
  };

  // Copies of stage k0 into ring slot `slot`. Past the depth (a last half
  // stage when depth % 64 == 32) the copies write zeros.
  auto issue_stage = [&](int64_t k0, int slot) {
    char* x_ring = shared + L::kX + slot * L::kXStage;
#pragma unroll
    for (int i = 0; i < kXSlots; ++i) {
      const int c = tid + kThreads * i;
      const int64_t k = k0 + (c % kXChunks) * 8;
      cp_async_16(shared_address(x_ring + tile_offset(c / kXChunks, c % kXChunks)),
             g.x + static_cast<int64_t>(max(x_source[i], 0)) * g.depth + k, x_source[i] >= 0 && k < g.depth);
    }
    char* w_ring = shared + L::kWeights + slot * L::kWeightStage;
    const int64_t advance = k0 / kTileDepth * kAdvance;
#pragma unroll
    for (int i = 0; i < kChunkSlots; ++i) {
      const int c = tid + kThreads * i;
      const int64_t k = k0 + (c % kChunks) * kValuesPerChunk;
      const char* base = kSwiGLU && i >= kChunkSlots / 2 ? w_second : w_first;  // known once unrolled
      const int staged = S::kDirect ? tile_offset(c / kChunks, c % kChunks) : (c / kChunks) * L::kWeightPitch + (c % kChunks) * 16;
      cp_async_16(shared_address(w_ring + staged),
             base + static_cast<int64_t>(max(w_source[i], 0)) * w_stride + (c % kChunks) * 16 + advance,
             w_source[i] >= 0 && k < g.depth);
    }
    if (pair_source) {  // groups of 32: a pair per 32 columns; else the stage's one group
      char* destination = shared + L::kPairs + slot * L::kPairStage + tid * 8 * kMaxPairs;
      const int pairs = first.group_size == 32 ? kMaxPairs : 1;
      for (int q = 0; q < pairs; ++q) {
        const int64_t k = k0 + 32 * q;
        const char* source = pair_source + (k / first.group_size) * pair_bytes;
        if (pair_bytes == 4) cp_async_small<4>(shared_address(destination + 4 * q), source, pair_valid && k < g.depth);
        else cp_async_small<8>(shared_address(destination + 8 * q), source, pair_valid && k < g.depth);
      }
    }
  };

  // Widens stage s's staged weights into the bf16 tile at `tile`: piece p =
  // tid + 128 i is piece p % 8 (= tid % 8) of row p / 8. Which of those rows
  // exist is fixed for the block: a bit per i, found once (the per-piece
  // 64-bit checks were a tenth of the main loop's instructions).
  constexpr int kPieces = kTileDepth / 8;
  constexpr int kWidenSteps = kTileWeights * kPieces / kThreads;
  uint32_t widen_rows = 0;
  constexpr bool kScaleSums = std::is_same_v<Format, Fp8ScaledSums>;  // scales applied in store()
#pragma unroll
  for (int i = 0; i < kWidenSteps; ++i) {
    bool valid;
    weight_row((tid + kThreads * i) / kPieces, valid);
    widen_rows |= static_cast<uint32_t>(valid) << i;
  }
  // Piece `index` (8 values) of a staged weight row as bf16 pairs.
  auto widen_piece = [&](const Matrix& m, int64_t row, int64_t k0, const char* staged, const char* pairs,
                         int index) -> uint4 {
    if constexpr (kScaleSums) return Fp8Format::unscaled_bf16(reinterpret_cast<const uint2*>(staged)[index]);
    const auto piece = S::piece(m, row, k0, staged, pairs, index);
    if constexpr (requires { Format::piece_bf16(piece); }) {  // straight to bf16 pairs (4-bit)
      return Format::piece_bf16(piece);
    } else {
      float values[8];
      Format::piece_values(piece, values);
      return {pack_bf16(values[0], values[1]), pack_bf16(values[2], values[3]), pack_bf16(values[4], values[5]),
              pack_bf16(values[6], values[7])};
    }
  };
  auto widen_stage = [&](int s, char* tile) {
    const int slot = s % kStages;
    const int64_t k0 = static_cast<int64_t>(s) * kTileDepth;
    const bool depth_valid = k0 + (tid % kPieces) * 8 < g.depth;  // a last half stage
#pragma unroll
    for (int i = 0; i < kWidenSteps; ++i) {
      const int p = tid + kThreads * i, r = p / kPieces;
      uint4 packed = {0u, 0u, 0u, 0u};
      if (depth_valid && (widen_rows >> i & 1u)) {
        const int64_t row = feature_of(r);  // exists: widen_rows
        // the second half of i holds rows 64..127: the up rows with SwiGLU, known once unrolled
        packed = widen_piece(kSwiGLU && i >= kWidenSteps / 2 ? second : first, row, k0,
                             shared + L::kWeights + slot * L::kWeightStage + r * L::kWeightPitch,
                             shared + L::kPairs + slot * L::kPairStage + r * 8 * kMaxPairs, p % kPieces);
      }
      *reinterpret_cast<uint4*>(tile + tile_offset(r, p % kPieces)) = packed;
    }
  };
  // Stage s's tiles: activations, and the weights as bf16 (as staged, or widened).
  auto x_tile_of = [&](int s) { return shared + L::kX + (s % kStages) * L::kXStage; };
  auto w_tile_of = [&](int s) {
    if constexpr (S::kDirect) return shared + L::kWeights + (s % kStages) * L::kWeightStage;
    else return shared + L::kTile + (s % L::kTiles) * L::kTileBytes;
  };

  const int stages = static_cast<int>((g.depth + kTileDepth - 1) / kTileDepth);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < stages) issue_stage(static_cast<int64_t>(s) * kTileDepth, s);
    cp_async_commit();  // empty groups keep the count: stage s is always group s
  }

  // Thread (g, t) = (lane / 4, lane % 4) holds rows g and g + 8 of each
  // 16-row tile, features 2t and 2t + 1 of each 8-feature tile, with both
  // instructions. store() writes tile row `tile_row`, tile feature n (with
  // SwiGLU, `value` is the gate sum and `up` the up sum of that feature).
  const int group = lane / 4, pair = lane % 4;
  // kScaleSums: the scale of tile feature n's sums (of the up rows' with
  // `up`), applied to the accumulators before store(); one live at a time.
  auto sum_scale = [&](int n, bool up) {
    const int64_t feature = feature0 + n;
    return feature < g.features ? Fp8Format::scale_of(up ? second : first, feature, 0) : 0.0f;
  };
  auto store = [&](int tile_row, int n, float value, float up) {
    const int64_t row = row0 + tile_row, feature = feature0 + n;
    if (row >= row_end || feature >= g.features) return;
    if constexpr (kSwiGLU)
      static_cast<__nv_bfloat16*>(g.out)[row * g.out_stride + depth_in_order(feature, g.out_order)] =
          __float2bfloat16_rn(value / (1.0f + __expf(-value)) * up);
    else
      static_cast<float*>(g.out)[row * g.out_stride + feature] =
          value + (g.bias ? element_f32(g.bias, g.bias_dtype, feature) : 0.0f);
  };

  if constexpr (kWgmma) {
    // acc[h][4 j + i]: tile rows 64 h + 16 warp + group (+ 8 for i >= 2),
    // tile feature 8 j + 2 pair + i % 2 (wgmma_m64n128k16_bf16).
    float acc[kTileRows / 64][64] = {};
    for (int s = 0; s < stages; ++s) {
      cp_async_wait<kStages - 2>();  // this thread's copies of stage s have landed
      if constexpr (L::kTiles == 1) wgmma_wait<0>();  // one tile: stage s - 1's products must be done with it
      if constexpr (!S::kDirect) {
        __syncthreads();  // everyone's copies have landed: widen them (two tiles: tile s % 2 was last read
                          // by stage s - 2's products, done)
        widen_stage(s, w_tile_of(s));
      }
      fence_proxy_async();  // this thread's copies and tile writes, visible to the tensor cores
      wgmma_wait<0>();      // stage s - 1's products are done with their slot and tile
      __syncthreads();
      const int next = s + kStages - 1;
      if (next < stages) issue_stage(static_cast<int64_t>(next) * kTileDepth, next % kStages);
      cp_async_commit();
      const uint32_t x_tile = shared_address(x_tile_of(s)), w_tile = shared_address(w_tile_of(s));
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kTileDepth; kk += 16)
#pragma unroll
        for (int h = 0; h < kTileRows / 64; ++h)  // 64 rows of 128 bytes apart; 16 values = 32 bytes deeper
          wgmma_m64n128k16_bf16(acc[h], wgmma_descriptor(x_tile + h * 64 * 128 + kk * 2),
                                wgmma_descriptor(w_tile + kk * 2));
      wgmma_commit();  // runs while the next stage is widened
    }
    wgmma_wait<0>();
#pragma unroll
    for (int h = 0; h < kTileRows / 64; ++h) wgmma_hold(acc[h]);
    cp_async_wait<0>();
    if constexpr (kScaleSums) {
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {  // SwiGLU: tiles 8..15 are the up rows of tile features 0..63
          const float scale = sum_scale(8 * (kSwiGLU ? j % 8 : j) + 2 * pair + c, kSwiGLU && j >= 8);
#pragma unroll
          for (int h = 0; h < kTileRows / 64; ++h) acc[h][4 * j + c] *= scale, acc[h][4 * j + 2 + c] *= scale;
        }
    }
#pragma unroll
    for (int h = 0; h < kTileRows / 64; ++h)
#pragma unroll
      for (int j = 0; j < (kSwiGLU ? 8 : 16); ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i)  // SwiGLU: the gate at feature n, its up 64 tile features on
          store(64 * h + 16 * warp + group + 8 * (i / 2), 8 * j + 2 * pair + i % 2, acc[h][4 * j + i],
                kSwiGLU ? acc[h][4 * (j + 8) + i] : 0.0f);
  } else {
    // acc[m][j]: rows warp_row * kTileRows / 2 + 16 m (+8), the warp's 8-feature tile j.
    float acc[kMTiles][kNTiles][4] = {};
    // Tile rows of the warp's feature tiles 2q and 2q + 1 (16 consecutive rows).
    auto weight_rows_of_pair = [&](int q) {
      // SwiGLU: pairs 0, 1 are the warp's 32 gate rows, pairs 2, 3 the same features' up rows.
      return kSwiGLU ? (q / 2) * (kTileWeights / 2) + warp_feature * 32 + 16 * (q % 2)
                     : warp_feature * kWarpFeatures + 16 * q;
    };
    for (int s = 0; s < stages; ++s) {
      cp_async_wait<kStages - 2>();  // this thread's copies of stage s have landed
      __syncthreads();               // everyone's have, and everyone is done with stage s - 1's slot
      const int next = s + kStages - 1;
      if (next < stages) issue_stage(static_cast<int64_t>(next) * kTileDepth, next % kStages);
      cp_async_commit();
      if constexpr (!S::kDirect) {
        widen_stage(s, w_tile_of(s));
        __syncthreads();
      }
      const __nv_bfloat16* x_tile = reinterpret_cast<const __nv_bfloat16*>(x_tile_of(s));
      const __nv_bfloat16* w_tile = reinterpret_cast<const __nv_bfloat16*>(w_tile_of(s));
#pragma unroll
      for (int kk = 0; kk < kTileDepth; kk += 16) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m)
          ldmatrix_x4(a[m], shared_address(&x_tile[(warp_row * (kTileRows / 2) + 16 * m + lane % 16) * kPitch + kk +
                                                   (lane / 16) * 8]));
        uint32_t b[kNTiles / 2][4];
#pragma unroll
        for (int q = 0; q < kNTiles / 2; ++q)
          ldmatrix_x4(b[q], shared_address(&w_tile[(weight_rows_of_pair(q) + lane % 8 + 8 * (lane / 16)) * kPitch +
                                                   kk + 8 * ((lane / 8) % 2)]));
#pragma unroll
        for (int m = 0; m < kMTiles; ++m)
#pragma unroll
          for (int j = 0; j < kNTiles; ++j)
            mma_bf16(acc[m][j], a[m], b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]);
      }
    }
    cp_async_wait<0>();
    if constexpr (kScaleSums) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {  // SwiGLU: tiles kNTiles / 2.. are the up rows of the first half's features
          const float scale = kSwiGLU ? sum_scale(warp_feature * 32 + 8 * (j % (kNTiles / 2)) + 2 * pair + c,
                                                  j >= kNTiles / 2)
                                      : sum_scale(warp_feature * kWarpFeatures + 8 * j + 2 * pair + c, false);
#pragma unroll
          for (int m = 0; m < kMTiles; ++m) acc[m][j][c] *= scale, acc[m][j][2 + c] *= scale;
        }
    }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int j = 0; j < (kSwiGLU ? kNTiles / 2 : kNTiles); ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // SwiGLU: the up sums of the same features are kNTiles / 2 tiles on
          const int tile_row = warp_row * (kTileRows / 2) + 16 * m + group + 8 * (i / 2);
          const int n = kSwiGLU ? warp_feature * 32 + 8 * j + 2 * pair + i % 2
                                : warp_feature * kWarpFeatures + 8 * j + 2 * pair + i % 2;
          store(tile_row, n, acc[m][j][i], kSwiGLU ? acc[m][j + kNTiles / 2][i] : 0.0f);
        }
  }
}

// ---- Weights in registers: quantized weights on Hopper (sm_90a) ----
// The kernel above widens each quantized weight stage into a bf16 tile in
// shared memory: all threads load the packed bytes, widen, store the tile,
// meet at a barrier, and the tensor cores read it back. That pass, not the
// tensor cores, bounds it (int4 at 36% of the bf16 matmul rate, bf16 weights
// at 52%). Here the operands swap roles: the weights are wgmma's first
// operand (64 weight rows an instruction), widened by each thread straight
// into the registers the instruction reads, and the activations (the
// tokens) are the second, read from the staged tile in shared memory. No
// bf16 weight tile, no widening barrier, and shared memory carries the
// stored bytes of a weight once instead of its widened bf16 twice.
//   - Formats: 4- and 8-bit affine (AffineFormat<4>, AffineFormat<8>) and
//     FP8 with a tensor or channel scale (Fp8ScaledSums: the e4m3 values
//     widen exactly, the scale multiplies each weight row's f32 sums).
//   - A block computes 128 weight rows (two instructions of 64; SwiGLU: 64
//     gate rows and the same 64 up rows, so each thread holds the gate and
//     up sums of the same outputs) by kTokens rows (tokens: 128, or 64 or 32
//     for experts with few rows each: wgmma's N may be any multiple of 8).
//   - Stages of 64 depth go through a ring of 4 slots with cp.async, two
//     stages ahead: the staged activations (128-byte swizzled rows, as in the
//     shared-memory kernel), the packed weight rows and their scale pairs.
//   - Per stage each thread loads its 16 values of each of its 4 weight rows
//     (the depth orders above), then per 16 of depth widens 16 values into
//     8 registers and issues two wgmma; each buffer of registers is
//     rewritten only after the products that read it are done (wgmma_wait<1>
//     leaves only the previous step's in flight).
// Depths must be multiples of 64, affine groups 32 or multiples of 64.
constexpr int kRegisterSlots = 4;  // ring: stage s + 2 copied while s is multiplied and s - 1 finishes
template <typename Format>
constexpr int kRegisterValueBits = std::is_same_v<Format, AffineFormat<4>> ? 4 : 8;
template <typename Format, int kTokens>
struct RegisterLayout {
  static constexpr int kRowBytes = kTileDepth * kRegisterValueBits<Format> / 8;  // a packed row's stage
  static constexpr bool kAffine = !std::is_same_v<Format, Fp8ScaledSums>;
  static constexpr int kXStage = kTokens * 128;                  // bf16 activations: kTokens rows of 64
  static constexpr int kWeightStage = kTileWeights * kRowBytes;  // packed rows
  static constexpr int kPairStage = kAffine ? kTileWeights * 16 : 0;  // a row's one or two (scale, bias) pairs, 8 bytes each
  static constexpr int kX = 0;                                   // 1024-aligned: the swizzle's period
  static constexpr int kWeights = kX + kRegisterSlots * kXStage;
  static constexpr int kPairs = kWeights + kRegisterSlots * kWeightStage;
  static constexpr int kTotal = kPairs + kRegisterSlots * kPairStage + 1024 - 16;
  static_assert(kTotal <= kTwoBlocksShared, "two blocks an SM");
};

// Nibbles `pair` and `pair` + 4 of `word` as a bf16 pair scale q + bias
// (scales, biases: bf16 pairs of the same value), each nibble placed under
// the exponent of 128 for AffineFormat<4>::biased_pair_bf16.
__device__ __forceinline__ uint32_t widen_nibble_pair(uint32_t word, int pair, uint32_t scales, uint32_t biases) {
  return AffineFormat<4>::biased_pair_bf16(((word >> (4 * pair)) & 0x000F000Fu) | 0x43004300u,
                                           *reinterpret_cast<const __nv_bfloat162*>(&scales),
                                           *reinterpret_cast<const __nv_bfloat162*>(&biases));
}

template <int kTokens>
__device__ __forceinline__ void wgmma_registers(float (&d)[kTokens / 2], const uint32_t (&a)[4], uint64_t b,
                                                bool accumulate) {
  if constexpr (kTokens == 128) wgmma_m64n128k16_bf16_rs(d, a, b, accumulate);
  else if constexpr (kTokens == 64) wgmma_m64n64k16_bf16_rs(d, a, b, accumulate);
  else wgmma_m64n32k16_bf16_rs(d, a, b, accumulate);
}

// Code other than sm_90a never launches the wgmma kernels (the backend asks
// wgmma_compiled() first), so there they are stubs: the build does not
// compile their bodies a second time for sm_80.
template <typename Format, bool kSwiGLU, bool kGrouped, int kTileRows, bool kWgmma>
__global__ void __launch_bounds__(kThreads, 2) tensor_gemm_kernel(const TensorGemm g) {
#ifndef GLM_WGMMA
  if constexpr (kWgmma) __trap();
  else
#endif
    tensor_gemm_tile<Format, kSwiGLU, kGrouped, kTileRows, kWgmma>(g);
}

// (The block's work; register_weights_kernel below launches it.)
template <typename Format, bool kSwiGLU, bool kGrouped, int kTokens>
__device__ __forceinline__ void register_weights_tile(const TensorGemm& g) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  using L = RegisterLayout<Format, kTokens>;
  constexpr int kValueBits = kRegisterValueBits<Format>;
  extern __shared__ __align__(16) char shared_raw[];
  char* const shared = shared_raw + (1024 - shared_address(shared_raw) % 1024) % 1024;
  int64_t row0, row_end;
  Matrix first, second;
  if (!block_work<kSwiGLU, kGrouped, kTokens>(g, row0, row_end, first, second)) return;
  constexpr int kBlockFeatures = kSwiGLU ? kTileWeights / 2 : kTileWeights;
  const int64_t feature0 = static_cast<int64_t>(blockIdx.x) * kBlockFeatures;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int group = lane / 4, column = lane % 4;

  // Copies, as in tensor_gemm_kernel: activation chunk c = tid + 128 i is
  // 16 bytes of token row c / 8; weight chunk c = tid + 128 i is 16 bytes of
  // staged row c / kChunks (i >= kChunkSlots / 2: rows 64..127, the up rows
  // with SwiGLU); thread r stages row r's scale pairs (affine).
  constexpr int kXSlots = kTokens * 8 / kThreads;
  int32_t x_source[kXSlots];
#pragma unroll
  for (int i = 0; i < kXSlots; ++i) {
    const int64_t row = row0 + (tid + kThreads * i) / 8;
    x_source[i] = row >= row_end ? -1 : g.x_rows ? g.x_rows[row] : static_cast<int32_t>(row);
  }
  auto feature_of = [&](int r) -> int64_t { return feature0 + (kSwiGLU ? r % (kTileWeights / 2) : r); };
  constexpr int kChunks = L::kRowBytes / 16, kChunkSlots = kTileWeights * kChunks / kThreads;
  const char* w_first = static_cast<const char*>(first.data);
  const char* w_second = static_cast<const char*>(second.data);
  const int64_t w_stride = first.cols * kValueBits / 8;  // bytes a packed row
  int32_t w_source[kChunkSlots];
#pragma unroll
  for (int i = 0; i < kChunkSlots; ++i) {
    const int64_t feature = feature_of((tid + kThreads * i) / kChunks);
    w_source[i] = feature < g.features ? static_cast<int32_t>(feature) : -1;
  }
  const int pair_bytes = first.scales_dtype == DType::BF16 ? 4 : 8;
  const bool two_groups = first.group_size == 32;  // a stage spans two groups of 32, else lies in one
  const int64_t pair_feature = feature_of(tid);
  const bool pair_valid = pair_feature < g.features;
  const char* pair_source = static_cast<const char*>(kSwiGLU && tid >= kTileWeights / 2 ? second.scales : first.scales) +
                            (pair_valid ? pair_feature : 0) * first.scales_stride * pair_bytes;

  auto issue_stage = [&](int s, int slot) {
    const int64_t k0 = static_cast<int64_t>(s) * kTileDepth;
    char* x_ring = shared + L::kX + slot * L::kXStage;
#pragma unroll
    for (int i = 0; i < kXSlots; ++i) {
      const int c = tid + kThreads * i;
      cp_async_16(shared_address(x_ring + swizzled_128(c / 8, c % 8)),
                  g.x + static_cast<int64_t>(max(x_source[i], 0)) * g.depth + k0 + (c % 8) * 8, x_source[i] >= 0);
    }
    char* w_ring = shared + L::kWeights + slot * L::kWeightStage;
#pragma unroll
    for (int i = 0; i < kChunkSlots; ++i) {
      const int c = tid + kThreads * i;
      const char* base = kSwiGLU && i >= kChunkSlots / 2 ? w_second : w_first;  // known once unrolled
      cp_async_16(shared_address(w_ring + c * 16),
                  base + static_cast<int64_t>(max(w_source[i], 0)) * w_stride + k0 * kValueBits / 8 + (c % kChunks) * 16,
                  w_source[i] >= 0);
    }
    if constexpr (L::kAffine) {
      char* pairs = shared + L::kPairs + slot * L::kPairStage + tid * 16;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        if (q == 1 && !two_groups) break;
        const char* source = pair_source + ((k0 + 32 * q) / first.group_size) * pair_bytes;
        if (pair_bytes == 4) cp_async_small<4>(shared_address(pairs + 8 * q), source, pair_valid);
        else cp_async_small<8>(shared_address(pairs + 8 * q), source, pair_valid);
      }
    }
  };

  const int stages = static_cast<int>(g.depth / kTileDepth);
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    if (s < stages) issue_stage(s, s);
    cp_async_commit();  // empty groups keep the count: stage s is always group s
  }
  // acc[h][4 j + i]: weight row 64 h + 16 warp + group (+ 8 for i >= 2) of
  // the block, token 8 j + 2 column + i % 2 of the tile (wgmma's layout).
  float acc[2][kTokens / 2];  // the first products overwrite them (accumulate = false)
  uint32_t a[2][2][4];        // [buffer][h] the registers wgmma reads: two steps of 16 in flight
  using Slice = std::conditional_t<kValueBits == 4, uint2, uint4>;  // a thread's 16 values of a row
  for (int s = 0; s < stages; ++s) {
    cp_async_wait<1>();   // this thread's copies of stage s have landed
    fence_proxy_async();  // and are visible to the tensor cores
    __syncthreads();      // everyone's have; every product of stage s - 2 is done (the waits below)
    if (s + 2 < stages) issue_stage(s + 2, (s + 2) % kRegisterSlots);
    cp_async_commit();
    const int slot = s % kRegisterSlots;
    // This thread's values of its 4 weight rows (64 h + 16 warp + group + 8 r)
    // and their scale pairs: 4-bit as bf16 pairs (scale, scale) and (bias,
    // bias) for one bf16 fma a pair; 8-bit as f32.
    Slice slices[2][2];
    uint32_t scales[2][2], biases[2][2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = 64 * h + 16 * warp + group + 8 * r;
        slices[h][r] = *reinterpret_cast<const Slice*>(shared + L::kWeights + slot * L::kWeightStage +
                                                       row * L::kRowBytes + column * sizeof(Slice));
        if constexpr (L::kAffine) {
          const char* pair = shared + L::kPairs + slot * L::kPairStage + row * 16 + (two_groups ? 8 * (column / 2) : 0);
          float scale, bias;
          AffineFormat<kValueBits>::pair_at(pair, first.scales_dtype, 0, scale, bias);
          if constexpr (kValueBits == 4) {
            scales[h][r] = pack_bf16(scale, scale);
            biases[h][r] = pack_bf16(bias, bias);
          } else {
            scales[h][r] = __float_as_uint(scale);
            biases[h][r] = __float_as_uint(bias);
          }
        }
      }
    // Step `step`'s values of row (h, r) as the bf16 pairs at slots 2c, 2c + 1 (low) and 2c + 8, 2c + 9 (high).
    auto widen = [&](int h, int r, int step, uint32_t& low, uint32_t& high) {
      if constexpr (kValueBits == 4) {
        const uint32_t word = step / 2 ? slices[h][r].y : slices[h][r].x;
        low = widen_nibble_pair(word, 2 * (step % 2), scales[h][r], biases[h][r]);
        high = widen_nibble_pair(word, 2 * (step % 2) + 1, scales[h][r], biases[h][r]);
      } else {
        const uint4 bytes = slices[h][r];
        const uint32_t word = step == 0 ? bytes.x : step == 1 ? bytes.y : step == 2 ? bytes.z : bytes.w;
        if constexpr (L::kAffine) {
          const float scale = __uint_as_float(scales[h][r]), bias = __uint_as_float(biases[h][r]);
          auto value = [&](int b) { return __fmaf_rn(scale, AffineFormat<8>::byte_to_float(word, b), bias); };
          low = pack_bf16(value(0), value(1));
          high = pack_bf16(value(2), value(3));
        } else {
          low = Fp8Format::unscaled_pair_bf16(word);
          high = Fp8Format::unscaled_pair_bf16(word >> 16);
        }
      }
    };
    const uint32_t x_tile = shared_address(shared + L::kX + slot * L::kXStage);
#pragma unroll
    for (int step = 0; step < kTileDepth / 16; ++step) {
      const int buffer = step % 2;
      wgmma_wait<1>();  // the products of step - 2, which read this buffer, are done
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        wgmma_hold_registers(a[buffer][h]);
#pragma unroll
        for (int r = 0; r < 2; ++r) widen(h, r, step, a[buffer][h][r], a[buffer][h][2 + r]);
      }
      wgmma_fence();
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wgmma_registers<kTokens>(acc[h], a[buffer][h], wgmma_descriptor(x_tile + step * 32), s > 0 || step > 0);
      wgmma_commit();
    }
  }
  wgmma_wait<0>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    wgmma_hold(acc[h]);
    wgmma_hold_registers(a[0][h]);
    wgmma_hold_registers(a[1][h]);
  }
  cp_async_wait<0>();

  // FP8: each weight row's scale on its sums (rows past the features: 0).
  float row_scale[2][2] = {{1.0f, 1.0f}, {1.0f, 1.0f}};
  if constexpr (!L::kAffine) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t feature = feature_of(64 * h + 16 * warp + group + 8 * r);
        row_scale[h][r] = feature < g.features ? Fp8Format::scale_of(h == 1 ? second : first, feature, 0) : 0.0f;
      }
  }
#pragma unroll
  for (int j = 0; j < kTokens / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row0 + 8 * j + 2 * column + i % 2;
      if (row >= row_end) continue;
      const int m = 16 * warp + group + 8 * (i / 2);
      if constexpr (kSwiGLU) {  // h = 0 the gate sums, h = 1 the up sums of the same features
        const int64_t feature = feature0 + m;
        const float gate = acc[0][4 * j + i] * row_scale[0][i / 2], up = acc[1][4 * j + i] * row_scale[1][i / 2];
        if (feature < g.features)
          static_cast<__nv_bfloat16*>(g.out)[row * g.out_stride + depth_in_order(feature, g.out_order)] =
              __float2bfloat16_rn(gate / (1.0f + __expf(-gate)) * up);
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t feature = feature0 + 64 * h + m;
          if (feature < g.features)
            static_cast<float*>(g.out)[row * g.out_stride + feature] =
                acc[h][4 * j + i] * row_scale[h][i / 2] + (g.bias ? element_f32(g.bias, g.bias_dtype, feature) : 0.0f);
        }
      }
    }
}

template <typename Format, bool kSwiGLU, bool kGrouped, int kTokens>
__global__ void __launch_bounds__(kThreads, 2) register_weights_kernel(const TensorGemm g) {
#ifdef GLM_WGMMA
  register_weights_tile<Format, kSwiGLU, kGrouped, kTokens>(g);
#else
  (void)g;
  __trap();  // sm_90a only (see tensor_gemm_kernel)
#endif
}

// A grid for the grid-stride loops below: a block of 256 threads per 256
// work items, at most 4096 blocks (each thread then takes several items).
dim3 strided_grid(int64_t items) {
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(blocks_for(items, 256), 1, 4 * 1024)));
}

// x rounded to bf16 in the register-weights kernel's depth order for
// kValueBits-bit weights (register_depth_source), 8 values a thread; count
// is a multiple of 64.
template <int kValueBits>
__global__ void round_to_bf16_register_order_kernel(__nv_bfloat16* __restrict__ out, const float* __restrict__ x,
                                                    int64_t count) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * 8; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x * 8) {
    const float* stage = x + i / kTileDepth * kTileDepth;  // the 64 values this thread's 8 come from
    const int position = static_cast<int>(i % kTileDepth);
    uint32_t packed[4];
#pragma unroll
    for (int e = 0; e < 4; ++e)
      packed[e] = pack_bf16(stage[register_depth_source<kValueBits>(position + 2 * e)],
                            stage[register_depth_source<kValueBits>(position + 2 * e + 1)]);
    *reinterpret_cast<uint4*>(out + i) = uint4{packed[0], packed[1], packed[2], packed[3]};
  }
}

// x rounded to bf16 (the product's activation operand), 4 values a thread.
__global__ void round_to_bf16_kernel(__nv_bfloat16* __restrict__ out, const float* __restrict__ x, int64_t count) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * 4; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x * 4) {
    const float4 v = *reinterpret_cast<const float4*>(x + i);
    *reinterpret_cast<uint2*>(out + i) = uint2{pack_bf16(v.x, v.y), pack_bf16(v.z, v.w)};
  }
}

const __nv_bfloat16* rounded_to_bf16(Context& ctx, const float* x, int64_t count) {
  __nv_bfloat16* out = ctx.scratch<__nv_bfloat16>(count);
  launch(ctx, round_to_bf16_kernel, strided_grid(count / 4), dim3(256), 0, out, x, count);
  return out;
}

// x [n, cols] as two bf16 parts stacked as 2n rows: rows [0, n) hi = bf16(x),
// rows [n, 2n) lo = bf16(x - hi) (x - hi is exact in f32), for an
// f32-activation product on tensor cores (tensor_linear).
__global__ void split_to_bf16_kernel(__nv_bfloat16* __restrict__ parts, const float* __restrict__ x, int64_t count) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const __nv_bfloat16 high = __float2bfloat16_rn(x[i]);
    parts[i] = high;
    parts[count + i] = __float2bfloat16_rn(x[i] - __bfloat162float(high));
  }
}

// out [n, features] = (W hi + bias) + W lo from the stacked products [2n, features].
__global__ void sum_halves_kernel(float* __restrict__ out, const float* __restrict__ halves, const void* bias,
                                  DType bias_dtype, int64_t count, int64_t features) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = (halves[i] + (bias ? element_f32(bias, bias_dtype, i % features) : 0.0f)) + halves[count + i];
}

// Launches GEMM kernel kKernel with kBytes of dynamic shared memory (past
// 48 KB a kernel must ask for it: once per kernel, the static below).
template <auto kKernel, int kBytes>
void launch_gemm_kernel(Context& ctx, const TensorGemm& g, dim3 grid) {
  static const bool raised = [] {
    CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
    return true;
  }();
  (void)raised;
  launch(ctx, kKernel, grid, dim3(kThreads), kBytes, g);
}

// x rounded to bf16 in depth order `order` (depth_in_order; 4 or 8: count
// is whole stages of 64), the operand of a product whose kernel reads it so.
const __nv_bfloat16* rounded_in_order(Context& ctx, const float* x, int64_t count, int order) {
  if (order == 0) return rounded_to_bf16(ctx, x, count);
  __nv_bfloat16* out = ctx.scratch<__nv_bfloat16>(count);
  const dim3 grid = strided_grid(count / 8);
  if (order == 4) launch(ctx, round_to_bf16_register_order_kernel<4>, grid, dim3(256), 0, out, x, count);
  else launch(ctx, round_to_bf16_register_order_kernel<8>, grid, dim3(256), 0, out, x, count);
  return out;
}

// The depth order of the kernel that multiplies this weight: 4 or 8 where
// the register-weights kernel takes it (on Hopper's wgmma unless
// GLM_CUDA_REGISTER_WEIGHTS=0; 4- and 8-bit affine with a stage in one group
// or two of 32, FP8 with a tensor or channel scale; whole stages of 64), the
// bits of a stored value; 0 (as it is) for the shared-memory kernels.
int register_order(const Context& ctx, const Matrix& weight) {
  if (!ctx.register_weight_prompts || weight.cols % kTileDepth != 0) return 0;
  if (weight.kind == WeightFormat::Kind::Affine && (weight.bits == 4 || weight.bits == 8) &&
      (weight.group_size == 32 || weight.group_size % kTileDepth == 0) &&
      (weight.bits == 4 ? AffineFormat<4>::pieces_ok(weight) : AffineFormat<8>::pieces_ok(weight)))
    return weight.bits;
  if (weight.kind == WeightFormat::Kind::Fp8 && weight.fp8_scale != WeightFormat::Fp8Scale::Block &&
      Fp8Format::pieces_ok(weight))
    return 8;
  return 0;
}

template <bool kSwiGLU, bool kGrouped, int kTokens>
void launch_register_weights(Context& ctx, const TensorGemm& g, const Matrix& format_of, dim3 grid) {
  auto launch_as = [&](auto format) {
    using Format = decltype(format);
    launch_gemm_kernel<register_weights_kernel<Format, kSwiGLU, kGrouped, kTokens>,
                       RegisterLayout<Format, kTokens>::kTotal>(ctx, g, grid);
  };
  if (format_of.kind == WeightFormat::Kind::Fp8) launch_as(Fp8ScaledSums{});
  else if (format_of.bits == 4) launch_as(AffineFormat<4>{});
  else launch_as(AffineFormat<8>{});
}

// Whether the kernel reads this weight: the format's 8-value pieces, whole
// stages of depth, and stages that lie in one affine group or FP8 scale block.
bool reads(const Matrix& weight) {
  bool pieces = false;
  dispatch_format(weight, [&](auto format) {
    using Format = decltype(format);
    if constexpr (Format::kHasPieces) pieces = Format::pieces_ok(weight);
  });
  // A stage's columns lie in one affine group, or in two of 32.
  if (weight.kind == WeightFormat::Kind::Affine && weight.group_size != 32 && weight.group_size % kTileDepth != 0)
    return false;
  if (weight.kind == WeightFormat::Kind::Fp8 && weight.fp8_scale == WeightFormat::Fp8Scale::Block &&
      weight.block_cols % 8 != 0)
    return false;
  return pieces && weight.cols % kDepthUnit == 0;
}

template <typename Format, bool kSwiGLU, bool kGrouped, int kTileRows, bool kWgmma>
void launch_kernel(Context& ctx, const TensorGemm& g, dim3 grid) {
  launch_gemm_kernel<tensor_gemm_kernel<Format, kSwiGLU, kGrouped, kTileRows, kWgmma>,
                     Layout<Format, kTileRows, kWgmma>::kTotal>(ctx, g, grid);
}

template <bool kSwiGLU, bool kGrouped, int kTileRows>
void launch_gemm(Context& ctx, const TensorGemm& g, const Matrix& format_of, dim3 grid) {
  dispatch_format(format_of, [&](auto format) {
    using Format = decltype(format);
    if constexpr (Format::kHasPieces) {
      auto launch_as = [&](auto as) {
        using Kernel = decltype(as);
        if (ctx.wgmma_prompts) launch_kernel<Kernel, kSwiGLU, kGrouped, kTileRows, true>(ctx, g, grid);
        else launch_kernel<Kernel, kSwiGLU, kGrouped, kTileRows, false>(ctx, g, grid);
      };
      if constexpr (std::is_same_v<Format, Fp8Format>) {
        if (format_of.fp8_scale != WeightFormat::Fp8Scale::Block) return launch_as(Fp8ScaledSums{});
      }
      launch_as(format);
    } else {
      fail("internal error: the tensor-core GEMM got a format without pieces");
    }
  });
}

// Writes 1 where this binary holds sm_90a code for the device it runs on.
__global__ void wgmma_probe_kernel(int* compiled) {
#ifdef GLM_WGMMA
  *compiled = 1;
#else
  *compiled = 0;
#endif
}

}  // namespace

bool wgmma_compiled(cudaStream_t stream) {
  // Start-up only, outside any recorded step: a plain launch, then a wait.
  struct Flag {
    int* device = nullptr;
    ~Flag() { cudaFree(device); }
  } flag;
  CUDA_CHECK(cudaMalloc(&flag.device, sizeof(int)));
  CUDA_CHECK(cudaMemsetAsync(flag.device, 0, sizeof(int), stream));
  wgmma_probe_kernel<<<1, 1, 0, stream>>>(flag.device);
  CUDA_CHECK(cudaGetLastError());
  int compiled = 0;
  CUDA_CHECK(cudaMemcpyAsync(&compiled, flag.device, sizeof(int), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return compiled == 1;
}

bool tensor_linear(Context& ctx, float* out, const float* x, int64_t n, const Matrix& weight, const Matrix* bias) {
  if (!ctx.tensor_core_prompts || !reads(weight) || reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  // A marked weight other than bf16 (f32 and f16 values do not fit bf16; no
  // router is quantized) takes the exact paths.
  const bool split = weight.f32_activations;
  if (split && (weight.kind != WeightFormat::Kind::Float || weight.dtype != DType::BF16)) return false;
  const int order = register_order(ctx, weight);  // 0 for bf16
  auto product = [&](float* target, const __nv_bfloat16* input, int64_t rows, const Matrix* with_bias) {
    TensorGemm g{};
    g.out = target;
    g.out_stride = weight.rows;
    g.x = input;
    g.rows = rows;
    g.features = weight.rows;
    g.depth = weight.cols;
    g.first = g.second = weight;
    g.bias = with_bias ? with_bias->data : nullptr;
    g.bias_dtype = with_bias ? with_bias->dtype : DType::F32;
    const dim3 grid(blocks_for(weight.rows, kTileWeights), blocks_for(rows, kRowsLarge));
    if (order != 0) launch_register_weights<false, false, kRowsLarge>(ctx, g, weight, grid);
    else launch_gemm<false, false, kRowsLarge>(ctx, g, weight, grid);
  };
  if (!split) {
    product(out, rounded_in_order(ctx, x, n * weight.cols, order), n, bias);
    return true;
  }
  // x = hi + lo + e with hi = bf16(x), lo = bf16(x - hi) and |e| <= 2^-17 |x|;
  // a bf16 weight times either part is an exact product summed in f32, so
  // W hi + W lo is the f32-activation product to ~1e-5. The parts go as 2n
  // rows of one product (a router's 128 features make a grid of few blocks,
  // so a second product after the first would cost as long again), then one
  // kernel adds the halves; a SIMT GEMM would cost ~0.2 ms a layer whatever
  // the prompt's length.
  const int64_t count = n * weight.cols, outputs = n * weight.rows;
  __nv_bfloat16* parts = ctx.scratch<__nv_bfloat16>(2 * count);  // [2n, cols]: hi rows, then lo rows
  launch(ctx, split_to_bf16_kernel, strided_grid(count), dim3(256), 0, parts, x, count);
  float* halves = ctx.scratch<float>(2 * outputs);  // [2n, rows]: W hi, then W lo
  product(halves, parts, 2 * n, nullptr);
  launch(ctx, sum_halves_kernel, strided_grid(outputs), dim3(256), 0, out, halves, bias ? bias->data : nullptr,
         bias ? bias->dtype : DType::F32, outputs, weight.rows);
  return true;
}

bool tensor_experts_fit(const Context& ctx, const Matrix& gate, const Matrix& up, const Matrix& down, const float* x) {
  const bool same_gate_up = gate.kind == up.kind && gate.dtype == up.dtype && gate.bits == up.bits &&
                            gate.group_size == up.group_size && gate.scales_dtype == up.scales_dtype &&
                            gate.fp8_scale == up.fp8_scale && gate.rows == up.rows && gate.cols == up.cols;
  return ctx.tensor_core_prompts && same_gate_up && reads(gate) && reads(down) && gate.rows % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

// Each expert's rows end in a partial tile: 64-row tiles waste less of it,
// 128-row tiles widen each weight stage for twice the rows and give each warp
// twice the rows (H200, 4096 tokens x top 8 over 128 experts, 256 rows an
// expert: 128-row tiles 226 / 162 TFLOP/s bf16 / int4, 64-row 195 / 125).
// Where both products take the register-weights kernel, experts with fewer
// than 48 rows on average get 32-row tiles (a 512-token prompt: 32 rows an
// expert).
// GLM_CUDA_EXPERT_TILE_ROWS=32|64|128 (Context::expert_tile_rows) forces one (for measuring; 32 only
// where the register-weights kernel takes both).
int tensor_expert_tile_rows(const Context& ctx, int64_t assignments, int64_t held, const Matrix& gate0,
                            const Matrix& down0) {
  const int forced = ctx.expert_tile_rows;
  const bool tiny_ok = register_order(ctx, gate0) != 0 && register_order(ctx, down0) != 0;
  if (forced == kRowsSmall || forced == kRowsLarge) return forced;
  if (forced == kRowsTiny) return tiny_ok ? kRowsTiny : kRowsSmall;
  if (assignments >= 192 * held) return kRowsLarge;
  return tiny_ok && assignments < 48 * held ? kRowsTiny : kRowsSmall;
}

namespace {

// A grouped product over the rows of `rows` with the experts' weights.
TensorGemm grouped(void* out, const __nv_bfloat16* x, const ExpertRows& rows, const Matrix* first,
                   const Matrix* second, const Matrix& first0) {
  TensorGemm g{};
  g.out = out;
  g.out_stride = first0.rows;
  g.x = x;
  g.features = first0.rows;
  g.depth = first0.cols;
  g.expert_first = first;
  g.expert_second = second;
  g.row_begin = rows.row_begin;
  g.tile_begin = rows.tile_begin;
  g.held = rows.held;
  return g;
}

// A grouped product on the register-weights kernel or the shared-memory
// one, with expert tiles of `tile_rows` (32 only on the register kernel:
// tensor_expert_tile_rows).
template <bool kSwiGLU>
void launch_grouped(Context& ctx, const TensorGemm& g, const Matrix& format_of, bool registers, int tile_rows,
                    dim3 grid) {
  if (registers && tile_rows == kRowsLarge) launch_register_weights<kSwiGLU, true, kRowsLarge>(ctx, g, format_of, grid);
  else if (registers && tile_rows == kRowsTiny) launch_register_weights<kSwiGLU, true, kRowsTiny>(ctx, g, format_of, grid);
  else if (registers) launch_register_weights<kSwiGLU, true, kRowsSmall>(ctx, g, format_of, grid);
  else if (tile_rows == kRowsLarge) launch_gemm<kSwiGLU, true, kRowsLarge>(ctx, g, format_of, grid);
  else launch_gemm<kSwiGLU, true, kRowsSmall>(ctx, g, format_of, grid);
}

}  // namespace

void tensor_experts_gate_up(Context& ctx, __nv_bfloat16* act, const float* x, int64_t n, const ExpertRows& rows,
                            const Matrix* gate, const Matrix* up, const Matrix& gate0, const Matrix& down0) {
  const int order = register_order(ctx, gate0);
  TensorGemm g = grouped(act, rounded_in_order(ctx, x, n * gate0.cols, order), rows, gate, up, gate0);
  g.x_rows = rows.token;
  g.out_order = register_order(ctx, down0);  // act is the down projection's operand
  launch_grouped<true>(ctx, g, gate0, order != 0, rows.tile_rows,
                       dim3(blocks_for(gate0.rows, kTileWeights / 2), static_cast<unsigned>(rows.max_tiles)));
}

void tensor_experts_down(Context& ctx, float* expert_out, const __nv_bfloat16* act, const ExpertRows& rows,
                         const Matrix* down, const Matrix& down0) {
  const TensorGemm g = grouped(expert_out, act, rows, down, down, down0);
  launch_grouped<false>(ctx, g, down0, register_order(ctx, down0) != 0, rows.tile_rows,
                        dim3(blocks_for(down0.rows, kTileWeights), static_cast<unsigned>(rows.max_tiles)));
}

}  // namespace glm::cuda
