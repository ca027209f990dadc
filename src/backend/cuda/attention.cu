// Paged attention on the GPU. First every token's key and value go to their
// cache slot; then one block per (token, query head) attends over its
// sequence's positions 0..position, found through the block table, with an
// online softmax in f32: each of the block's warps takes every kWarps-th
// position (a warp-wide dot product per position, lanes holding strided
// dims of q and of the accumulator), and the warps' partial (max, sum,
// accumulator) are merged at the end. Query head h reads KV head
// h / (n_heads / n_kv_heads), as the CPU reference does.
// That per-head kernel serves odd head sizes; head_dim 32/64/128 with up to
// 16 query heads per KV head goes to the grouped, split kernel below (at
// short contexts the group's query heads are spread over blocks of 4).
// At head_dim 128 with groups of a multiple of 4 (GLM-4.5/4.6: 12) decode
// steps take short_attention_kernel instead: a warp shares each key and value
// row over its lanes, the context cut into slices (8 of 32 positions at
// contexts up to 256) merged by a combine kernel.
// Sequences that bring many tokens in one step (prompts, prompt chunks) go to
// the tensor-core flash kernel of attention_prefill.cu instead, unless
// GLM_CUDA_PROMPTS=simt asks for these exact f32 kernels.
#include <algorithm>
#include <bit>
#include <type_traits>
#include <vector>

#include "backend/cuda/prepared_activations.cuh"

namespace glm::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256
constexpr int64_t kMaxGroup = 16;   // query heads per KV head the grouped kernel holds
// A sequence with at least this many tokens in a step takes the tensor-core
// prefill kernel. Its 128-row tiles hold `group` rows per token (12 for
// GLM-4.5-Air), so 16 tokens fill 1.5 tiles; below that most of a tile is
// padding while the decode kernels split the context over blocks and keep the
// GPU busy. Decode steps (one token a sequence) and short speculative steps
// thus keep the graph-captured decode kernels.
constexpr int64_t kPrefillTokens = 16;

// out[rows[r]] = source[r] for rows of `width` floats: the results of a
// sub-batch back to their places in the step.
__global__ void scatter_rows_kernel(float* __restrict__ out, const float* __restrict__ source,
                                    const int32_t* __restrict__ rows, int64_t width) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t r = blockIdx.x;
  const float* from = source + r * width;
  float* to = out + static_cast<int64_t>(rows[r]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) to[i] = from[i];
}

__global__ void write_kv_kernel(float* __restrict__ key_cache, float* __restrict__ value_cache,
                                const float* __restrict__ k, const float* __restrict__ v,
                                const int64_t* __restrict__ slots, int64_t slot_size) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];  // range-checked on the host
  for (int64_t i = threadIdx.x; i < slot_size; i += blockDim.x) {
    key_cache[slot * slot_size + i] = k[t * slot_size + i];
    value_cache[slot * slot_size + i] = v[t * slot_size + i];
  }
}

template <int J>  // dims per lane: head_dim <= 32 * J
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ key_cache,
                     const float* __restrict__ value_cache, const int32_t* __restrict__ token_sequence,
                     const int32_t* __restrict__ token_position, const int32_t* __restrict__ table_offsets,
                     const int32_t* __restrict__ table_blocks, int n_heads, int n_kv_heads, int head_dim,
                     int block_size, int heads_per_kv, float scale) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int t = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slot_size = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int64_t kv_offset = static_cast<int64_t>(h / heads_per_kv) * head_dim;
  const int context = token_position[t] + 1;
  const int32_t* blocks = table_blocks + table_offsets[token_sequence[t]];

  float query[J], acc[J];
  const float* q_row = q + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = lane + 32 * j;
    query[j] = d < head_dim ? q_row[d] : 0.0f;
    acc[j] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  for (int p = warp; p < context; p += kWarps) {
    const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
    const float* key = key_cache + slot * slot_size + kv_offset;
    const float* value = value_cache + slot * slot_size + kv_offset;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) dot += query[j] * key[d];
    }
    const float score = warp_sum(dot) * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max);  // 0 on the first position
    const float weight = expf(score - new_max);
    running_sum = running_sum * correction + weight;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * correction + (d < head_dim ? weight * value[d] : 0.0f);
    }
    running_max = new_max;
  }

  // Merge the warps: rescale each to the common max.
  __shared__ float warp_max[kWarps], warp_sum_[kWarps];
  __shared__ float warp_acc[kWarps][32 * J];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum_[warp] = running_sum;
  }
#pragma unroll
  for (int j = 0; j < J; ++j) warp_acc[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  float global_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) global_max = fmaxf(global_max, warp_max[w]);
  float total = 0.0f, factors[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    factors[w] = warp_max[w] == -INFINITY ? 0.0f : expf(warp_max[w] - global_max);  // idle warps count 0
    total += warp_sum_[w] * factors[w];
  }
  float* out_row = out + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_acc[w][d] * factors[w];
    out_row[d] = sum / total;
  }
}

// A split with no positions of its token: heads [first_row, first_row +
// heads) get (max -inf, sum 0), weight 0 in attention_combine_kernel.
__device__ __forceinline__ void mark_empty_split(float* partial_stats, int64_t first_row, int heads, int split,
                                                 int splits) {
  if (threadIdx.x < heads) {
    const int64_t head_row = first_row + threadIdx.x;
    partial_stats[(head_row * splits + split) * 2] = -INFINITY;
    partial_stats[(head_row * splits + split) * 2 + 1] = 0.0f;
  }
}

// The grouped, split kernel: one block per (token, KV head, split of the
// context). GQA sharing: the block holds the queries of all `group` heads
// that read this KV head (12 for GLM-4.5-Air), so every key and value is
// loaded once per group instead of once per head. Splitting the context over
// blocks (flash-decoding) keeps a decode step's few (token, KV head) pairs
// from leaving most of the GPU idle at long contexts. Each split writes its
// unnormalised accumulator with its (max, sum); attention_combine_kernel
// merges the splits. With one split the block normalises and writes `out`.
//
// Inside a block each warp takes chunks of 32 positions, a lane per position
// for the scores (a whole key row per lane against the group's queries in
// shared memory), so the softmax needs one warp reduction per head per 32
// positions rather than one per head per position (which bound the earlier
// version at 10% of the copy bandwidth); then a lane per J consecutive dims
// for P.V, reading each value row coalesced.
// J = head_dim / 32 dims per lane; G >= group query heads in registers.
template <int J, int G>
__global__ void __launch_bounds__(kWarps * 32)
    grouped_attention_kernel(float* __restrict__ out, float* __restrict__ partial_acc,
                             float* __restrict__ partial_stats, const float* __restrict__ q,
                             const float* __restrict__ key_cache, const float* __restrict__ value_cache,
                             const int32_t* __restrict__ token_sequence, const int32_t* __restrict__ token_position,
                             const int32_t* __restrict__ table_offsets, const int32_t* __restrict__ table_blocks,
                             int n_heads, int n_kv_heads, int block_size, int group, int head_groups,
                             int split_length, float scale, const PreparedOutput prepared) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  constexpr int kDims = 32 * J;
  __shared__ float queries[G][kDims];            // the group's queries, pre-scaled
  __shared__ float probabilities[kWarps][32][G + 1];  // this chunk's p, per warp: [position][head], padded against bank conflicts
  const int t = blockIdx.x, kv_head = blockIdx.y / head_groups, split = blockIdx.z, splits = gridDim.z;
  // This block's query heads: `here` heads of the KV head's group from head_base (absolute index).
  const int per_block = (group + head_groups - 1) / head_groups, first = (blockIdx.y % head_groups) * per_block;
  const int here = min(per_block, group - first), head_base = kv_head * group + first;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slot_size = static_cast<int64_t>(n_kv_heads) * kDims;
  const int context = token_position[t] + 1;
  const int begin = split * split_length, end = min(begin + split_length, context);
  const int32_t* blocks = table_blocks + table_offsets[token_sequence[t]];
  if (begin >= end) {  // a split past this token's context (the grid is sized for a bucket): weight 0
    mark_empty_split(partial_stats, static_cast<int64_t>(t) * n_heads + head_base, here, split, splits);
    return;
  }

  for (int i4 = threadIdx.x; i4 < G * kDims / 4; i4 += blockDim.x) {
    const int i = 4 * i4, head = min(i / kDims, here - 1);  // heads past the block's repeat the last (never used)
    float4 four = *reinterpret_cast<const float4*>(
        q + (static_cast<int64_t>(t) * n_heads + head_base + head) * kDims + i % kDims);
    four.x *= scale, four.y *= scale, four.z *= scale, four.w *= scale;
    *reinterpret_cast<float4*>(&queries[i / kDims][i % kDims]) = four;
  }
  __syncthreads();

  float acc[G][J], running_max[G], running_sum[G];
#pragma unroll
  for (int i = 0; i < G; ++i) {
#pragma unroll
    for (int j = 0; j < J; ++j) acc[i][j] = 0.0f;
    running_max[i] = -INFINITY;
    running_sum[i] = 0.0f;
  }
  for (int chunk = begin + warp * 32; chunk < end; chunk += kWarps * 32) {
    // Scores: this lane's position against every head of the group.
    const int p = chunk + lane;
    const bool valid = p < end;
    float score[G];
#pragma unroll
    for (int i = 0; i < G; ++i) score[i] = 0.0f;
    if (valid) {
      const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
      const float4* key = reinterpret_cast<const float4*>(key_cache + slot * slot_size + kv_head * kDims);
#pragma unroll 4
      for (int d4 = 0; d4 < kDims / 4; ++d4) {
        const float4 k = __ldg(key + d4);
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (i >= here) break;
          const float4 qi = *reinterpret_cast<const float4*>(&queries[i][4 * d4]);
          score[i] += qi.x * k.x + qi.y * k.y + qi.z * k.z + qi.w * k.w;
        }
      }
    }
    // Online softmax over the chunk, one reduction per head.
#pragma unroll
    for (int i = 0; i < G; ++i) {
      if (i >= here) break;
      const float chunk_max = warp_max(valid ? score[i] : -INFINITY);
      const float new_max = fmaxf(running_max[i], chunk_max);
      const float correction = expf(running_max[i] - new_max);  // 0 on the first chunk
      const float weight = valid ? expf(score[i] - new_max) : 0.0f;
      running_sum[i] = running_sum[i] * correction + warp_sum(weight);
      running_max[i] = new_max;
#pragma unroll
      for (int j = 0; j < J; ++j) acc[i][j] *= correction;
      probabilities[warp][lane][i] = weight;
    }
    __syncwarp();
    // P.V: lanes over dims, positions of the chunk in turn, kBatch value
    // rows requested before any is used (one at a time, each load's latency
    // was exposed: the whole kernel was latency-bound at short contexts).
    constexpr int kBatch = 8;
    const int count = min(32, end - chunk);
    for (int c0 = 0; c0 < count; c0 += kBatch) {
      float v[kBatch][J];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int pc = chunk + min(c0 + b, count - 1);
        const int64_t slot = static_cast<int64_t>(blocks[pc / block_size]) * block_size + pc % block_size;
        const float* value = value_cache + slot * slot_size + kv_head * kDims + J * lane;
        if constexpr (J == 4) {
          const float4 four = *reinterpret_cast<const float4*>(value);
          v[b][0] = four.x, v[b][1] = four.y, v[b][2] = four.z, v[b][3] = four.w;
        } else {
#pragma unroll
          for (int j = 0; j < J; ++j) v[b][j] = value[j];
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (c0 + b >= count) break;
#pragma unroll
        for (int i = 0; i < G; ++i) {
          if (i >= here) break;
          const float weight = probabilities[warp][c0 + b][i];
#pragma unroll
          for (int j = 0; j < J; ++j) acc[i][j] += weight * v[b][j];
        }
      }
    }
    __syncwarp();  // probabilities is rewritten by the next chunk
  }

  // Merge the warps head by head through shared memory.
  __shared__ float warp_stats[kWarps][2];
  __shared__ float warp_acc[kWarps][kDims];
#pragma unroll
  for (int i = 0; i < G; ++i) {
    if (i >= here) break;
    if (lane == 0) {
      warp_stats[warp][0] = running_max[i];
      warp_stats[warp][1] = running_sum[i];
    }
#pragma unroll
    for (int j = 0; j < J; ++j) warp_acc[warp][J * lane + j] = acc[i][j];
    __syncthreads();
    float split_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) split_max = fmaxf(split_max, warp_stats[w][0]);
    float factors[kWarps], split_sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      factors[w] = warp_stats[w][0] == -INFINITY ? 0.0f : expf(warp_stats[w][0] - split_max);  // idle warps count 0
      split_sum += warp_stats[w][1] * factors[w];
    }
    const int64_t head_row = static_cast<int64_t>(t) * n_heads + head_base + i;  // [n, heads]
    for (int d = threadIdx.x; d < kDims; d += blockDim.x) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += warp_acc[w][d] * factors[w];
      if (splits == 1) {
        const float value[1] = {sum / split_sum};
        out[head_row * kDims + d] = value[0];
        // for the o_proj GEMV; a warp is a group of 32 (kDims % 32 == 0, uniform loop)
        if (prepared.kind != ActivationKind::None) prepare_group<1>(prepared, (head_row * kDims + d) / 32, value);
      } else {
        partial_acc[(head_row * splits + split) * kDims + d] = sum;
      }
    }
    if (splits > 1 && threadIdx.x == 0) {
      partial_stats[(head_row * splits + split) * 2] = split_max;
      partial_stats[(head_row * splits + split) * 2 + 1] = split_sum;
    }
    __syncthreads();  // the buffers are reused by the next head
  }
}

// Decode attention for head_dim 128 and GQA groups of a multiple of 4: one
// block per (token, KV head, 4 of its query heads, slice of the context),
// the slices merged by attention_combine_kernel (short_slices: at contexts
// up to 256, 8 slices of 32 positions for a step of a few sequences).
// The split kernel above keeps one warp per 32 positions, a lane per position
// walking its key row, and a short context leaves it a long chain of
// dependent steps (13.5 us at context 20, plus 3.5 us of combine, on the
// H200); at 4096 positions it reads the cache at ~0.6 TB/s. Here each
// warp takes 8 positions at a time and all 32 lanes share each key and value
// row (a float4 of the 128 dims each): the 8 keys, the 8 values and the
// queries are requested together, once. Lane l then holds 32 partial dot
// products (4 heads x 8 positions); a reduce-scatter over the warp (31
// shuffles) leaves lane l the whole score of head l / 8 at position l % 8,
// and the online softmax runs per head over 8 lanes. The 4 warps' (max,
// sum, accumulator) merge through shared memory at the end, which writes
// `out` (and its quantized form for o_proj: prepared).
//
// Folded rotary (FoldedTokens below): in a decode step at a sliced context,
// where every sequence brings one token, the kernel can also take q, k and v
// as projected and do head_norm_rotary's work itself, which saves that
// launch (+2% a step at context 4096 on 8 layers; see rotary_folds). Each
// block norms and rotates its 4 query heads in registers (a lane holds 4
// dims; the partner of a rotary pair is rotary_dim / 8 lanes away); in the
// last slice, which holds the token's own position, warp 0 does the same to
// the KV head's new key and writes it and the value to the token's cache
// slot, and a barrier lets the block's warps read the slot like any other.
// The KV head's 3 blocks of that slice write the same bits to the same slot;
// no block reads a slot another block writes (several tokens of one
// sequence in a step, which attend to each other, never fold).
constexpr int kShortHeads = 4, kShortDims = 128, kShortPositions = 8;
constexpr int64_t kShortContext = 256;

// The step's new tokens as projected, for short_attention_kernel<true>.
struct FoldedTokens {
  const float* k = nullptr;          // [n, kv_heads, 128], before head norm and rotary
  const float* v = nullptr;          // [n, kv_heads, 128]
  float* keys = nullptr;             // the cache [slots, kv_heads, 128], for the new rows
  float* values = nullptr;
  const int64_t* slots = nullptr;    // [n] each token's cache slot
  const void* q_gamma = nullptr;     // [128] or null: no head norm on q
  DType q_gamma_dtype = DType::F32;
  const void* k_gamma = nullptr;     // [128] or null
  DType k_gamma_dtype = DType::F32;
  float eps = 0.0f;
  const float* inverse_frequency = nullptr;  // [half]
  int half = 0;                      // rotary_dim / 2: a multiple of 4, at most 64
};
void append_signature(Signature& signature, const FoldedTokens& f) {
  signature.add_all(f.k, f.v, f.keys, f.values, f.slots, f.q_gamma, f.q_gamma_dtype, f.k_gamma, f.k_gamma_dtype,
                    f.eps, f.inverse_frequency, f.half);
}

// RMSNorm of a 128-dim head held a float4 a lane (dims 4 lane .. + 3), by
// head_norm_rotary_kernel's formula; its sum of squares adds in another
// order, so a result may differ from that kernel's in the last bit.
__device__ __forceinline__ float4 head_norm4(float4 x, const void* gamma, DType gamma_dtype, float eps, int lane) {
  const float sum_squares = warp_sum(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w);
  const float inverse_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(kShortDims) + eps);
  const int d = 4 * lane;
  return make_float4(element_f32(gamma, gamma_dtype, d) * (x.x * inverse_rms),
                     element_f32(gamma, gamma_dtype, d + 1) * (x.y * inverse_rms),
                     element_f32(gamma, gamma_dtype, d + 2) * (x.z * inverse_rms),
                     element_f32(gamma, gamma_dtype, d + 3) * (x.w * inverse_rms));
}

// The rotation of a lane's 4 dims of a head: dim d < half pairs with
// d + half, both turned by position * inverse_frequency[d] (cosf and sinf as
// head_norm_rotary_kernel takes them, so the same angles and the same bits).
struct LaneRotation {
  float cosine[4], sine[4];
  int partner;  // the lane with the other dims of this lane's pairs (itself past rotary_dim)
  int role;     // 1: first of its pairs, 2: second, 0: past rotary_dim (unchanged)
};
__device__ __forceinline__ LaneRotation lane_rotation(int lane, int position, const float* inverse_frequency,
                                                      int half) {
  LaneRotation r;
  const int d = 4 * lane;
  r.role = d < half ? 1 : d < 2 * half ? 2 : 0;
  r.partner = r.role == 1 ? lane + half / 4 : r.role == 2 ? lane - half / 4 : lane;
  const int pair = r.role == 2 ? d - half : d;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float angle = r.role ? static_cast<float>(position) * inverse_frequency[pair + c] : 0.0f;
    r.cosine[c] = cosf(angle);
    r.sine[c] = sinf(angle);
  }
  return r;
}
// Every lane of the warp must call it (the partner's dims come by shuffle).
__device__ __forceinline__ float4 rotate4(float4 x, const LaneRotation& r) {
  const float own[4] = {x.x, x.y, x.z, x.w};
  float other[4], out[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) other[c] = __shfl_sync(0xffffffffu, own[c], r.partner);
  if (r.role == 0) return x;
#pragma unroll
  for (int c = 0; c < 4; ++c)  // first' = first cos - second sin; second' = second cos + first sin
    out[c] = r.role == 1 ? own[c] * r.cosine[c] - other[c] * r.sine[c] : own[c] * r.cosine[c] + other[c] * r.sine[c];
  return make_float4(out[0], out[1], out[2], out[3]);
}

// Sums 32 values over the warp so that lane l ends with the total of value
// l: each step halves the values a lane keeps (Half of them: the upper ones
// where lane & Half, else the lower) and adds the partner's copy of them.
// (A template per step: a runtime loop bound left the array in local memory.)
template <int Half>
__device__ __forceinline__ float reduce_scatter(float (&v)[32]) {
  const bool upper = threadIdx.x & Half;
#pragma unroll
  for (int i = 0; i < Half; ++i) {
    const float send = upper ? v[i] : v[i + Half];
    const float keep = upper ? v[i + Half] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, Half);
  }
  if constexpr (Half > 1) return reduce_scatter<Half / 2>(v);
  else return v[0];
}

// At most 128 registers (4 blocks a multiprocessor), folded or not: folded
// it would take 142 and 3 blocks, and long contexts (slices sized for 4
// blocks a multiprocessor) lost 4% of a decode step to the extra wave.
template <bool kFold>  // the step's new tokens arrive unrotated (folded: see FoldedTokens)
__global__ void __launch_bounds__(kWarps * 32, 4)
    short_attention_kernel(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ key_cache,
                           const float* __restrict__ value_cache, const int32_t* __restrict__ token_sequence,
                           const int32_t* __restrict__ token_position, const int32_t* __restrict__ table_offsets,
                           const int32_t* __restrict__ table_blocks, int n_heads, int n_kv_heads, int block_size,
                           int group, float scale, const PreparedOutput prepared, float* __restrict__ partial_acc,
                           float* __restrict__ partial_stats, int split_length, const FoldedTokens folded) {
  constexpr int H = kShortHeads, D = kShortDims, P = kShortPositions;
  static_assert(H * P == 32, "a lane per (head, position) after the reduce-scatter");
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int head_groups = group / H;
  const int t = blockIdx.x, kv_head = blockIdx.y / head_groups;
  const int head_base = kv_head * group + (blockIdx.y % head_groups) * H;  // absolute index of the block's first head
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t slot_size = static_cast<int64_t>(n_kv_heads) * D;
  const int context = token_position[t] + 1;
  const int32_t* blocks = table_blocks + table_offsets[token_sequence[t]];
  // Long contexts: blockIdx.z is a slice of the context, merged by attention_combine_kernel.
  const int split = blockIdx.z, splits = gridDim.z;
  const int begin = split * split_length, end = min(begin + split_length, context);
  if (begin >= end) {  // a slice past this token's context (the grid is sized for a bucket): weight 0
    mark_empty_split(partial_stats, static_cast<int64_t>(t) * n_heads + head_base, H, split, splits);
    return;
  }

  float4 query[H];  // dims 4 * lane .. + 3 of each head, pre-scaled
#pragma unroll
  for (int h = 0; h < H; ++h)
    query[h] = reinterpret_cast<const float4*>(q + (static_cast<int64_t>(t) * n_heads + head_base + h) * D)[lane];
  // Folded: q normed and rotated here. In the last slice (which holds the
  // token's own position) warp 0 also norms and rotates the token's key
  // (requested with q) and writes it and the value to the cache slot before
  // any warp reads the cache: the KV head's other blocks of the slice write
  // the same bits to the same slot.
  if constexpr (kFold) {
    const bool writer = warp == 0 && context - 1 < end;
    float4 key, value;
    if (writer) {
      const int64_t row = (static_cast<int64_t>(t) * n_kv_heads + kv_head) * D;
      key = reinterpret_cast<const float4*>(folded.k + row)[lane];
      value = reinterpret_cast<const float4*>(folded.v + row)[lane];
    }
    const LaneRotation rotation = lane_rotation(lane, context - 1, folded.inverse_frequency, folded.half);
#pragma unroll
    for (int h = 0; h < H; ++h) {
      if (folded.q_gamma) query[h] = head_norm4(query[h], folded.q_gamma, folded.q_gamma_dtype, folded.eps, lane);
      query[h] = rotate4(query[h], rotation);
    }
    if (writer) {
      if (folded.k_gamma) key = head_norm4(key, folded.k_gamma, folded.k_gamma_dtype, folded.eps, lane);
      key = rotate4(key, rotation);
      const int64_t cached = folded.slots[t] * slot_size + static_cast<int64_t>(kv_head) * D;  // range-checked on the host
      reinterpret_cast<float4*>(folded.keys + cached)[lane] = key;
      reinterpret_cast<float4*>(folded.values + cached)[lane] = value;
    }
    __syncthreads();  // the slot written before the other warps read it
  }
  // Folded, the cache is read through the pointers it is written through:
  // no read-only (.nc) loads of a slot written during the kernel.
  const float* keys_cache = kFold ? folded.keys : key_cache;
  const float* values_cache = kFold ? folded.values : value_cache;
#pragma unroll
  for (int h = 0; h < H; ++h) query[h].x *= scale, query[h].y *= scale, query[h].z *= scale, query[h].w *= scale;
  float4 acc[H];
  float running_max[H], running_sum[H];  // the same in every lane
#pragma unroll
  for (int h = 0; h < H; ++h) {
    acc[h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    running_max[h] = -INFINITY;
    running_sum[h] = 0.0f;
  }
  for (int first = begin + warp * P; first < end; first += kWarps * P) {  // positions first .. first + P - 1
    float4 keys[P], values[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int p = min(first + j, end - 1);  // past the slice: a repeat, weight 0
      const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
      keys[j] = reinterpret_cast<const float4*>(keys_cache + slot * slot_size + kv_head * D)[lane];
      values[j] = reinterpret_cast<const float4*>(values_cache + slot * slot_size + kv_head * D)[lane];
    }
    float partial[H * P];  // [head][position]: this lane's 4 dims of each dot product
#pragma unroll
    for (int h = 0; h < H; ++h)
#pragma unroll
      for (int j = 0; j < P; ++j)
        partial[h * P + j] = query[h].x * keys[j].x + query[h].y * keys[j].y + query[h].z * keys[j].z +
                             query[h].w * keys[j].w;
    const float score = reduce_scatter<16>(partial);  // head lane / P, position first + lane % P
    const bool valid = first + lane % P < end;
    float batch_max = valid ? score : -INFINITY;
#pragma unroll
    for (int offset = 1; offset < P; offset *= 2) batch_max = fmaxf(batch_max, __shfl_xor_sync(0xffffffffu, batch_max, offset));
    float own_max = running_max[0];  // this lane's head's (a select chain: no local-memory array)
#pragma unroll
    for (int h = 1; h < H; ++h)
      if (lane / P == h) own_max = running_max[h];
    const float own_new_max = fmaxf(own_max, batch_max);
    const float weight = valid ? expf(score - own_new_max) : 0.0f;
    float batch_sum = weight;
#pragma unroll
    for (int offset = 1; offset < P; offset *= 2) batch_sum += __shfl_xor_sync(0xffffffffu, batch_sum, offset);
#pragma unroll
    for (int h = 0; h < H; ++h) {
      const float new_max = __shfl_sync(0xffffffffu, own_new_max, h * P);
      const float correction = expf(running_max[h] - new_max);  // 0 on the first batch
      running_sum[h] = running_sum[h] * correction + __shfl_sync(0xffffffffu, batch_sum, h * P);
      running_max[h] = new_max;
      float4 sum = make_float4(acc[h].x * correction, acc[h].y * correction, acc[h].z * correction,
                               acc[h].w * correction);
#pragma unroll
      for (int j = 0; j < P; ++j) {
        const float w = __shfl_sync(0xffffffffu, weight, h * P + j);
        sum.x += w * values[j].x, sum.y += w * values[j].y, sum.z += w * values[j].z, sum.w += w * values[j].w;
      }
      acc[h] = sum;
    }
  }

  // Merge the warps: warp w finishes head w from every warp's part.
  __shared__ float4 warp_acc[kWarps][H][D / 4];
  __shared__ float warp_stats[kWarps][H][2];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    warp_acc[warp][h][lane] = acc[h];
    if (lane == 0) warp_stats[warp][h][0] = running_max[h], warp_stats[warp][h][1] = running_sum[h];
  }
  __syncthreads();
  static_assert(kWarps == H, "a warp per head in the merge");
  const int h = warp;
  float global_max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) global_max = fmaxf(global_max, warp_stats[w][h][0]);
  float total = 0.0f;
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const float factor = warp_stats[w][h][0] == -INFINITY ? 0.0f : expf(warp_stats[w][h][0] - global_max);  // idle warps count 0
    total += warp_stats[w][h][1] * factor;
    const float4 part = warp_acc[w][h][lane];
    sum.x += part.x * factor, sum.y += part.y * factor, sum.z += part.z * factor, sum.w += part.w * factor;
  }
  const int64_t head_row = static_cast<int64_t>(t) * n_heads + head_base + h;
  if (splits > 1) {  // the slice's unnormalised accumulator and its (max, sum)
    reinterpret_cast<float4*>(partial_acc + (head_row * splits + split) * D)[lane] = sum;
    if (lane == 0) {
      partial_stats[(head_row * splits + split) * 2] = global_max;
      partial_stats[(head_row * splits + split) * 2 + 1] = total;
    }
    return;
  }
  const float result[4] = {sum.x / total, sum.y / total, sum.z / total, sum.w / total};
  reinterpret_cast<float4*>(out + head_row * D)[lane] = make_float4(result[0], result[1], result[2], result[3]);
  // for the o_proj GEMV: 8 lanes a group of 32 dims
  if (prepared.kind != ActivationKind::None) prepare_group<4>(prepared, (head_row * D + 4 * lane) / 32, result);
}

// out[t, h] = the splits' accumulators rescaled to their common max, over
// the rescaled sums. Splits past a token's context hold max -inf, weight 0.
// prepared: out's quantized form too (launched with head_dim % 32 == 0
// threads, one dim each, so a warp holds whole groups of 32).
__global__ void attention_combine_kernel(float* __restrict__ out, const float* __restrict__ partial_acc,
                                         const float* __restrict__ partial_stats, int splits, int head_dim,
                                         const PreparedOutput prepared) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t head_row = static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y;  // t * heads + h
  const float* stats = partial_stats + head_row * splits * 2;
  float global_max = -INFINITY;
  for (int s = 0; s < splits; ++s) global_max = fmaxf(global_max, stats[2 * s]);
  float total = 0.0f;
  for (int s = 0; s < splits; ++s)
    if (stats[2 * s] != -INFINITY) total += stats[2 * s + 1] * expf(stats[2 * s] - global_max);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (stats[2 * s] != -INFINITY)
        sum += partial_acc[(head_row * splits + s) * head_dim + d] * expf(stats[2 * s] - global_max);
    const float value[1] = {sum / total};
    out[head_row * head_dim + d] = value[0];
    if (prepared.kind != ActivationKind::None) prepare_group<1>(prepared, (head_row * head_dim + d) / 32, value);
  }
}

// Contexts up to 256 share one bucket; longer ones round up to a quarter of
// the power of two below them (4096..5119 -> 5120), so at most a quarter of
// the splits find nothing to do, and a step's work changes every 1024
// tokens at a 4k context.
int64_t context_bucket(int64_t context) {
  if (context <= 256) return 256;
  const int64_t quarter = static_cast<int64_t>(std::bit_floor(static_cast<uint64_t>(context))) / 4;
  return (context + quarter - 1) / quarter * quarter;
}

void simt_attention(Context& ctx, float* out, const float* q, int64_t n, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, KvLayer& cache, const int32_t* sequences, const int32_t* positions,
                    const int32_t* table_offsets, const int32_t* table_blocks, int64_t block_size,
                    int64_t context_capacity, float scale, bool prepare_out, const FoldedTokens& folded = {});

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Slices of a context of `capacity` positions for the split kernels: enough
// that the blocks (base_blocks a slice) cover the GPU `coverage` times, none
// shorter than `min_length`; past a token's true context they weigh 0.
struct ContextSlices {
  int64_t splits, length;
};
ContextSlices context_slices(const Context& ctx, int64_t capacity, int64_t base_blocks, int coverage,
                             int64_t min_length) {
  const int64_t target_blocks = coverage * static_cast<int64_t>(ctx.multiprocessors);
  const int64_t splits =
      std::clamp<int64_t>((target_blocks + base_blocks - 1) / base_blocks, 1, (capacity + min_length - 1) / min_length);
  const int64_t length = (capacity + splits - 1) / splits;
  return {(capacity + length - 1) / length, length};
}

// The short kernel's slices of a context bucket for a step of n_tokens
// tokens (a block a token and 4 query heads, per slice): buckets up to
// kShortContext in slices of >= ctx.short_slice_min positions (8 of 32 at
// 256 for a step of a few sequences), longer ones of >= 64.
// GLM_CUDA_SHORT_SLICE sets that minimum (0: the bucket whole, one block a
// head group, as before session 26).
//
// Why slice short contexts: one block walked up to 256 positions in rounds
// of 32 (a dependent round of loads, shuffles and exps each) while 24
// blocks kept the GPU nearly idle, and the sliced form also takes the head
// norm, rotary and KV write (the fold below). H200, contexts 16-272, in
// turns against the whole form: 8 layers FP8 1.026-1.029, int4 1.016-1.026
// with slices of 32 (of 64: 1.016-1.023; of 16: 0.98 of 32); 46 FP8 layers
// 173.1 -> 177.0-177.5 tok/s (docs/cuda.md, "Session 26").
ContextSlices short_slices(const Context& ctx, int64_t capacity, int64_t n_tokens, int64_t heads) {
  const int64_t base_blocks = n_tokens * (heads / kShortHeads);
  if (capacity > kShortContext) return context_slices(ctx, capacity, base_blocks, 4, 64);
  if (ctx.short_slice_min == 0) return {1, capacity};
  return context_slices(ctx, capacity, base_blocks, 4, ctx.short_slice_min);
}

// Whether decode tokens take short_attention_kernel (else the split kernels).
bool short_kernel_applies(const Context& ctx, int64_t heads, int64_t kv_heads, int64_t head_dim, const float* q,
                          const float* out) {
  return ctx.short_attention && head_dim == kShortDims && (heads / kv_heads) % kShortHeads == 0 && aligned16(q) &&
         aligned16(out);
}

// Whether the short kernel takes the step's head norm, rotary and KV write
// (FoldedTokens): it runs for every token, no token attends to another token
// of the step (each sequence brings one), and the context is sliced. Left
// whole (one slice), the kernel is one short chain of loads, and the fold's
// work at its head (angles, the key's rotation, a barrier) cost as much as
// the launch it saved (8 H200 layers at context 0: -3% int4 and FP8); sliced,
// each block's share of that work is short (at 4096, +2%: docs/cuda.md).
bool rotary_folds(const Context& ctx, const AttentionPlan& plan, int64_t heads, int64_t kv_heads, int64_t head_dim,
                  int64_t rotary_dim, int64_t context_capacity, const float* out, const float* q, const float* k,
                  const float* v) {
  if (!ctx.fold_rotary || !short_kernel_applies(ctx, heads, kv_heads, head_dim, q, out) || !aligned16(k) ||
      !aligned16(v) || rotary_dim % 8 != 0 || rotary_dim > head_dim)
    return false;
  if (short_slices(ctx, context_capacity, static_cast<int64_t>(plan.token_sequence.size()), heads).splits <= 1)
    return false;
  std::vector<bool> seen(plan.block_tables.size(), false);
  for (int32_t sequence : plan.token_sequence) {
    if (seen[sequence]) return false;
    seen[sequence] = true;
  }
  return true;
}

}  // namespace

void attention(Context& ctx, float* out, float* q, float* k, const float* v, int64_t n, int64_t heads,
               int64_t kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan, float scale,
               bool kv_written, const RotaryFold* fold) {
  if (n == 0) return;
  GLM_CHECK(cache.keys.shape.size() == 4 && cache.keys.dim(2) == kv_heads && cache.keys.dim(3) == head_dim &&
                cache.keys.dim(1) == plan.block_size && cache.values.shape == cache.keys.shape,
            "internal error: KV cache ", shape_to_string(cache.keys.shape), " for ", kv_heads, " KV heads of ",
            head_dim, " with blocks of ", plan.block_size);
  GLM_CHECK(head_dim <= 32 * kMaxDimsPerLane, "attention with head_dim ", head_dim, " > ", 32 * kMaxDimsPerLane,
            " is not supported on CUDA yet");
  GLM_CHECK(static_cast<int64_t>(plan.token_sequence.size()) == n && static_cast<int64_t>(plan.token_position.size()) == n,
            "internal error: attention plan for ", plan.token_sequence.size(), " tokens, step has ", n);
  const int64_t n_blocks = cache.keys.dim(0), block_size = plan.block_size;
  const int64_t total_slots = n_blocks * block_size;
  for (int64_t slot : plan.token_slot)
    GLM_CHECK(slot >= 0 && slot < total_slots, "internal error: KV slot ", slot, " outside the cache");

  // The context is rounded up to a bucket, and the work is sized from the
  // bucket rather than from the exact length, so consecutive decode steps
  // launch identical work (replayable from a CUDA graph) until the context
  // crosses into the next bucket. Kernels read the true lengths on the device.
  int32_t max_context = 0;
  for (int32_t position : plan.token_position) max_context = std::max(max_context, position + 1);
  const int64_t context_capacity = context_bucket(max_context);

  // Block tables flattened, each padded to the bucket's block count (with
  // block 0, never read): sequence s owns blocks[offsets[s], offsets[s + 1]).
  int64_t table_capacity = (context_capacity + block_size - 1) / block_size;
  for (const auto& table : plan.block_tables) table_capacity = std::max<int64_t>(table_capacity, table.size());
  std::vector<int32_t> offsets{0}, blocks;
  for (const auto& table : plan.block_tables) {
    for (int32_t block : table)
      GLM_CHECK(block >= 0 && block < n_blocks, "internal error: KV block ", block, " outside the cache");
    blocks.insert(blocks.end(), table.begin(), table.end());
    blocks.resize(blocks.size() + static_cast<size_t>(table_capacity) - table.size(), 0);
    offsets.push_back(static_cast<int32_t>(blocks.size()));
  }
  for (int64_t t = 0; t < n; ++t) {
    const int32_t sequence = plan.token_sequence[t];
    GLM_CHECK(sequence >= 0 && sequence < static_cast<int32_t>(plan.block_tables.size()) &&
                  plan.token_position[t] >= 0 &&
                  plan.token_position[t] < static_cast<int64_t>(plan.block_tables[sequence].size()) * block_size,
              "internal error: token ", t, " at position ", plan.token_position[t], " is outside its block table");
  }

  const int64_t* slots = ctx.upload(std::span<const int64_t>(plan.token_slot));
  const int32_t* sequences = ctx.upload(std::span<const int32_t>(plan.token_sequence));
  const int32_t* positions = ctx.upload(std::span<const int32_t>(plan.token_position));
  const int32_t* table_offsets = ctx.upload(std::span<const int32_t>(offsets));
  const int32_t* table_blocks = ctx.upload(std::span<const int32_t>(blocks));

  // The step's head norm, rotary and KV write: folded into the decode
  // kernel, or done here by head_norm_rotary (rotary.cu) before it.
  FoldedTokens folded;
  if (fold && rotary_folds(ctx, plan, heads, kv_heads, head_dim, fold->rotary_dim, context_capacity, out, q, k, v)) {
    folded.k = k;
    folded.v = v;
    folded.keys = cache.keys.f32();
    folded.values = cache.values.f32();
    folded.slots = slots;
    folded.q_gamma = fold->q_gamma.data;
    folded.q_gamma_dtype = fold->q_gamma.dtype;
    folded.k_gamma = fold->k_gamma.data;
    folded.k_gamma_dtype = fold->k_gamma.dtype;
    folded.eps = fold->eps;
    folded.inverse_frequency = fold->inverse_frequency;
    folded.half = static_cast<int>(fold->rotary_dim / 2);
    kv_written = true;
  } else if (fold) {
    KvWrite kv;
    kv.keys = cache.keys.f32();
    kv.values = cache.values.f32();
    kv.v = v;
    kv.slots = slots;
    head_norm_rotary(ctx, q, k, fold->q_gamma, fold->k_gamma, fold->eps, positions, fold->inverse_frequency, n, heads,
                     kv_heads, head_dim, fold->rotary_dim, kv);
    kv_written = true;
  }
  const int64_t slot_size = kv_heads * head_dim;
  if (!kv_written)  // else head_norm_rotary wrote them (rotary.cu), or the decode kernel will
    launch(ctx, write_kv_kernel, dim3(static_cast<unsigned>(n)), dim3(256), 0, cache.keys.f32(), cache.values.f32(),
           k, v, slots, slot_size);

  // Sequences with many tokens in this step go to tensor cores; the others
  // (all of them in a decode step) to the kernels below.
  std::vector<int32_t> prefill_sequences;
  if (ctx.tensor_core_prompts && attention_prefill_supported(heads, kv_heads, head_dim)) {
    std::vector<int64_t> tokens_in_step(plan.block_tables.size(), 0);
    for (int32_t sequence : plan.token_sequence) ++tokens_in_step[sequence];
    for (size_t s = 0; s < tokens_in_step.size(); ++s)
      if (tokens_in_step[s] >= kPrefillTokens) prefill_sequences.push_back(static_cast<int32_t>(s));
  }
  if (prefill_sequences.empty()) {
    simt_attention(ctx, out, q, n, heads, kv_heads, head_dim, cache, sequences, positions, table_offsets,
                   table_blocks, block_size, context_capacity, scale, /*prepare_out=*/true, folded);
    return;
  }
  GLM_CHECK(!folded.k, "internal error: rotary folded into a step with prompts");
  attention_prefill(ctx, out, q, heads, kv_heads, head_dim, cache, plan, prefill_sequences, positions, scale);

  // The other tokens of a mixed step (decode tokens beside a prompt chunk)
  // as a sub-batch of their own: queries gathered, results scattered back.
  std::vector<bool> is_prefill(plan.block_tables.size(), false);
  for (int32_t sequence : prefill_sequences) is_prefill[sequence] = true;
  std::vector<int32_t> rest, rest_sequences, rest_positions;
  int32_t rest_context = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (is_prefill[plan.token_sequence[t]]) continue;
    rest.push_back(static_cast<int32_t>(t));
    rest_sequences.push_back(plan.token_sequence[t]);
    rest_positions.push_back(plan.token_position[t]);
    rest_context = std::max(rest_context, plan.token_position[t] + 1);
  }
  if (rest.empty()) return;
  const int64_t m = static_cast<int64_t>(rest.size()), width = heads * head_dim;
  const int32_t* rows = ctx.upload(std::span<const int32_t>(rest));
  float* rest_q = ctx.scratch<float>(m * width);    // [m, heads, head_dim]
  float* rest_out = ctx.scratch<float>(m * width);  // [m, heads, head_dim]
  gather_rows(ctx, rest_q, q, rows, m, width);
  simt_attention(ctx, rest_out, rest_q, m, heads, kv_heads, head_dim, cache,
                 ctx.upload(std::span<const int32_t>(rest_sequences)),
                 ctx.upload(std::span<const int32_t>(rest_positions)), table_offsets, table_blocks, block_size,
                 context_bucket(rest_context), scale, /*prepare_out=*/false);
  launch(ctx, scatter_rows_kernel, dim3(static_cast<unsigned>(m)), dim3(256), 0, out, rest_out, rows, width);
}

namespace {

// Each slice's unnormalised accumulator and (max, sum), for attention_combine_kernel (none for one slice).
struct SplitPartials {
  float* acc = nullptr;    // [n, heads, splits, head_dim]
  float* stats = nullptr;  // [n, heads, splits, 2]
};
SplitPartials split_partials(Context& ctx, int64_t n, int64_t heads, int64_t head_dim, int64_t splits) {
  if (splits <= 1) return {};
  return {ctx.scratch<float>(n * heads * splits * head_dim), ctx.scratch<float>(n * heads * splits * 2)};
}

// The slices merged into out (and its prepared form), where there are several.
void merge_splits(Context& ctx, float* out, const SplitPartials& partials, int64_t n, int64_t heads,
                  int64_t head_dim, int64_t splits, const PreparedOutput& prepared) {
  if (splits <= 1) return;
  launch(ctx, attention_combine_kernel, dim3(static_cast<unsigned>(n), static_cast<unsigned>(heads)),
         dim3(static_cast<unsigned>(head_dim)), 0, out, partials.acc, partials.stats, static_cast<int>(splits),
         static_cast<int>(head_dim), prepared);
}

// The f32 SIMT kernels over n tokens: the grouped, split kernel where it
// applies, else a block per (token, query head). context_capacity: the
// bucket of the longest context (sizes the splits). prepare_out: out is the
// whole attention output of the step, so the grouped kernels may write its
// quantized form for o_proj (prepare_activations).
void simt_attention(Context& ctx, float* out, const float* q, int64_t n, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, KvLayer& cache, const int32_t* sequences, const int32_t* positions,
                    const int32_t* table_offsets, const int32_t* table_blocks, int64_t block_size,
                    int64_t context_capacity, float scale, bool prepare_out, const FoldedTokens& folded) {
  const int64_t group = heads / kv_heads;
  const int dims_per_lane = static_cast<int>(head_dim / 32);
  const bool grouped = head_dim % 32 == 0 && (dims_per_lane == 1 || dims_per_lane == 2 || dims_per_lane == 4) &&
                       group <= kMaxGroup;
  const bool short_kernel = short_kernel_applies(ctx, heads, kv_heads, head_dim, q, out);
  GLM_CHECK(short_kernel || !folded.k, "internal error: rotary folded where the short kernel does not run");
  // o_proj reads out as quantized activations only as a GEMV (n <= 8 tokens);
  // the per-head kernel below does not write them.
  const PreparedOutput prepared = prepare_out && n <= 8 && (short_kernel || grouped)
                                      ? prepare_activations(ctx, out, n, heads * head_dim)
                                      : PreparedOutput{};
  if (short_kernel) {
    // A block per (token, 4 query heads of a KV head, slice of the context):
    // enough slices to cover the GPU 4 times, none shorter than short_slices'
    // minimum; one slice (a large batch) needs no merge.
    const ContextSlices slices = short_slices(ctx, context_capacity, n, heads);
    const SplitPartials partials = split_partials(ctx, n, heads, head_dim, slices.splits);
    launch(ctx, folded.k ? short_attention_kernel<true> : short_attention_kernel<false>,
           dim3(static_cast<unsigned>(n), static_cast<unsigned>(heads / kShortHeads),
                static_cast<unsigned>(slices.splits)),
           dim3(kWarps * 32), 0, out, q, cache.keys.f32(), cache.values.f32(), sequences, positions, table_offsets,
           table_blocks, static_cast<int>(heads), static_cast<int>(kv_heads), static_cast<int>(block_size),
           static_cast<int>(group), scale, prepared, partials.acc, partials.stats, static_cast<int>(slices.length),
           folded);
    merge_splits(ctx, out, partials, n, heads, head_dim, slices.splits, prepared);
    return;
  }
  if (grouped) {
    // Enough blocks to cover the GPU twice; splits no shorter than 32 positions
    // (4x and 16 measured slower: 99 against 80 us at context 4096). Splits
    // past a token's true context find no positions and weigh 0.
    // Short contexts also split a KV head's query heads over blocks of up to
    // 4: a lane scores its position against every head of its block, and 12
    // heads a lane made a short context latency-bound (Nsight Compute: 40 us
    // at context 16, SMs active 7% of it). Long contexts keep whole groups,
    // so each key and value is read once.
    const int64_t head_groups = context_capacity <= 2048 && group > 4 ? (group + 3) / 4 : 1;
    const int64_t block_heads = (group + head_groups - 1) / head_groups;
    const ContextSlices slices = context_slices(ctx, context_capacity, n * kv_heads * head_groups, 2, 32);
    const SplitPartials partials = split_partials(ctx, n, heads, head_dim, slices.splits);
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(kv_heads * head_groups),
                    static_cast<unsigned>(slices.splits));
    auto launch_grouped = [&](auto dims, auto max_group) {
      launch(ctx, grouped_attention_kernel<decltype(dims)::value, decltype(max_group)::value>, grid,
             dim3(kWarps * 32), 0, out, partials.acc, partials.stats, q, cache.keys.f32(), cache.values.f32(),
             sequences, positions, table_offsets, table_blocks, static_cast<int>(heads), static_cast<int>(kv_heads),
             static_cast<int>(block_size), static_cast<int>(group), static_cast<int>(head_groups),
             static_cast<int>(slices.length), scale, prepared);
    };
    auto with_group = [&](auto dims) {
      if (block_heads == 1) launch_grouped(dims, std::integral_constant<int, 1>{});
      else if (block_heads == 2) launch_grouped(dims, std::integral_constant<int, 2>{});
      else if (block_heads <= 4) launch_grouped(dims, std::integral_constant<int, 4>{});
      else if (block_heads <= 8) launch_grouped(dims, std::integral_constant<int, 8>{});
      else launch_grouped(dims, std::integral_constant<int, 16>{});
    };
    if (dims_per_lane == 1) with_group(std::integral_constant<int, 1>{});
    else if (dims_per_lane == 2) with_group(std::integral_constant<int, 2>{});
    else with_group(std::integral_constant<int, 4>{});
    merge_splits(ctx, out, partials, n, heads, head_dim, slices.splits, prepared);
    return;
  }

  // Other head sizes and groups: a block per (token, query head).
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(heads));
  const int per_lane = static_cast<int>((head_dim + 31) / 32);
  auto launch_per_head = [&](auto dims) {
    launch(ctx, attention_kernel<decltype(dims)::value>, grid, dim3(kWarps * 32), 0, out, q, cache.keys.f32(),
           cache.values.f32(), sequences, positions, table_offsets, table_blocks, static_cast<int>(heads),
           static_cast<int>(kv_heads), static_cast<int>(head_dim), static_cast<int>(block_size),
           static_cast<int>(heads / kv_heads), scale);
  };
  switch (per_lane) {
    case 1: launch_per_head(std::integral_constant<int, 1>{}); break;
    case 2: launch_per_head(std::integral_constant<int, 2>{}); break;
    case 3: launch_per_head(std::integral_constant<int, 3>{}); break;
    case 4: launch_per_head(std::integral_constant<int, 4>{}); break;
    case 5: launch_per_head(std::integral_constant<int, 5>{}); break;
    case 6: launch_per_head(std::integral_constant<int, 6>{}); break;
    case 7: launch_per_head(std::integral_constant<int, 7>{}); break;
    default: launch_per_head(std::integral_constant<int, 8>{}); break;
  }
}

}  // namespace
}  // namespace glm::cuda
