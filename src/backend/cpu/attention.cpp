// Attention over the paged KV cache. Each step first stores every token's key
// and value in its slot, then each query attends causally to its own
// sequence's positions 0..position, found through the block table. That one
// rule covers prompts (many tokens of one sequence), decoding (one token per
// sequence) and any mix of the two in a ragged batch.
//
// attention() runs the AVX-512 block kernel (attention_avx512.cpp) when
// allowed: queries are cut into blocks of up to 64 rows = a few consecutive
// tokens of one sequence x the query heads sharing one KV head (GQA), so each
// cached key/value is read once per block; blocks are spread over threads.
// attention_reference() is the plain per-(token, head) loop the tests hold
// it to, and what runs elsewhere.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd_ops.h"

namespace glm::cpu {
namespace {

void store_keys_and_values(const float* k, const float* v, int64_t n_tokens, int64_t slot_size, KvLayer& cache,
                           const AttentionPlan& plan) {
  float* key_cache = cache.keys.f32();      // [n_blocks, block_size, n_kv_heads, head_dim]
  float* value_cache = cache.values.f32();  // [n_blocks, block_size, n_kv_heads, head_dim]
  const int64_t total_slots = cache.keys.dim(0) * cache.keys.dim(1);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t slot = plan.token_slot[t];
    GLM_CHECK(slot >= 0 && slot < total_slots, "internal error: KV slot ", slot, " outside the cache");
    std::memcpy(key_cache + slot * slot_size, k + t * slot_size, sizeof(float) * slot_size);
    std::memcpy(value_cache + slot * slot_size, v + t * slot_size, sizeof(float) * slot_size);
  }
}

// A unit of work for one thread: tokens [first_token, first_token +
// n_tokens) — consecutive positions of one sequence — times query heads
// [first_head, first_head + n_heads), all of KV head kv_head.
struct QueryBlock {
  int64_t first_token;
  int64_t n_tokens;
  int64_t kv_head;
  int64_t first_head;
  int64_t n_heads;
};

// Rows a block aims for: 3 full vectors of 16 (12 GQA heads x 4 tokens for
// GLM-4.5-Air), which keeps the score tile at 24 accumulators.
constexpr int64_t kTargetBlockRows = 48;

// Cuts the step's queries into blocks (kv-head-major, so consecutive blocks
// read the same head's keys and values) into `blocks`, which keeps its capacity.
void plan_blocks(const AttentionPlan& plan, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
                 std::vector<QueryBlock>& blocks) {
  const int64_t heads_per_kv = n_heads / n_kv_heads;
  const int64_t parts = (heads_per_kv + simd::kMaxBlockRows - 1) / simd::kMaxBlockRows;
  const int64_t heads_per_block = (heads_per_kv + parts - 1) / parts;
  const int64_t tokens_per_block = std::max<int64_t>(1, kTargetBlockRows / heads_per_block);
  blocks.clear();
  for (int64_t kv_head = 0; kv_head < n_kv_heads; ++kv_head) {
    for (int64_t t = 0; t < n_tokens;) {
      int64_t run = 1;
      while (t + run < n_tokens && run < tokens_per_block &&
             plan.token_sequence[t + run] == plan.token_sequence[t] &&
             plan.token_position[t + run] == plan.token_position[t + run - 1] + 1)
        ++run;
      for (int64_t head = 0; head < heads_per_kv; head += heads_per_block)
        blocks.push_back({t, run, kv_head, kv_head * heads_per_kv + head, std::min(heads_per_block, heads_per_kv - head)});
      t += run;
    }
  }
}

// Multiply-adds of the scores and the value sums of a step.
int64_t attention_macs(const AttentionPlan& plan, int64_t n_tokens, int64_t n_heads, int64_t head_dim) {
  int64_t macs = 0;
  for (int64_t t = 0; t < n_tokens; ++t) macs += (plan.token_position[t] + 1) * n_heads * head_dim * 2;
  return macs;
}

// 64-byte-aligned view of a grow-only buffer.
float* aligned_floats(std::vector<float>& storage, int64_t count) {
  const size_t needed = static_cast<size_t>(count) + 16;
  if (storage.size() < needed) storage.resize(needed);
  const uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
  return reinterpret_cast<float*>((base + 63) & ~uintptr_t{63});
}

}  // namespace

void attention_reference(float* out, const float* q, const float* k, const float* v, int64_t n_tokens,
                         int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, KvLayer& cache,
                         const AttentionPlan& plan, float scale) {
  const int64_t slot_size = n_kv_heads * head_dim;
  store_keys_and_values(k, v, n_tokens, slot_size, cache, plan);
  const float* key_cache = cache.keys.f32();
  const float* value_cache = cache.values.f32();

  const int64_t heads_per_kv = n_heads / n_kv_heads;
  const int64_t block_size = plan.block_size;
  const int64_t work = attention_macs(plan, n_tokens, n_heads, head_dim);
  // No context is longer than the cache has slots: sizing the scores for all
  // of them up front means decoding never grows the buffer as it goes.
  const size_t total_slots = static_cast<size_t>(cache.keys.dim(0) * cache.keys.dim(1));
#pragma omp parallel if (work >= kParallelMinMacs)
  {
    thread_local std::vector<float> scores;  // keeps its capacity between calls
    if (scores.size() < total_slots) scores.resize(total_slots);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        const auto& blocks = plan.block_tables[plan.token_sequence[t]];
        const int64_t context = plan.token_position[t] + 1;
        const int64_t kv_head = h / heads_per_kv;
        const float* query = q + (t * n_heads + h) * head_dim;
        if (scores.size() < static_cast<size_t>(context)) scores.resize(static_cast<size_t>(context));
        float max_score = -INFINITY;
        for (int64_t p = 0; p < context; ++p) {
          const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
          const float* key = key_cache + slot * slot_size + kv_head * head_dim;
          float dot = 0.0f;
          // simd: lets the compiler split the sum into vector lanes (a fixed
          // order, the same for every batch this token is in).
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
          scores[p] = dot * scale;
          max_score = std::max(max_score, scores[p]);
        }
        float denominator = 0.0f;
        for (int64_t p = 0; p < context; ++p) {
          scores[p] = std::exp(scores[p] - max_score);
          denominator += scores[p];
        }
        float* output = out + (t * n_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) output[d] = 0.0f;
        for (int64_t p = 0; p < context; ++p) {
          const int64_t slot = static_cast<int64_t>(blocks[p / block_size]) * block_size + p % block_size;
          const float* value = value_cache + slot * slot_size + kv_head * head_dim;
          const float weight = scores[p] / denominator;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) output[d] += weight * value[d];
        }
      }
    }
  }
}

namespace simd {
namespace {
#include "backend/cpu/attention_block.inc"
}  // namespace

int64_t attention_scratch_floats(int64_t head_dim) {
  // transposed queries [head_dim][64] + scores [kKeyChunk][64] + outputs [64][padded head_dim]
  // + packed keys and values [kKeyChunk][packed stride] each (carve_scratch)
  return head_dim * kRowSlots + kKeyChunk * kRowSlots + kMaxBlockRows * padded_head_dim(head_dim) +
         2 * kKeyChunk * packed_stride(head_dim);
}
}  // namespace simd

void attention(float* out, const float* q, const float* k, const float* v, int64_t n_tokens, int64_t n_heads,
               int64_t n_kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan, float scale) {
  // AVX-512 blocks where allowed, else the same method on AVX2, else the reference loop.
  const bool avx512 = simd::simd_ops_available();
  if (!avx512 && !simd::avx2_attention_available()) {
    attention_reference(out, q, k, v, n_tokens, n_heads, n_kv_heads, head_dim, cache, plan, scale);
    return;
  }
  void (*const attend)(const simd::AttentionBlock&) = avx512 ? simd::attend_block : simd::attend_block_avx2;
  const int64_t slot_size = n_kv_heads * head_dim;
  store_keys_and_values(k, v, n_tokens, slot_size, cache, plan);

  thread_local std::vector<QueryBlock> block_storage;  // the calling thread's; keeps its capacity
  plan_blocks(plan, n_tokens, n_heads, n_kv_heads, block_storage);
  const QueryBlock* blocks = block_storage.data();
  const int64_t n_blocks = static_cast<int64_t>(block_storage.size());
  const int64_t work = attention_macs(plan, n_tokens, n_heads, head_dim);

  const float* key_cache = cache.keys.f32();
  const float* value_cache = cache.values.f32();
#pragma omp parallel if (work >= kParallelMinMacs && n_blocks > 1)
  {
    thread_local std::vector<float> scratch_storage;  // each thread's own; keeps its capacity
    float* scratch = aligned_floats(scratch_storage, simd::attention_scratch_floats(head_dim));
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_blocks; ++i) {
      const QueryBlock& block = blocks[i];
      simd::AttentionBlock args;
      args.q = q + block.first_token * n_heads * head_dim + block.first_head * head_dim;
      args.out = out + block.first_token * n_heads * head_dim + block.first_head * head_dim;
      args.token_stride = n_heads * head_dim;
      args.n_tokens = block.n_tokens;
      args.n_heads = block.n_heads;
      args.head_dim = head_dim;
      args.positions = plan.token_position.data() + block.first_token;
      args.block_table = plan.block_tables[plan.token_sequence[block.first_token]].data();
      args.block_size = plan.block_size;
      args.keys = key_cache + block.kv_head * head_dim;
      args.values = value_cache + block.kv_head * head_dim;
      args.slot_stride = slot_size;
      args.scale = scale;
      args.scratch = scratch;
      attend(args);
    }
  }
}

}  // namespace glm::cpu
