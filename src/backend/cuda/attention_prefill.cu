// Causal attention for prompts on tensor cores: flash attention (mma.sync
// m16n8k16, bf16 operands, f32 accumulation and online softmax) over the
// paged KV cache, for sequences that bring many new tokens in one step (a
// prompt, or a chunk of one whose earlier chunks are already in the cache).
// attention() (attention.cu) has written the step's keys and values to the
// cache and calls this for those sequences; decode steps never come here.
//
// How it works, per step:
// 1. kv_to_bf16_kernel gathers each such sequence's keys and values at
//    positions 0..context-1 from the f32 cache (through its block table) into
//    contiguous bf16 rows, [kv_heads, positions, head_dim], zero-padded to a
//    whole tile of keys. Every key is later staged by every query tile of its
//    KV head (3072 tiles per KV head for a 32k prompt of GLM-4.5-Air), so
//    converting once halves the bytes of those repeated reads (f32 -> bf16)
//    and lets tiles stream into shared memory with cp.async, with no
//    register staging; the pass itself reads the context once (~0.1 ms at 32k).
// 2. flash_prefill_kernel: one block of 4 warps per (tile of 128 query rows,
//    KV head). A query row is a (token, query head) pair, and a tile's rows
//    are the `group` query heads of its KV head for consecutive tokens of one
//    sequence (token-major), so each K/V tile staged in shared memory serves
//    all heads of the group (12 for GLM-4.5-Air) instead of one. The block
//    walks tiles of 64 keys from position 0 to its last token's position,
//    double-buffered (the next tile's cp.async runs under this tile's mma);
//    each warp takes 32 rows: S = Q K^T on tensor cores, keys past a row's
//    position masked, running max and sum in f32 (exp2 with log2(e) folded
//    into the query scale), then P (rounded to bf16) times V added to the
//    accumulator it keeps in registers. Tiles with the longest contexts are
//    launched first, so the short ones fill the last wave.
//
// Shared memory holds rows of head_dim bf16 as 16-byte chunks, chunk c of
// row r stored at chunk c ^ (r % 8): ldmatrix reads one chunk from each of 8
// rows, and without the swizzle all 8 would sit in the same banks.
#include <algorithm>
#include <vector>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.cuh"

namespace glm::cuda {
namespace {

constexpr int kRows = 128;  // query rows per block: 4 warps x 32
constexpr int kKeys = 64;   // keys per K/V tile
constexpr int kWarps = 4;

// One block's query rows: rows [row_begin, row_begin + rows) of a sequence
// whose row r is (token tokens[token_begin + r / group], head r % group of
// the KV head), and where the sequence's keys start in the bf16 buffers.
struct PrefillTile {
  int32_t token_begin;
  int32_t row_begin;
  int32_t rows;
  int32_t kv_begin;
};

// out[h, p, :] = bf16(cache[slot of position p, h, :]), zeros where kv_slots[p] < 0 (padding).
__global__ void kv_to_bf16_kernel(__nv_bfloat16* __restrict__ keys, __nv_bfloat16* __restrict__ values,
                                  const float* __restrict__ key_cache, const float* __restrict__ value_cache,
                                  const int64_t* __restrict__ kv_slots, int64_t kv_positions, int kv_heads,
                                  int head_dim) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int chunks = head_dim / 8;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (position, head, chunk)
  if (index >= kv_positions * kv_heads * chunks) return;
  const int chunk = static_cast<int>(index % chunks);
  const int head = static_cast<int>(index / chunks % kv_heads);
  const int64_t position = index / chunks / kv_heads;
  const int64_t slot = kv_slots[position];
  const int64_t to = (head * kv_positions + position) * head_dim + chunk * 8;
  uint4 k_out = {0, 0, 0, 0}, v_out = {0, 0, 0, 0};
  if (slot >= 0) {
    const int64_t from = (slot * kv_heads + head) * head_dim + chunk * 8;
    float k8[8], v8[8];
    load8(key_cache + from, k8);
    load8(value_cache + from, v8);
    uint32_t* kw = reinterpret_cast<uint32_t*>(&k_out);
    uint32_t* vw = reinterpret_cast<uint32_t*>(&v_out);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      kw[i] = pack_bf16(k8[2 * i], k8[2 * i + 1]);
      vw[i] = pack_bf16(v8[2 * i], v8[2 * i + 1]);
    }
  }
  *reinterpret_cast<uint4*>(keys + to) = k_out;
  *reinterpret_cast<uint4*>(values + to) = v_out;
}

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// D = head_dim (64 or 128). Grid: (tiles, kv_heads); 128 threads.
// Dynamic shared memory: Q [128][D], K [2][64][D], V [2][64][D], bf16, swizzled.
template <int D>
__global__ void __launch_bounds__(kWarps * 32, 2)
    flash_prefill_kernel(float* __restrict__ out, const float* __restrict__ q,
                         const __nv_bfloat16* __restrict__ keys, const __nv_bfloat16* __restrict__ values,
                         const int4* __restrict__ tiles, const int32_t* __restrict__ tokens,
                         const int32_t* __restrict__ token_position, int heads, int group, int64_t kv_positions,
                         float scale_log2) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ uint4 shared[];
  uint4* s_q = shared;                           // [kRows * kChunks]
  uint4* s_k = s_q + kRows * kChunks;            // [2][kKeys * kChunks]
  uint4* s_v = s_k + 2 * kKeys * kChunks;        // [2][kKeys * kChunks]
  auto swizzled = [](int row, int chunk) { return row * kChunks + (chunk ^ (row & 7)); };

  const int4 raw = tiles[blockIdx.x];
  const PrefillTile tile{raw.x, raw.y, raw.z, raw.w};
  const int kv_head = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The batch token of tile row r (rows past the tile repeat its last row: computed, never written).
  auto token_of = [&](int r) { return tokens[tile.token_begin + (tile.row_begin + min(r, tile.rows - 1)) / group]; };

  // Keys and values of this KV head: [kv_positions, D] from the sequence's first position.
  const __nv_bfloat16* k_head = keys + (static_cast<int64_t>(kv_head) * kv_positions + tile.kv_begin) * D;
  const __nv_bfloat16* v_head = values + (static_cast<int64_t>(kv_head) * kv_positions + tile.kv_begin) * D;
  // A thread copies one 16-byte chunk column of rows row0, row0 + 128 / kChunks, ...;
  // those rows agree modulo 8, so the swizzled offsets are one offset plus a constant stride.
  constexpr int kRowStep = kWarps * 32 / kChunks;
  const int copy_row = threadIdx.x / kChunks, copy_chunk = threadIdx.x % kChunks;
  const uint32_t copy_to = 16 * (copy_row * kChunks + (copy_chunk ^ (copy_row & 7)));
  const int copy_from = copy_row * D + copy_chunk * 8;
  auto stage_kv = [&](int buffer, int key_tile) {
    const __nv_bfloat16* k_rows = k_head + static_cast<int64_t>(key_tile) * kKeys * D + copy_from;
    const __nv_bfloat16* v_rows = v_head + static_cast<int64_t>(key_tile) * kKeys * D + copy_from;
    const uint32_t k_to = shared_address(s_k + buffer * kKeys * kChunks) + copy_to;
    const uint32_t v_to = shared_address(s_v + buffer * kKeys * kChunks) + copy_to;
#pragma unroll
    for (int step = 0; step < kKeys / kRowStep; ++step) {
      cp_async_16(k_to + step * kRowStep * kChunks * 16, k_rows + step * kRowStep * D);
      cp_async_16(v_to + step * kRowStep * kChunks * 16, v_rows + step * kRowStep * D);
    }
    cp_async_commit();
  };

  // The first K/V tile is on its way while the queries are converted.
  const int last_position = token_position[token_of(tile.rows - 1)];  // tokens ascend by position
  const int key_tiles = (last_position + kKeys) / kKeys;
  stage_kv(0, 0);

  // Queries: the tile's rows, f32 -> bf16, times scale * log2(e) (the softmax then uses exp2).
#pragma unroll 4
  for (int step = 0; step < kRows * kChunks / (kWarps * 32); ++step) {
    const int i = threadIdx.x + step * kWarps * 32, r = i / kChunks, chunk = i % kChunks;
    const int row = tile.row_begin + min(r, tile.rows - 1);
    const int head = kv_head * group + row % group;
    const float* source = q + (static_cast<int64_t>(token_of(r)) * heads + head) * D + chunk * 8;
    float x[8];
    load8(source, x);
    uint4 packed;
    packed.x = pack_bf16(x[0] * scale_log2, x[1] * scale_log2);
    packed.y = pack_bf16(x[2] * scale_log2, x[3] * scale_log2);
    packed.z = pack_bf16(x[4] * scale_log2, x[5] * scale_log2);
    packed.w = pack_bf16(x[6] * scale_log2, x[7] * scale_log2);
    s_q[swizzled(r, chunk)] = packed;
  }

  // Each row's position, for the causal mask (in shared memory: registers
  // are all taken by the accumulators, and the mask touches only the last tiles).
  __shared__ int row_positions[kRows];
  for (int r = threadIdx.x; r < kRows; r += kWarps * 32) row_positions[r] = token_position[token_of(r)];
  // This thread's rows in the mma layout: warp * 32 + m * 16 + half * 8 + lane / 4.
  const int quad_row = lane / 4, quad_col = lane % 4;

  float acc[2][D / 8][4];  // O: [m][8 dims][c fragment]
  float row_max[2][2], row_sum[2][2];  // per (m, half); row_sum is this lane's share until the end
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][d][e] = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) row_max[m][half] = -INFINITY, row_sum[m][half] = 0.0f;
  }

  // ldmatrix addresses. Every row a lane addresses is congruent to lane % 8
  // modulo 8, so its swizzle is chunk ^ (lane % 8); a chunk 2 * k + bit
  // becomes (2 * k) ^ (bit ^ lane % 8), one XOR with a constant per step.
  // Q: rows warp * 32 + m * 16 + lane % 16, chunk bit lane / 16.
  // K (non-transposed, B of S = Q K^T): keys lane % 8 + 8 * (lane / 16), chunk bit (lane / 8) % 2.
  // V (transposed, B of P V): keys lane % 8 + 8 * ((lane / 8) % 2), chunk bit lane / 16.
  constexpr int kRowBytes = kChunks * 16;
  const uint32_t q_lane = shared_address(s_q) +
                          (warp * 32 + (lane & 15)) * kRowBytes;
  const uint32_t q_xor = 16 * ((lane >> 4) ^ (lane & 7));
  const uint32_t k_lane = ((lane & 7) + ((lane >> 4) << 3)) * kRowBytes;
  const uint32_t k_xor = 16 * (((lane >> 3) & 1) ^ (lane & 7));
  const uint32_t v_lane = ((lane & 7) + (((lane >> 3) & 1) << 3)) * kRowBytes;
  const uint32_t v_xor = 16 * ((lane >> 4) ^ (lane & 7));

  for (int key_tile = 0; key_tile < key_tiles; ++key_tile) {
    const int buffer = key_tile & 1;
    if (key_tile + 1 < key_tiles) {
      stage_kv(buffer ^ 1, key_tile + 1);  // into the buffer the previous iteration finished with
      cp_async_wait<1>();                  // this tile has landed, the next may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t k_base =
        shared_address(s_k + buffer * kKeys * kChunks) + k_lane;
    const uint32_t v_base =
        shared_address(s_v + buffer * kKeys * kChunks) + v_lane;

    // S = Q K^T for the warp's 32 rows x 64 keys: [m][8 keys][c fragment].
    float s[2][kKeys / 8][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[m][n][e] = 0.0f;
#pragma unroll
    for (int k16 = 0; k16 < D / 16; ++k16) {
      uint32_t a[2][4];
      const uint32_t q_column = (32 * k16) ^ q_xor, k_column = (32 * k16) ^ k_xor;
#pragma unroll
      for (int m = 0; m < 2; ++m) ldmatrix_x4(a[m], q_lane + m * 16 * kRowBytes + q_column);
#pragma unroll
      for (int n16 = 0; n16 < kKeys / 16; ++n16) {
        uint32_t b[4];  // keys n16*16 + 0..7 and + 8..15, dims k16*16 + 0..15
        ldmatrix_x4(b, k_base + n16 * 16 * kRowBytes + k_column);
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          mma_bf16(s[m][2 * n16], a[m], b[0], b[1]);
          mma_bf16(s[m][2 * n16 + 1], a[m], b[2], b[3]);
        }
      }
    }

    // Causal mask, only on tiles that reach past the warp's first position.
    const int key_begin = key_tile * kKeys;
    if (key_begin + kKeys - 1 > row_positions[warp * 32]) {  // rows ascend by position
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int last_key = row_positions[warp * 32 + m * 16 + half * 8 + quad_row] - key_begin - 2 * quad_col;
#pragma unroll
          for (int n = 0; n < kKeys / 8; ++n) {
            if (n * 8 > last_key) s[m][n][2 * half] = -INFINITY;
            if (n * 8 + 1 > last_key) s[m][n][2 * half + 1] = -INFINITY;
          }
        }
    }

    // Online softmax: a row's 64 scores lie in the 4 lanes of a quad. Key 0
    // is in every row's first tile, so the running max is finite from there on.
    // Once the maxima settle (most tiles of a long prompt) no row's max moves,
    // and the warp skips rescaling its 128 accumulators.
    float correction[2][2];
    bool max_moved = false;
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = row_max[m][half];
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n)
          tile_max = fmaxf(tile_max, fmaxf(s[m][n][2 * half], s[m][n][2 * half + 1]));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const bool moved = tile_max != row_max[m][half];
        max_moved |= moved;
        correction[m][half] = moved ? fast_exp2(row_max[m][half] - tile_max) : 1.0f;  // 0 on the first tile
        row_max[m][half] = tile_max;
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n) {
          s[m][n][2 * half] = fast_exp2(s[m][n][2 * half] - tile_max);
          s[m][n][2 * half + 1] = fast_exp2(s[m][n][2 * half + 1] - tile_max);
          sum += s[m][n][2 * half] + s[m][n][2 * half + 1];
        }
        row_sum[m][half] = row_sum[m][half] * correction[m][half] + sum;
      }
    }
    if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int d = 0; d < D / 8; ++d)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[m][d][e] *= correction[m][e >> 1];
    }

    // O += P V: P's accumulator fragments are already the A fragments of the
    // next mma (two 8-key blocks make one 16-key step); V through ldmatrix.trans.
    uint32_t p[2][kKeys / 16][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int k16 = 0; k16 < kKeys / 16; ++k16) {
        p[m][k16][0] = pack_bf16(s[m][2 * k16][0], s[m][2 * k16][1]);
        p[m][k16][1] = pack_bf16(s[m][2 * k16][2], s[m][2 * k16][3]);
        p[m][k16][2] = pack_bf16(s[m][2 * k16 + 1][0], s[m][2 * k16 + 1][1]);
        p[m][k16][3] = pack_bf16(s[m][2 * k16 + 1][2], s[m][2 * k16 + 1][3]);
      }
    // k16 outer: the 32 mma of a 16-key step write distinct accumulators, so
    // they issue back to back instead of waiting on each other (d16 outer
    // chained 4 dependent mma per accumulator and stalled on their latency).
#pragma unroll
    for (int k16 = 0; k16 < kKeys / 16; ++k16) {
#pragma unroll
      for (int d16 = 0; d16 < D / 16; ++d16) {
        uint32_t b[4];  // keys k16*16 + 0..15, dims d16*16 + 0..7 and + 8..15
        ldmatrix_x4_trans(b, v_base + k16 * 16 * kRowBytes + ((32 * d16) ^ v_xor));
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          mma_bf16(acc[m][2 * d16], p[m][k16], b[0], b[1]);
          mma_bf16(acc[m][2 * d16 + 1], p[m][k16], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // everyone is done with `buffer` before the next iteration refills it
  }

  // out[token, head] = O / sum, the quad's shares of the sum added up first.
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[m][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inverse = 1.0f / sum;
      const int r = warp * 32 + m * 16 + half * 8 + quad_row;
      if (r >= tile.rows) continue;
      const int row = tile.row_begin + r;
      const int head = kv_head * group + row % group;
      float* out_row = out + (static_cast<int64_t>(token_of(r)) * heads + head) * D;
#pragma unroll
      for (int d = 0; d < D / 8; ++d)
        *reinterpret_cast<float2*>(out_row + d * 8 + 2 * quad_col) =
            make_float2(acc[m][d][2 * half] * inverse, acc[m][d][2 * half + 1] * inverse);
    }
  }
}

template <int D>
void launch_flash_prefill(Context& ctx, dim3 grid, float* out, const float* q, const __nv_bfloat16* keys,
                          const __nv_bfloat16* values, const int4* tiles, const int32_t* tokens,
                          const int32_t* positions, int heads, int group, int64_t kv_positions, float scale_log2) {
  constexpr size_t shared_bytes = sizeof(__nv_bfloat16) * (kRows + 4 * kKeys) * D;  // 96 KB at D = 128
  // Above 48 KB a kernel must opt in; this is a host-side attribute of the
  // current device, not stream work, so it is set before every launch.
  CUDA_CHECK(cudaFuncSetAttribute(flash_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(shared_bytes)));
  launch(ctx, flash_prefill_kernel<D>, grid, dim3(kWarps * 32), shared_bytes, out, q, keys, values, tiles, tokens,
         positions, heads, group, kv_positions, scale_log2);
}

}  // namespace

bool attention_prefill_supported(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return (head_dim == 64 || head_dim == 128) && kv_heads > 0 && heads % kv_heads == 0;
}

void attention_prefill(Context& ctx, float* out, const float* q, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       const KvLayer& cache, const AttentionPlan& plan, std::span<const int32_t> sequences,
                       const int32_t* positions, float scale) {
  GLM_CHECK(attention_prefill_supported(heads, kv_heads, head_dim), "internal error: prefill attention for ",
            heads, " heads over ", kv_heads, " KV heads of ", head_dim);
  const int64_t group = heads / kv_heads, block_size = plan.block_size;
  const int64_t n = static_cast<int64_t>(plan.token_sequence.size());

  // Per sequence: its tokens in ascending position (tokens), its keys'
  // cache slots 0..context-1 padded with -1 to whole key tiles (kv_slots),
  // and its query rows cut into tiles of kRows.
  std::vector<std::vector<int32_t>> tokens_of(plan.block_tables.size());
  for (int64_t t = 0; t < n; ++t) tokens_of[plan.token_sequence[t]].push_back(static_cast<int32_t>(t));
  std::vector<int32_t> tokens;
  std::vector<int64_t> kv_slots;
  struct Work {
    PrefillTile tile;
    int32_t keys;  // keys the tile attends to at most: the cost that orders launches
  };
  std::vector<Work> work;
  for (int32_t sequence : sequences) {
    std::vector<int32_t>& list = tokens_of[sequence];
    GLM_CHECK(!list.empty(), "internal error: prefill attention for a sequence with no tokens in the step");
    std::stable_sort(list.begin(), list.end(),
                     [&](int32_t a, int32_t b) { return plan.token_position[a] < plan.token_position[b]; });
    const int32_t token_begin = static_cast<int32_t>(tokens.size());
    tokens.insert(tokens.end(), list.begin(), list.end());
    const int64_t context = plan.token_position[list.back()] + 1;
    const int64_t padded = (context + kKeys - 1) / kKeys * kKeys;
    const int32_t kv_begin = static_cast<int32_t>(kv_slots.size());
    const std::vector<int32_t>& table = plan.block_tables[sequence];
    for (int64_t p = 0; p < padded; ++p)
      kv_slots.push_back(p < context ? static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size : -1);
    const int64_t rows = static_cast<int64_t>(list.size()) * group;
    for (int64_t row = 0; row < rows; row += kRows) {
      const int64_t here = std::min<int64_t>(kRows, rows - row);
      const int32_t last_token = list[(row + here - 1) / group];
      work.push_back({{token_begin, static_cast<int32_t>(row), static_cast<int32_t>(here), kv_begin},
                      plan.token_position[last_token] + 1});
    }
  }
  std::stable_sort(work.begin(), work.end(), [](const Work& a, const Work& b) { return a.keys > b.keys; });
  std::vector<int32_t> tile_words;  // [tiles, 4]: PrefillTile as int4
  for (const Work& w : work)
    tile_words.insert(tile_words.end(), {w.tile.token_begin, w.tile.row_begin, w.tile.rows, w.tile.kv_begin});

  const int64_t kv_positions = static_cast<int64_t>(kv_slots.size());
  const int32_t* device_tokens = ctx.upload(std::span<const int32_t>(tokens));
  const int4* device_tiles = static_cast<const int4*>(ctx.upload_bytes(tile_words.data(), tile_words.size() * 4));
  const int64_t* device_slots = ctx.upload(std::span<const int64_t>(kv_slots));
  auto* keys = ctx.scratch<__nv_bfloat16>(kv_heads * kv_positions * head_dim);    // [kv_heads, kv_positions, D]
  auto* values = ctx.scratch<__nv_bfloat16>(kv_heads * kv_positions * head_dim);  // [kv_heads, kv_positions, D]
  const int64_t threads = kv_positions * kv_heads * (head_dim / 8);
  launch(ctx, kv_to_bf16_kernel, dim3(blocks_for(threads, 256)), dim3(256), 0, keys, values, cache.keys.f32(),
         cache.values.f32(), device_slots, kv_positions, static_cast<int>(kv_heads), static_cast<int>(head_dim));

  const dim3 grid(static_cast<unsigned>(work.size()), static_cast<unsigned>(kv_heads));
  const float scale_log2 = scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2(e))
  if (head_dim == 128)
    launch_flash_prefill<128>(ctx, grid, out, q, keys, values, device_tiles, device_tokens, positions,
                              static_cast<int>(heads), static_cast<int>(group), kv_positions, scale_log2);
  else
    launch_flash_prefill<64>(ctx, grid, out, q, keys, values, device_tiles, device_tokens, positions,
                             static_cast<int>(heads), static_cast<int>(group), kv_positions, scale_log2);
}

}  // namespace glm::cuda
