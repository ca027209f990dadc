// How CUDA kernels read weights of every stored format, dequantizing in
// registers (a quantized weight is never expanded in device memory).
//
// A format is a small struct with one interface, so a kernel is written once
// and instantiated per format (dispatch_format picks the instance):
//   kValues             values covered by one chunk (the unit a lane loads)
//   Raw                 the chunk's stored bytes and its scales, in registers
//   load(m, row, c)     chunk c of a row (columns [c*kValues, (c+1)*kValues))
//   Decoded, decode(raw)  the chunk widened to f32 once, for every token
//   dot(decoded, x)     sum over the chunk of value_i * x_i, in f32
//   at(m, row, col)     one value (the scalar path for odd shapes, the GEMM)
//   vectorizable(m)     host: whether chunks tile the rows and are aligned
//
// Values are those of the CPU oracle (backend/cpu/dequantize.cpp):
//   float:   the stored value widened to f32;
//   affine:  scale * q + bias, q from a little-endian bit stream over 32-bit
//            words (3/5/6/7-bit values straddle words);
//   FP8:     float(e4m3) * scale, the scale per tensor, row or block.
// Decoding is where a GEMV on quantized weights spends its instructions, so
// the chunk dot products keep the scales out of the inner loop: a chunk lies
// in one group (or FP8 scale block), so
//   sum_i (scale * q_i + bias) * x_i = scale * sum_i q_i x_i + bias * sum_i x_i,
// and 4/8-bit integers become floats by the exponent trick (the integer
// placed in the mantissa of 2^23, then 2^23 subtracted: exact, and cheaper
// than a conversion instruction). The results differ from the oracle's
// per-element rounding only in the last bits (tests bound it at 1e-5).
// One chunk is 16 bytes where the format allows (one vector load a lane),
// which keeps enough bytes in flight to saturate HBM; the scales are loaded
// with the chunk so their latency overlaps the weights'.
#pragma once

#include <cuda_fp8.h>

#include "backend/cuda/ops.cuh"

namespace glm::cuda {

// ---- float weights: 8 values of T per chunk (16 bytes for 16-bit types)
template <typename T>
struct FloatFormat {
  static constexpr int kValues = 8;
  struct Raw {
    float values[8];
  };
  __device__ static Raw load(const Matrix& m, int64_t row, int64_t chunk) {
    Raw raw;
    load8(static_cast<const T*>(m.data) + row * m.cols + chunk * kValues, raw.values);
    return raw;
  }
  using Decoded = Raw;
  __device__ static Decoded decode(const Raw& raw) { return raw; }
  __device__ static float dot(const Decoded& d, const float* x) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kValues; i += 4) {
      const float4 a = *reinterpret_cast<const float4*>(x + i);
      sum += d.values[i] * a.x + d.values[i + 1] * a.y + d.values[i + 2] * a.z + d.values[i + 3] * a.w;
    }
    return sum;
  }
  __device__ static float at(const Matrix& m, int64_t row, int64_t col) {
    return to_f32(static_cast<const T*>(m.data)[row * m.cols + col]);
  }
  static bool vectorizable(const Matrix& m) {
    return m.cols % kValues == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
  }

  // Pieces (block_row_dots): 8 values, 16 bytes at 16 bits.
  static constexpr bool kHasPieces = true;
  static constexpr int kRows = sizeof(T) == 4 ? 4 : 8;
  static constexpr bool kPipelined = false;  // 16-byte pieces keep enough in flight; a second set would spill
  using Piece = Raw;
  using Row = const T*;
  __device__ static Row row_of(const Matrix& m, int64_t row) { return static_cast<const T*>(m.data) + row * m.cols; }
  __device__ static Piece load_piece(const Matrix&, Row row, int64_t piece) {
    Piece p;
    load8(row + piece * 8, p.values);
    return p;
  }
  __device__ static float piece_dot(const Piece& p, const float (&x)[8], float) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += p.values[i] * x[i];
    return sum;
  }
  // The piece's 8 weights as values (the tensor-core GEMM stages them in shared memory).
  __device__ static void piece_values(const Piece& p, float (&values)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) values[i] = p.values[i];
  }
  static bool pieces_ok(const Matrix& m) { return vectorizable(m); }
};

// ---- mlx affine: 32 values per chunk = BITS words (16 bytes at 4 bits)
template <int BITS>
struct AffineFormat {
  static constexpr int kBits = BITS;
  static constexpr int kValues = 32;
  static constexpr uint32_t kMask = (1u << BITS) - 1u;
  struct Raw {
    uint32_t words[BITS];
    float scale, bias;  // of the chunk's group
  };
  struct Decoded {
    float q[kValues];  // the integers, exactly, as floats
    float scale, bias;
  };
  __device__ static const uint32_t* row_words(const Matrix& m, int64_t row) {
    return static_cast<const uint32_t*>(m.data) + row * (m.cols * BITS / 32);
  }
  // Scales and biases are interleaved pairs ([rows, groups, 2], BF16 or F32: see place()).
  __device__ static void pair_at(const void* pairs, DType dtype, int64_t group, float& scale, float& bias) {
    if (dtype == DType::BF16) {
      const uint32_t both = static_cast<const uint32_t*>(pairs)[group];
      scale = __uint_as_float(both << 16);
      bias = __uint_as_float(both & 0xffff0000u);
    } else {
      const float2 both = static_cast<const float2*>(pairs)[group];
      scale = both.x;
      bias = both.y;
    }
  }
  __device__ static void group_scale_bias(const Matrix& m, int64_t row, int64_t col, float& scale, float& bias) {
    pair_at(m.scales, m.scales_dtype, row * m.scales_stride + col / m.group_size, scale, bias);
  }
  __device__ static Raw load(const Matrix& m, int64_t row, int64_t chunk) {
    Raw raw;
    const uint32_t* words = row_words(m, row) + chunk * BITS;
    if constexpr (BITS % 4 == 0) {  // whole 16-byte vectors (rows are multiples of 32 values)
#pragma unroll
      for (int v = 0; v < BITS / 4; ++v) {
        const uint4 vector = reinterpret_cast<const uint4*>(words)[v];
        raw.words[4 * v] = vector.x, raw.words[4 * v + 1] = vector.y;
        raw.words[4 * v + 2] = vector.z, raw.words[4 * v + 3] = vector.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < BITS; ++i) raw.words[i] = words[i];
    }
    group_scale_bias(m, row, chunk * kValues, raw.scale, raw.bias);  // a chunk never straddles groups
    return raw;
  }
  // 2^23 + b for a byte b, as a float: the byte in the mantissa of 2^23.
  __device__ static float byte_to_float(uint32_t bytes, int index) {
    return __uint_as_float(__byte_perm(bytes, 0x4B000000u, 0x7440u | static_cast<uint32_t>(index))) - 8388608.0f;
  }
  __device__ static Decoded decode(const Raw& raw) {
    Decoded d;
    d.scale = raw.scale;
    d.bias = raw.bias;
    if constexpr (BITS == 4) {
      // Value 8w + 2j is the low nibble of byte j of word w, value 8w + 2j + 1 its high nibble.
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint32_t low = raw.words[w] & 0x0F0F0F0Fu, high = (raw.words[w] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          d.q[8 * w + 2 * j] = byte_to_float(low, j);
          d.q[8 * w + 2 * j + 1] = byte_to_float(high, j);
        }
      }
    } else if constexpr (BITS == 8) {
#pragma unroll
      for (int w = 0; w < 8; ++w)
#pragma unroll
        for (int j = 0; j < 4; ++j) d.q[4 * w + j] = byte_to_float(raw.words[w], j);
    } else {
#pragma unroll
      for (int i = 0; i < kValues; ++i) {
        const int bit = i * BITS, word = bit / 32, shift = bit % 32;
        uint32_t q = raw.words[word] >> shift;
        if (shift + BITS > 32) q |= raw.words[word + 1] << (32 - shift);
        d.q[i] = static_cast<float>(q & kMask);
      }
    }
    return d;
  }
  __device__ static float dot(const Decoded& d, const float* x) {
    float qx = 0.0f, sum_x = 0.0f;
#pragma unroll
    for (int i = 0; i < kValues; i += 4) {
      const float4 a = *reinterpret_cast<const float4*>(x + i);
      qx += d.q[i] * a.x + d.q[i + 1] * a.y + d.q[i + 2] * a.z + d.q[i + 3] * a.w;
      sum_x += (a.x + a.y) + (a.z + a.w);
    }
    return d.scale * qx + d.bias * sum_x;
  }
  __device__ static float at(const Matrix& m, int64_t row, int64_t col) {
    const uint32_t* words = row_words(m, row);
    const int64_t bit = col * BITS;
    const int shift = static_cast<int>(bit % 32);
    uint64_t window = words[bit / 32];
    if (shift + BITS > 32) window |= static_cast<uint64_t>(words[bit / 32 + 1]) << 32;
    float scale, bias;
    group_scale_bias(m, row, col, scale, bias);
    return __fadd_rn(__fmul_rn(scale, static_cast<float>(static_cast<uint32_t>(window >> shift) & kMask)), bias);
  }
  static bool vectorizable(const Matrix& m) {
    return m.cols % kValues == 0 && m.group_size % kValues == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
  }

  // Pieces (block_row_dots): 8 values = one word at 4 bits, two at 8 bits.
  static constexpr bool kHasPieces = BITS == 4 || BITS == 8;
  static constexpr int kRows = 8;
  static constexpr bool kPipelined = true;  // 4- and 8-byte pieces: latency-bound without a second set in flight
  struct Piece {
    uint32_t words[BITS == 8 ? 2 : 1];
    float scale, bias;
  };
  struct Row {
    const uint32_t* words;
    const char* pairs;  // this row's (scale, bias) pairs
  };
  __device__ static Row row_of(const Matrix& m, int64_t row) {
    const int pair_bytes = m.scales_dtype == DType::BF16 ? 4 : 8;
    return {row_words(m, row), static_cast<const char*>(m.scales) + row * m.scales_stride * pair_bytes};
  }
  __device__ static Piece load_piece(const Matrix& m, const Row& row, int64_t piece) {
    Piece p;
    if constexpr (BITS == 8) {
      const uint2 pair = reinterpret_cast<const uint2*>(row.words)[piece];
      p.words[0] = pair.x;
      p.words[1] = pair.y;
    } else {
      p.words[0] = row.words[piece];
    }
    pair_at(row.pairs, m.scales_dtype, (piece * 8) >> m.group_shift, p.scale, p.bias);
    return p;
  }
  // scale * sum(q x) + bias * sum(x), sum(x) given (it is the same for every row).
  __device__ static float piece_dot(const Piece& p, const float (&x)[8], float x_sum) {
    float qx = 0.0f;
    if constexpr (BITS == 4) {
      const uint32_t low = p.words[0] & 0x0F0F0F0Fu, high = (p.words[0] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
      for (int j = 0; j < 4; ++j) qx += byte_to_float(low, j) * x[2 * j] + byte_to_float(high, j) * x[2 * j + 1];
    } else if constexpr (BITS == 8) {
#pragma unroll
      for (int j = 0; j < 8; ++j) qx += byte_to_float(p.words[j / 4], j % 4) * x[j];
    }
    return p.scale * qx + p.bias * x_sum;
  }
  // 4-bit: the piece's 8 values rounded to bf16, two a word (the lower
  // column in the low half), for the tensor-core GEMM's widening pass. Each
  // nibble q is placed under the exponent of 128 (the bf16 0x4300 | q is
  // 128 + q, exactly: bf16 keeps 7 mantissa bits), 128 is taken off exactly,
  // and one bf16 fused multiply-add applies scale and bias with a single
  // rounding: 3.5 instructions a pair (1.5 byte permutes, the subtraction,
  // the multiply-add) against piece_values' 7 and its selector moves; the
  // GEMM's main loop went from 1032 to 808 instructions a stage (with the rows' validity found once). Scales and
  // biases stored in bf16 (mlx's) pass exactly; f32 ones are rounded to bf16.
  template <int B = BITS>
    requires(B == 4)
  __device__ static uint4 piece_bf16(const Piece& p) {
    const __nv_bfloat162 scale = __float2bfloat162_rn(p.scale), bias = __float2bfloat162_rn(p.bias);
    const uint32_t low = p.words[0] & 0x0F0F0F0Fu, high = (p.words[0] >> 4) & 0x0F0F0F0Fu;  // byte j: columns 2j, 2j+1
    // Columns 0-3 and 4-7 as bytes in order, then each pair [q, 0x43, q', 0x43] from those and the exponents.
    const uint32_t first = __byte_perm(low, high, 0x5140u), second = __byte_perm(low, high, 0x7362u);
    const uint32_t pairs[4] = {__byte_perm(first, 0x43434343u, 0x4140u), __byte_perm(first, 0x43434343u, 0x4342u),
                               __byte_perm(second, 0x43434343u, 0x4140u), __byte_perm(second, 0x43434343u, 0x4342u)};
    uint32_t out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = biased_pair_bf16(pairs[j], scale, bias);
    return {out[0], out[1], out[2], out[3]};
  }
  // A pair of bf16 128 + q (each nibble q placed under the exponent of 128:
  // 0x4300 | q) as the bf16 pair scale q + bias: 128 is subtracted exactly,
  // then one fma with a single rounding.
  __device__ static uint32_t biased_pair_bf16(uint32_t biased, __nv_bfloat162 scale, __nv_bfloat162 bias) {
    const __nv_bfloat162 offset = __float2bfloat162_rn(128.0f);
    const __nv_bfloat162 value = __hfma2(__hsub2(*reinterpret_cast<const __nv_bfloat162*>(&biased), offset), scale, bias);
    return *reinterpret_cast<const uint32_t*>(&value);
  }
  __device__ static void piece_values(const Piece& p, float (&values)[8]) {
    if constexpr (BITS == 4) {
      const uint32_t low = p.words[0] & 0x0F0F0F0Fu, high = (p.words[0] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        values[2 * j] = __fmaf_rn(p.scale, byte_to_float(low, j), p.bias);
        values[2 * j + 1] = __fmaf_rn(p.scale, byte_to_float(high, j), p.bias);
      }
    } else if constexpr (BITS == 8) {
#pragma unroll
      for (int j = 0; j < 8; ++j) values[j] = __fmaf_rn(p.scale, byte_to_float(p.words[j / 4], j % 4), p.bias);
    }
  }
  static bool pieces_ok(const Matrix& m) {
    return kHasPieces && m.cols % 8 == 0 && m.group_size % 8 == 0 && m.group_size == (int64_t{1} << m.group_shift) &&
           reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
  }
};

// ---- FP8 e4m3 with a tensor, channel or block scale: 16 values per chunk
struct Fp8Format {
  static constexpr int kValues = 16;
  struct Raw {
    uint4 bytes;
    float scale;  // of the chunk's block (or row, or tensor)
  };
  struct Decoded {
    float values[kValues];  // e4m3 widened, before the scale
    float scale;
  };
  __device__ static float scale_of(const Matrix& m, int64_t row, int64_t col) {
    switch (m.fp8_scale) {
      case WeightFormat::Fp8Scale::Tensor: return element_f32(m.scales, m.scales_dtype, 0);
      case WeightFormat::Fp8Scale::Channel: return element_f32(m.scales, m.scales_dtype, row);
      default: return element_f32(m.scales, m.scales_dtype, (row / m.block_rows) * m.scales_stride + col / m.block_cols);
    }
  }
  __device__ static float widen(uint8_t bits) {
    __nv_fp8_e4m3 value;
    value.__x = bits;
    return static_cast<float>(value);
  }
  // The e4m3 values in the low two bytes of `pair` as f16x2, by one
  // conversion (sm_89+: cvt.rn.f16x2.e4m3x2; exact, as every e4m3 value is
  // an f16).
  __device__ static __half2 widen2_half(uint32_t pair) {
    return __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xffffu), __NV_E4M3));
  }
  // The four e4m3 values of a word, byte i to out[i]: widen2_half per two
  // values, then f16 -> f32, rather than a conversion per byte.
  __device__ static void widen4(uint32_t word, float* out) {
    const float2 a = __half22float2(widen2_half(word)), b = __half22float2(widen2_half(word >> 16));
    out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
  }
  __device__ static Raw load(const Matrix& m, int64_t row, int64_t chunk) {
    // One scale per chunk: block_cols % 16 == 0 (vectorizable), so a chunk lies in one block.
    return {reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(m.data) + row * m.cols)[chunk],
            scale_of(m, row, chunk * kValues)};
  }
  __device__ static Decoded decode(const Raw& raw) {
    Decoded d;
    d.scale = raw.scale;
    const uint32_t words[4] = {raw.bytes.x, raw.bytes.y, raw.bytes.z, raw.bytes.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) widen4(words[w], d.values + 4 * w);
    return d;
  }
  __device__ static float dot(const Decoded& d, const float* x) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kValues; i += 4) {
      const float4 a = *reinterpret_cast<const float4*>(x + i);
      sum += d.values[i] * a.x + d.values[i + 1] * a.y + d.values[i + 2] * a.z + d.values[i + 3] * a.w;
    }
    return d.scale * sum;
  }
  __device__ static float at(const Matrix& m, int64_t row, int64_t col) {
    return widen(static_cast<const uint8_t*>(m.data)[row * m.cols + col]) * scale_of(m, row, col);
  }
  static bool vectorizable(const Matrix& m) {
    return m.cols % kValues == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0 &&
           (m.fp8_scale != WeightFormat::Fp8Scale::Block || m.block_cols % kValues == 0);
  }

  // Pieces (block_row_dots): 8 values in 8 bytes.
  static constexpr bool kHasPieces = true;
  static constexpr int kRows = 8;
  static constexpr bool kPipelined = true;
  struct Piece {
    uint2 bytes;
    float scale;
  };
  struct Row {
    const uint2* bytes;
    int64_t row;
  };
  __device__ static Row row_of(const Matrix& m, int64_t row) {
    return {reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(m.data) + row * m.cols), row};
  }
  __device__ static Piece load_piece(const Matrix& m, const Row& row, int64_t piece) {
    return {row.bytes[piece], scale_of(m, row.row, piece * 8)};
  }
  __device__ static float piece_dot(const Piece& p, const float (&x)[8], float) {
    float w[8];
    widen4(p.bytes.x, w);
    widen4(p.bytes.y, w + 4);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += w[i] * x[i];
    return p.scale * sum;
  }
  // The piece's 8 e4m3 values as bf16 pairs (the lower column in the low
  // half), without the scale: exact, as every e4m3 value is a bf16. For the
  // tensor-core GEMM with a tensor or channel scale, which it applies to
  // the sums instead (sum_k x_k s w_k = s sum_k x_k w_k), in f32.
  __device__ static uint4 unscaled_bf16(uint2 bytes) {
    const uint32_t words[2] = {bytes.x, bytes.y};
    uint32_t out[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = unscaled_pair_bf16(words[i / 2] >> (16 * (i % 2)));
    return {out[0], out[1], out[2], out[3]};
  }
  // The two e4m3 values in the low 16 bits of `pair` as a bf16 pair (e4m3 ->
  // f16 -> f32 -> bf16, exact all the way).
  __device__ static uint32_t unscaled_pair_bf16(uint32_t pair) {
    const __nv_bfloat162 both = __float22bfloat162_rn(__half22float2(widen2_half(pair)));
    return *reinterpret_cast<const uint32_t*>(&both);
  }
  __device__ static void piece_values(const Piece& p, float (&values)[8]) {
    widen4(p.bytes.x, values);
    widen4(p.bytes.y, values + 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) values[i] *= p.scale;
  }
  static bool pieces_ok(const Matrix& m) {
    return m.cols % 8 == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0 &&
           (m.fp8_scale != WeightFormat::Fp8Scale::Block || m.block_cols % 8 == 0);
  }
};

// Calls f with a value of the format type of `m`: FloatFormat<T>,
// AffineFormat<2..8> or Fp8Format.
template <typename F>
void dispatch_format(const Matrix& m, F&& f) {
  switch (m.kind) {
    case WeightFormat::Kind::Float:
      with_float_type(m.dtype, [&](auto tag) { f(FloatFormat<decltype(tag)>{}); });
      return;
    case WeightFormat::Kind::Affine:
      switch (m.bits) {
        case 2: f(AffineFormat<2>{}); return;
        case 3: f(AffineFormat<3>{}); return;
        case 4: f(AffineFormat<4>{}); return;
        case 5: f(AffineFormat<5>{}); return;
        case 6: f(AffineFormat<6>{}); return;
        case 7: f(AffineFormat<7>{}); return;
        case 8: f(AffineFormat<8>{}); return;
        default: fail("internal error: affine ", m.bits, "-bit weights reached a CUDA kernel");
      }
    case WeightFormat::Kind::Fp8: f(Fp8Format{}); return;
  }
}

// The dot products of one weight row with up to NT activation rows, summed
// over the warp: lanes take chunks lane, lane + 32, ... and issue kUnroll
// chunk loads before using any, so enough bytes are in flight. x[t] is the
// t-th activation row (valid for t < n_rows; rows >= n_rows are skipped).
// With `vectorized` false every lane reads single values (odd shapes).
template <typename Format, int NT>
__device__ __forceinline__ void warp_row_dots(const Matrix& m, int64_t row, const float* const* x, int n_rows,
                                              bool vectorized, float* sums) {
  constexpr int kUnroll = 4;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int t = 0; t < NT; ++t) sums[t] = 0.0f;
  if (vectorized) {
    const int64_t n_chunks = m.cols / Format::kValues;
    for (int64_t base = lane; base < n_chunks; base += 32 * kUnroll) {
      typename Format::Raw raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (base + 32 * u < n_chunks) raw[u] = Format::load(m, row, base + 32 * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t chunk = base + 32 * u;
        if (chunk >= n_chunks) break;
        const typename Format::Decoded decoded = Format::decode(raw[u]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (t >= n_rows) break;
          sums[t] += Format::dot(decoded, x[t] + chunk * Format::kValues);
        }
      }
    }
  } else {
    for (int64_t col = lane; col < m.cols; col += 32) {
      const float w = Format::at(m, row, col);
#pragma unroll
      for (int t = 0; t < NT; ++t)
        if (t < n_rows) sums[t] += w * x[t][col];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) sums[t] = warp_sum(sums[t]);
}

// result[i] = the sum over the block's threads of their value[i] (i < N), by
// shuffles within warps and shared memory across them; result is shared
// memory, valid for every thread after the call (which synchronises).
template <int N>
__device__ __forceinline__ void block_sum(const float (&value)[N], float* result) {
  constexpr int kMaxWarps = 32;
  __shared__ float partial[kMaxWarps * N];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float total = warp_sum(value[i]);
    if (lane == 0) partial[warp * N + i] = total;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += partial[w * N + i];
    result[i] = total;
  }
  __syncthreads();
}

// Dot products of R consecutive rows of each of NM matrices (sharing their
// input, e.g. an expert's gate and up projections) with up to NT activation
// rows, by a whole block. The columns are cut into 8-value pieces; thread i
// of the block takes pieces i, i + blockDim.x, ..., so a warp reads 32
// consecutive pieces of a row (coalesced) and its 32 x 8 activations once for
// all R rows: the activations cost no more L1 traffic than the weights, which
// is what lets a 4-bit GEMV run at memory speed (a warp per row, re-reading
// the activations for every row, is L1-bound). Per-thread partial sums are
// reduced over the warp by shuffles and over the warps through shared memory.
//   rows:    the R rows row0 .. row0 + R - 1 (rows past m.rows read row m.rows - 1; ignore their results)
//   x[t]:    activation row t (t < n_rows), 16-byte aligned, cols long
//   result:  shared [NM][R][NT], valid after the call for t < n_rows
// Every thread of the block must call it (it synchronises).
template <typename Format, int NT, int R, int NM>
__device__ __forceinline__ void block_row_dots(const Matrix (&m)[NM], int64_t row0, const float* const* x, int n_rows,
                                               float* result) {
  float acc[NM][R][NT];
#pragma unroll
  for (int k = 0; k < NM; ++k)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[k][r][t] = 0.0f;
  const int64_t n_pieces = m[0].cols / 8;
  typename Format::Row rows[NM][R];  // row cursors: the address arithmetic is done once
#pragma unroll
  for (int k = 0; k < NM; ++k)
#pragma unroll
    for (int r = 0; r < R; ++r) rows[k][r] = Format::row_of(m[k], min(row0 + r, m[0].rows - 1));
  // Software-pipelined for formats with small pieces: the next piece's
  // weights are requested before this piece's arithmetic, so memory stays
  // busy while the thread computes (measured: int4 GEMV 22% -> 38% of copy
  // bandwidth; 16-byte bf16 pieces lose from the extra registers).
  typename Format::Piece pieces[NM][R], next[NM][R];
  auto load = [&](typename Format::Piece (&into)[NM][R], int64_t piece) {
#pragma unroll
    for (int k = 0; k < NM; ++k)
#pragma unroll
      for (int r = 0; r < R; ++r) into[k][r] = Format::load_piece(m[k], rows[k][r], piece);
  };
  int64_t piece = threadIdx.x;
  if (piece < n_pieces) load(pieces, piece);
  for (; piece < n_pieces; piece += blockDim.x) {
    const int64_t following = piece + blockDim.x;
    if constexpr (Format::kPipelined) {
      if (following < n_pieces) load(next, following);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t >= n_rows) break;
      float values[8];
      const float4 a = reinterpret_cast<const float4*>(x[t] + piece * 8)[0];
      const float4 b = reinterpret_cast<const float4*>(x[t] + piece * 8)[1];
      values[0] = a.x, values[1] = a.y, values[2] = a.z, values[3] = a.w;
      values[4] = b.x, values[5] = b.y, values[6] = b.z, values[7] = b.w;
      const float sum = (a.x + a.y) + (a.z + a.w) + ((b.x + b.y) + (b.z + b.w));
#pragma unroll
      for (int k = 0; k < NM; ++k)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[k][r][t] += Format::piece_dot(pieces[k][r], values, sum);
    }
    if constexpr (Format::kPipelined) {
#pragma unroll
      for (int k = 0; k < NM; ++k)
#pragma unroll
        for (int r = 0; r < R; ++r) pieces[k][r] = next[k][r];
    } else if (following < n_pieces) {
      load(pieces, following);
    }
  }
  block_sum<NM * R * NT>(reinterpret_cast<const float(&)[NM * R * NT]>(acc), result);
}

// ---- int8 activations (GLM_CUDA_ACTIVATIONS=int8) for 4- and 8-bit affine weights
//
// An f32 GEMV on 4-bit weights spends ~3 instructions a weight (widen, offset,
// multiply-add): at the card's bandwidth that is more than an SM can issue,
// so it stalls at ~35% of the copy bandwidth. With the activations quantized
// per 32 values (x ~ s_x * xq, xq in [-127, 127]), a 32-value piece of a row
// is  s_w * s_x * sum(q * xq) + b_w * sum(x): the integer sum takes dp4a
// (four byte products a instruction), and an int4 word needs only two masks
// to become dp4a operands. The activations' reordering to the nibble order
// (even values in the low nibbles) is done once per piece for all R rows.
// The integers are centred (c = 8 at 4 bits, 128 at 8): with q' = q - c,
//   s_w * sum(q x) = s_w * (s_x * sum(q xq) + c * (sum(x) - s_x * sum(xq))),
// so the quantization error of x meets only q - c. Uncentred, it met q
// itself, whose mean part (c * sum(x)) the bias term cancels: the error was
// amplified by that cancellation (measured 1.4e-2 -> see tests).

template <typename Format>
inline constexpr bool kHasInt8Path = false;
template <>
inline constexpr bool kHasInt8Path<AffineFormat<4>> = true;
template <>
inline constexpr bool kHasInt8Path<AffineFormat<8>> = true;

// unsigned bytes of a times signed bytes of b, summed into c.
__device__ __forceinline__ int dot4_u8_s8(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// The warp's partial sums of its RW rows (from r0), summed over its lanes, to
// result[(k * R + r0 + i) * NT + t]; rows past R are dropped.
template <int R, int NM, int RW, int NT>
__device__ __forceinline__ void store_warp_sums(const float (&acc)[NM][RW][NT], int r0, int lane, float* result) {
#pragma unroll
  for (int k = 0; k < NM; ++k)
#pragma unroll
    for (int i = 0; i < RW; ++i)
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float total = warp_sum(acc[k][i][t]);
        if (lane == 0 && r0 + i < R) result[(k * R + r0 + i) * NT + t] = total;
      }
}

// As block_row_dots (same arguments and result layout), reading activation
// rows x.row(rows[t]) quantized by quantize_activations, in 32-value pieces.
// The work is split differently: each warp takes RW rows at a time and its
// lanes split the row's pieces, each lane requesting kBatch pieces of every
// row before using any. (Splitting a 4096-wide row over the whole block gave
// a thread one 16-byte piece: the block's fixed costs and one exposed
// latency per piece held the GEMV at ~40% of the copy bandwidth.) Launch with
// kInt8Threads threads.
constexpr int kInt8Threads = 128;

template <int BITS, int NT, int R, int NM>
__device__ __forceinline__ void block_row_dots_int8(const Matrix (&m)[NM], int64_t row0, const Int8Activations& x,
                                                    const int64_t (&rows)[NT], int n_rows, float* result) {
  static_assert(BITS == 4 || BITS == 8, "int8 activations pair with 4- and 8-bit weights");
  // Rows a warp works on together: R / 4, so the 4 warps of kInt8Threads
  // cover the block's rows in one round (a narrow row, like the experts'
  // down projection at K = 1408, is one batch of pieces per lane).
  constexpr int RW = R >= 16 ? 4 : (R >= 8 ? 2 : 1);
  constexpr int kVectors = BITS / 4;                          // 16-byte loads per row piece
  constexpr int kBatch = 8 / (NM * RW * kVectors) > 0 ? 8 / (NM * RW * kVectors) : 1;  // <= 8 loads in flight
  constexpr float kCentre = BITS == 4 ? 8.0f : 128.0f;
  using Format = AffineFormat<BITS>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t n_pieces = m[0].cols / 32;
  const int64_t groups_per_row = x.cols / 32;
  __syncthreads();  // result may still be read by the caller's previous round
  for (int r0 = warp * RW; r0 < R; r0 += warps * RW) {
    typename Format::Row cursors[NM][RW];
#pragma unroll
    for (int k = 0; k < NM; ++k)
#pragma unroll
      for (int i = 0; i < RW; ++i) cursors[k][i] = Format::row_of(m[k], min(row0 + r0 + i, m[0].rows - 1));
    float acc[NM][RW][NT];
#pragma unroll
    for (int k = 0; k < NM; ++k)
#pragma unroll
      for (int i = 0; i < RW; ++i)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[k][i][t] = 0.0f;
    for (int64_t base = lane; base < n_pieces; base += 32 * kBatch) {
      uint4 words[kBatch][NM][RW][kVectors];
      float scale[kBatch][NM][RW], bias[kBatch][NM][RW];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t piece = min(base + 32 * b, n_pieces - 1);  // past the end: a repeat, never used
#pragma unroll
        for (int k = 0; k < NM; ++k)
#pragma unroll
          for (int i = 0; i < RW; ++i) {
#pragma unroll
            for (int v = 0; v < kVectors; ++v)
              words[b][k][i][v] = reinterpret_cast<const uint4*>(cursors[k][i].words + piece * BITS)[v];
            Format::pair_at(cursors[k][i].pairs, m[k].scales_dtype, (piece * 32) >> m[k].group_shift,
                            scale[b][k][i], bias[b][k][i]);
          }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t piece = base + 32 * b;
        if (piece >= n_pieces) break;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (t >= n_rows) break;
          const int64_t group = rows[t] * groups_per_row + piece;
          const uint4* bytes = reinterpret_cast<const uint4*>(x.values + rows[t] * x.cols + piece * 32);
          const uint4 first = bytes[0], second = bytes[1];
          const uint32_t xq[8] = {first.x, first.y, first.z, first.w, second.x, second.y, second.z, second.w};
          const float x_scale = x.scales[group], x_sum = x.sums[group];
          const float centre_correction = kCentre * x.rounding[group];
          uint32_t even[4], odd[4];  // int4: values 8w, 8w+2, .. and 8w+1, 8w+3, .. of word w
          if constexpr (BITS == 4) {
#pragma unroll
            for (int w = 0; w < 4; ++w) {
              even[w] = __byte_perm(xq[2 * w], xq[2 * w + 1], 0x6420);
              odd[w] = __byte_perm(xq[2 * w], xq[2 * w + 1], 0x7531);
            }
          }
#pragma unroll
          for (int k = 0; k < NM; ++k)
#pragma unroll
            for (int i = 0; i < RW; ++i) {
              uint32_t w[BITS];
#pragma unroll
              for (int v = 0; v < kVectors; ++v) {
                const uint4 vector = words[b][k][i][v];
                w[4 * v] = vector.x, w[4 * v + 1] = vector.y, w[4 * v + 2] = vector.z, w[4 * v + 3] = vector.w;
              }
              int dot = 0;
              if constexpr (BITS == 4) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                  dot = __dp4a(static_cast<int>(w[j] & 0x0F0F0F0Fu), static_cast<int>(even[j]), dot);
                  dot = __dp4a(static_cast<int>((w[j] >> 4) & 0x0F0F0F0Fu), static_cast<int>(odd[j]), dot);
                }
              } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) dot = dot4_u8_s8(w[j], xq[j], dot);
              }
              acc[k][i][t] += scale[b][k][i] * (x_scale * static_cast<float>(dot) + centre_correction) +
                              bias[b][k][i] * x_sum;
            }
        }
      }
    }
    store_warp_sums<R>(acc, r0, lane, result);
  }
  __syncthreads();
}

// ---- f16 activations (the fast mode, GLM_CUDA_ACTIVATIONS=int8) for FP8 weights
//
// With f32 activations an e4m3 GEMV spends ~3 instructions a weight (widen
// to f16, to f32, multiply-add) and decodes at ~25% of the copy bandwidth.
// Here each 32 activations come divided by their largest magnitude, as f16
// (scale_activations_to_half), and two weights widened by one
// cvt.rn.f16x2.e4m3x2 meet two activations in one packed f16 multiply-add
// (HFMA2): a 32-value piece is 16 conversions and 16 HFMA2 into an f16x2
// partial sum (|partial| <= 16 * 448: far inside f16's range), then one
// f32 multiply-add by the activations' scale. The weight scale (tensor,
// channel, or a block of >= 32 columns) multiplies per piece. Same
// partition of the work as block_row_dots_int8. Launch with kInt8Threads.
template <typename Format>
inline constexpr bool kHasHalfPath = false;
template <>
inline constexpr bool kHasHalfPath<Fp8Format> = true;

// Whether an FP8 matrix can take it: 32-value pieces inside one scale block.
inline bool half_path_fits(const Matrix& m) {
  return m.kind == WeightFormat::Kind::Fp8 && m.cols % 32 == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0 &&
         (m.fp8_scale != WeightFormat::Fp8Scale::Block || m.block_cols % 32 == 0);
}

template <int NT, int R, int NM>
__device__ __forceinline__ void block_row_dots_half(const Matrix (&m)[NM], int64_t row0, const HalfActivations& x,
                                                    const int64_t (&rows)[NT], int n_rows, float* result) {
  constexpr int RW = R >= 16 ? 4 : (R >= 8 ? 2 : 1);
  constexpr int kBatch = 8 / (NM * RW * 2) > 0 ? 8 / (NM * RW * 2) : 1;  // <= 8 16-byte loads in flight
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t n_pieces = m[0].cols / 32;
  const int64_t groups_per_row = x.cols / 32;
  __syncthreads();  // result may still be read by the caller's previous round
  for (int r0 = warp * RW; r0 < R; r0 += warps * RW) {
    const uint4* bytes[NM][RW];
    int64_t row_index[NM][RW];
#pragma unroll
    for (int k = 0; k < NM; ++k)
#pragma unroll
      for (int i = 0; i < RW; ++i) {
        row_index[k][i] = min(row0 + r0 + i, m[0].rows - 1);
        bytes[k][i] = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(m[k].data) + row_index[k][i] * m[k].cols);
      }
    float acc[NM][RW][NT] = {};
    for (int64_t base = lane; base < n_pieces; base += 32 * kBatch) {
      uint4 words[kBatch][NM][RW][2];
      float scale[kBatch][NM][RW];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t piece = min(base + 32 * b, n_pieces - 1);  // past the end: a repeat, never used
#pragma unroll
        for (int k = 0; k < NM; ++k)
#pragma unroll
          for (int i = 0; i < RW; ++i) {
            words[b][k][i][0] = bytes[k][i][2 * piece];
            words[b][k][i][1] = bytes[k][i][2 * piece + 1];
            scale[b][k][i] = Fp8Format::scale_of(m[k], row_index[k][i], piece * 32);
          }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t piece = base + 32 * b;
        if (piece >= n_pieces) break;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (t >= n_rows) break;
          const uint4* xv = reinterpret_cast<const uint4*>(x.values + rows[t] * x.cols + piece * 32);
          uint4 xq[4];
#pragma unroll
          for (int v = 0; v < 4; ++v) xq[v] = xv[v];
          const __half2* xh = reinterpret_cast<const __half2*>(xq);  // [16]: values 2j, 2j + 1
          const float x_scale = x.scales[rows[t] * groups_per_row + piece];
#pragma unroll
          for (int k = 0; k < NM; ++k)
#pragma unroll
            for (int i = 0; i < RW; ++i) {
              __half2 partial = __float2half2_rn(0.0f);
#pragma unroll
              for (int v = 0; v < 2; ++v) {
                const uint32_t w4[4] = {words[b][k][i][v].x, words[b][k][i][v].y, words[b][k][i][v].z,
                                        words[b][k][i][v].w};
#pragma unroll
                for (int w = 0; w < 4; ++w) {  // values 16v + 4w .. + 3
                  partial = __hfma2(Fp8Format::widen2_half(w4[w]), xh[8 * v + 2 * w], partial);
                  partial = __hfma2(Fp8Format::widen2_half(w4[w] >> 16), xh[8 * v + 2 * w + 1], partial);
                }
              }
              const float2 both = __half22float2(partial);
              acc[k][i][t] += scale[b][k][i] * x_scale * (both.x + both.y);
            }
        }
      }
    }
    store_warp_sums<R>(acc, r0, lane, result);
  }
  __syncthreads();
}

// Row dot products with f32 or int8 activation rows x.row(rows[t]): the one
// call the GEMV and expert kernels make, whichever activations they were given.
template <typename Format, int NT, int R, int NM>
__device__ __forceinline__ void row_dots(const Matrix (&m)[NM], int64_t row0, const F32Activations& x,
                                         const int64_t (&rows)[NT], int n_rows, float* result) {
  const float* pointers[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) pointers[t] = x.data + rows[t] * x.cols;
  block_row_dots<Format, NT, R, NM>(m, row0, pointers, n_rows, result);
}
template <typename Format, int NT, int R, int NM>
__device__ __forceinline__ void row_dots(const Matrix (&m)[NM], int64_t row0, const Int8Activations& x,
                                         const int64_t (&rows)[NT], int n_rows, float* result) {
  if constexpr (kHasInt8Path<Format>) block_row_dots_int8<Format::kBits, NT, R, NM>(m, row0, x, rows, n_rows, result);
}
template <typename Format, int NT, int R, int NM>
__device__ __forceinline__ void row_dots(const Matrix (&m)[NM], int64_t row0, const HalfActivations& x,
                                         const int64_t (&rows)[NT], int n_rows, float* result) {
  if constexpr (kHasHalfPath<Format>) block_row_dots_half<NT, R, NM>(m, row0, x, rows, n_rows, result);
}

}  // namespace glm::cuda
