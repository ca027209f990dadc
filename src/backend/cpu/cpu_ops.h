// The CPU implementations of the backend ops, as free functions over plain
// pointers so each can be read (and tested) on its own. The *_reference
// functions are the plain f32 loops, the oracle every faster path is checked
// against; the others run a faster path (SIMD kernels, simd_ops.h) when one
// applies and the reference otherwise.
#pragma once

#include <omp.h>

#include <cstdint>
#include <span>

#include "backend/backend.h"
#include "backend/cpu/kernels/kernels.h"

namespace glm::cpu {

// Below these sizes an op runs on the calling thread only. Forking a team
// costs microseconds on an idle machine, but on a loaded one (ctest -j, other
// processes whose OpenMP workers spin) each fork can wait a scheduler time
// slice for a descheduled worker: tiny-model decoding, made of such small
// ops, fell from ~2000 to ~10 tokens/s beside two other tiny-model runs.
// Multiply-adds of projections and attention: 2M, about 50 us on one core
// (every op of the tiny model, none of GLM-4.5-Air's decode projections).
constexpr int64_t kParallelMinMacs = int64_t{1} << 21;
// Elements of elementwise ops (norms, SwiGLU, add, rotary, routing, copies):
// 64K, about 10-20 us of memory traffic on one core.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;

// While alive, OpenMP regions this thread starts get a team of one when
// `macs` is below kParallelMinMacs. Wraps calls into the projection kernels,
// whose own threshold (kernels/dispatch.cpp) is lower.
class SerialBelowMinMacs {
 public:
  explicit SerialBelowMinMacs(int64_t macs) {
    if (macs < kParallelMinMacs && omp_get_max_threads() > 1) {
      saved_threads_ = omp_get_max_threads();
      omp_set_num_threads(1);  // this thread's setting only (an OpenMP ICV)
    }
  }
  ~SerialBelowMinMacs() {
    if (saved_threads_ > 0) omp_set_num_threads(saved_threads_);
  }
  SerialBelowMinMacs(const SerialBelowMinMacs&) = delete;
  SerialBelowMinMacs& operator=(const SerialBelowMinMacs&) = delete;

 private:
  int saved_threads_ = 0;
};

// Widens row `row` of a float view of any float dtype into f32.
void load_row_f32(const TensorView& view, int64_t row, float* out /*[view.dim(-1)]*/);
// Row `row` of a weight of any format (float, affine, FP8) as f32 values:
// the reference dequantization every fast kernel is checked against.
void dequantize_row(const Weight& weight, int64_t row, float* out /*[weight.dim(-1)]*/);
// One element of a 1-D weight (biases, norms) as f32.
float weight_element(const Weight& weight, int64_t index);

void rms_norm(float* out /*[rows, dim]*/, const float* x /*[rows, dim]*/, const Weight& gamma /*[dim]*/, int64_t rows,
              int64_t dim, float eps);
void rms_norm_reference(float* out, const float* x, const Weight& gamma, int64_t rows, int64_t dim, float eps);
// out = x W^T + b: the fast kernels of kernels/ when one applies, else linear_reference.
// step_tokens: see kernels::linear (an expert's share of a prompt step).
void linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias,
            int64_t step_tokens = 0);
// Several projections (kernels::LinearJob) in one parallel region when the
// kernels take them all (kernels::linear_many), else one linear() each: the
// same bits either way.
void linear_many(const kernels::LinearJob* jobs, int64_t count);
// The plain loop (one widened weight row at a time, sequential f32 dot
// products): the oracle the kernels are tested against.
void linear_reference(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias);
// out = silu(gate) * up elementwise; out may alias gate or up.
void swiglu(float* out, const float* gate, const float* up, int64_t count);
void swiglu_reference(float* out, const float* gate, const float* up, int64_t count);
// out = a + b elementwise; out may alias a or b.
void add(float* out, const float* a, const float* b, int64_t count);
void rotary(float* x /*[n_tokens, n_heads, head_dim]*/, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
            std::span<const int32_t> positions /*[n_tokens]*/, int64_t rotary_dim, double theta);
// Stores k/v in the cache, then causal attention (Backend::attention).
void attention(float* out /*[n_tokens, n_heads, head_dim]*/, const float* q /*[n_tokens, n_heads, head_dim]*/,
               const float* k /*[n_tokens, n_kv_heads, head_dim]*/, const float* v /*[n_tokens, n_kv_heads, head_dim]*/,
               int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, KvLayer& cache,
               const AttentionPlan& plan, float scale);
void attention_reference(float* out, const float* q, const float* k, const float* v, int64_t n_tokens, int64_t n_heads,
                         int64_t n_kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan, float scale);
// Routing of one token: writes top_k expert ids and weights.
void route_token(const float* logits /*[n_experts]*/, const Weight& correction_bias /*[n_experts]*/, int64_t n_experts,
                 const RouterParams& params, int32_t* expert_ids /*[top_k]*/, float* weights /*[top_k]*/);
// The same decision as route_token, written as the plain sort of the
// definition (docs/model.md#routing): the oracle route_token is tested against.
void route_token_reference(const float* logits, const Weight& correction_bias, int64_t n_experts,
                           const RouterParams& params, int32_t* expert_ids, float* weights);
// Routes every token of a batch (threads over tokens when there are many).
void route(int32_t* expert_ids /*[n_tokens, top_k]*/, float* weights /*[n_tokens, top_k]*/,
           const float* logits /*[n_tokens, n_experts]*/, int64_t n_tokens, const Weight& correction_bias,
           int64_t n_experts, const RouterParams& params);
void moe_experts(float* out /*[n_tokens, hidden]*/, const float* x /*[n_tokens, hidden]*/, int64_t n_tokens,
                 int64_t hidden, const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                 const ExpertTable& down);
// The per-token loop of the definition: for each token, each chosen expert's
// MLP on that token alone (linear_reference), summed in ascending expert id.
void moe_experts_reference(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Routing& routing,
                           const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down);

}  // namespace glm::cpu
