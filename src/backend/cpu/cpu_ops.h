// The reference CPU implementations of the backend ops, as free functions over
// plain pointers so each can be read (and tested) on its own. They compute in
// f32 and are the oracle every faster kernel is checked against.
#pragma once

#include <cstdint>
#include <span>

#include "backend/backend.h"

namespace glm::cpu {

// Widens row `row` of a float view of any float dtype into f32.
void load_row_f32(const TensorView& view, int64_t row, float* out /*[view.dim(-1)]*/);
// Row `row` of a weight of any format (float, affine, FP8) as f32 values:
// the reference dequantization every fast kernel is checked against.
void dequantize_row(const Weight& weight, int64_t row, float* out /*[weight.dim(-1)]*/);
// One element of a 1-D weight (biases, norms) as f32.
float weight_element(const Weight& weight, int64_t index);

void rms_norm(float* out, const float* x, const Weight& gamma, int64_t rows, int64_t dim, float eps);
// out = x W^T + b: the fast kernels of kernels/ when one applies, else linear_reference.
void linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias);
// The plain loop (one widened weight row at a time, sequential f32 dot
// products): the oracle the kernels are tested against.
void linear_reference(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias);
void swiglu(float* out, const float* gate, const float* up, int64_t count);
void rotary(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, std::span<const int32_t> positions,
            int64_t rotary_dim, double theta);
void attention(float* out, const float* q, const float* k, const float* v, int64_t n_tokens, int64_t n_heads,
               int64_t n_kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan, float scale);
// Routing of one token: writes top_k expert ids and weights.
void route_token(const float* logits, const Weight& correction_bias, int64_t n_experts, const RouterParams& params,
                 int32_t* expert_ids, float* weights);
void moe_experts(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Routing& routing,
                 const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down);

}  // namespace glm::cpu
