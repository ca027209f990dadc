// Reference attention over the paged KV cache. Each step first stores every
// token's key and value in its slot, then each query attends causally to its
// own sequence's positions 0..position, found through the block table. That
// one rule covers prompts (many tokens of one sequence), decoding (one token
// per sequence) and any mix of the two in a ragged batch.
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace glm::cpu {

void attention(float* out, const float* q, const float* k, const float* v, int64_t n_tokens, int64_t n_heads,
               int64_t n_kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan, float scale) {
  float* key_cache = cache.keys.f32();      // [n_blocks, block_size, n_kv_heads, head_dim]
  float* value_cache = cache.values.f32();  // [n_blocks, block_size, n_kv_heads, head_dim]
  const int64_t slot_size = n_kv_heads * head_dim;
  const int64_t total_slots = cache.keys.dim(0) * cache.keys.dim(1);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t slot = plan.token_slot[t];
    GLM_CHECK(slot >= 0 && slot < total_slots, "internal error: KV slot ", slot, " outside the cache");
    std::memcpy(key_cache + slot * slot_size, k + t * slot_size, sizeof(float) * slot_size);
    std::memcpy(value_cache + slot * slot_size, v + t * slot_size, sizeof(float) * slot_size);
  }

  const int64_t heads_per_kv = n_heads / n_kv_heads;
  const int64_t block_size = plan.block_size;
#pragma omp parallel
  {
    thread_local std::vector<float> scores;  // keeps its capacity between calls
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        const auto& blocks = plan.block_tables[plan.token_sequence[t]];
        const int64_t context = plan.token_position[t] + 1;
        const int64_t kv_head = h / heads_per_kv;
        const float* query = q + (t * n_heads + h) * head_dim;
        scores.resize(static_cast<size_t>(context));
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

}  // namespace glm::cpu
