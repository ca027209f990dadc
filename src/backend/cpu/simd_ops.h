// The AVX-512 and AVX2 versions of the non-projection CPU ops (attention,
// SwiGLU, RMSNorm, add), behind plain-pointer entry points: their files are
// compiled for their ISA by a target pragma and are only called after
// simd_ops_available() / avx2_attention_available() / elementwise_ops() have
// said the CPU (and GLM_CPU_ISA) allows it. The
// reference versions in attention.cpp / elementwise.cpp stay the oracle the
// tests compare these with.
//
// Every function here computes a token's (or row's) result with one fixed
// instruction sequence that depends only on that token's own inputs, never on
// the batch, the tile it falls in or the thread running it, so a token alone
// and the same token in a ragged batch get identical bits.
#pragma once

#include <cstdint>

namespace glm::cpu::simd {

// True when the AVX-512 versions may run: built with them, the CPU has
// AVX-512 F/BW/VL/DQ, and GLM_CPU_ISA (kernels::options().isa) is avx512.
bool simd_ops_available();
// Whether this build compiled the AVX-512 versions (elementwise_avx512.cpp).
bool compiled_for_avx512();

// ---- attention ----

// One block of queries that share a KV head and attend to the same sequence:
// n_tokens consecutive tokens of the step (positions[i] each) times n_heads
// consecutive query heads, at most kMaxBlockRows rows in all. Row (i, j)
// reads its query at q + i * token_stride + j * head_dim and writes its
// output at out + i * token_stride + j * head_dim.
struct AttentionBlock {
  const float* q = nullptr;
  float* out = nullptr;
  int64_t token_stride = 0;  // floats from one token's heads to the next's (n_heads_total * head_dim)
  int64_t n_tokens = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;
  const int32_t* positions = nullptr;  // [n_tokens]
  // The sequence's paged cache: position p lives in slot
  // block_table[p / block_size] * block_size + p % block_size, whose key is
  // keys + slot * slot_stride (the KV head's offset already added).
  const int32_t* block_table = nullptr;
  int64_t block_size = 0;
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t slot_stride = 0;  // floats between consecutive slots (n_kv_heads * head_dim)
  float scale = 1.0f;
  float* scratch = nullptr;  // attention_scratch_floats(head_dim) floats, 64-byte aligned
};

// Rows (tokens x heads) one block may hold: 4 vectors of 16.
constexpr int64_t kMaxBlockRows = 64;
// Keys per online-softmax step. Steps start at positions that are multiples
// of this (not at the block's first query), which is what makes a query's
// arithmetic independent of the other queries in its block.
constexpr int64_t kKeyChunk = 64;

int64_t attention_scratch_floats(int64_t head_dim);
// Causal attention of every row of the block over its sequence's cached
// positions 0..positions[i] (the block's K/V must already be in the cache).
void attend_block(const AttentionBlock& block);
// The same on AVX2 + FMA (attention_avx2.cpp), for CPUs without AVX-512:
// when avx2_attention_available() (built with it, GLM_CPU_ISA at least avx2)
// and simd_ops_available() is not. Same scratch, same code
// (attention_vector.inc) on 8 lanes, and the same bits.
bool avx2_attention_compiled();
bool avx2_attention_available();
void attend_block_avx2(const AttentionBlock& block);

// ---- elementwise ----

// One ISA's versions of the elementwise ops. Tails are masked vectors, not
// scalar loops, so an element's result does not depend on where it falls
// relative to a vector boundary.
struct ElementwiseOps {
  // out[i] = silu(gate[i]) * up[i]; out may alias gate or up.
  void (*swiglu)(float* out, const float* gate, const float* up, int64_t count);
  // One row: out = x / sqrt(mean(x^2) + eps) * gamma; out may alias x.
  void (*rms_norm_row)(float* out, const float* x, const float* gamma, int64_t dim, float eps);
  // out[i] = a[i] + b[i]; out may alias a or b.
  void (*add)(float* out, const float* a, const float* b, int64_t count);
  // out[i] += weight * x[i] (one expert's contribution to a token).
  void (*add_scaled)(float* out, const float* x, float weight, int64_t count);
};
// The ops GLM_CPU_ISA and the CPU allow: AVX-512 (elementwise_avx512.cpp),
// else AVX2 + FMA (elementwise_avx2.cpp), else nullptr: the reference loops.
const ElementwiseOps* elementwise_ops();
// Each ISA's table, nullptr where this build did not compile it (the CPU is
// not asked: callers check the ISA first).
const ElementwiseOps* avx512_elementwise_ops();
const ElementwiseOps* avx2_elementwise_ops();

}  // namespace glm::cpu::simd
