// Projections: out = x W^T + b. cpu::linear runs a SIMD kernel of kernels/
// when one handles the weight and the options (kernels/kernels.h), else the
// reference below: W of any format, widened to f32 one row at a time. Each
// weight row is read once per call and dotted with every token, so prompt
// processing reads the weights once per batch rather than once per token.
// Every output element is one sequential dot product, so a token's result
// does not depend on which other tokens share the batch (the kernels keep
// that property with their own fixed order).
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernels.h"

namespace glm::cpu {

void load_row_f32(const TensorView& view, int64_t row, float* out) {
  const int64_t width = view.dim(-1);
  const void* source = view.row(row);
  switch (view.dtype) {
    case DType::F32: {
      const float* values = static_cast<const float*>(source);
      for (int64_t i = 0; i < width; ++i) out[i] = values[i];
      break;
    }
    case DType::BF16: {
      const uint16_t* values = static_cast<const uint16_t*>(source);
      for (int64_t i = 0; i < width; ++i) out[i] = bf16_to_f32(values[i]);
      break;
    }
    default:
      for (int64_t i = 0; i < width; ++i) out[i] = load_as_f32(source, view.dtype, static_cast<size_t>(i));
  }
}

void linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias,
            int64_t step_tokens) {
  if (!kernels::linear(out, x, n_tokens, weight, bias, step_tokens)) linear_reference(out, x, n_tokens, weight, bias);
}

void linear_many(const kernels::LinearJob* jobs, int64_t count) {
  int64_t macs = 0;
  for (int64_t i = 0; i < count; ++i) macs += jobs[i].n_tokens * jobs[i].weight->dim(0) * jobs[i].weight->dim(1);
  const SerialBelowMinMacs small(macs);
  if (count <= 0 || kernels::linear_many(jobs, count)) return;
  for (int64_t i = 0; i < count; ++i)
    linear(jobs[i].out, jobs[i].x, jobs[i].n_tokens, *jobs[i].weight, jobs[i].bias, jobs[i].step_tokens);
}

void linear_reference(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias) {
  const int64_t out_features = weight.dim(0);
  const int64_t in_features = weight.dim(1);
#pragma omp parallel
  {
    // Each thread's own, grow-only: a decode step on this path allocates nothing.
    thread_local std::vector<float> row;
    if (row.size() < static_cast<size_t>(in_features)) row.resize(static_cast<size_t>(in_features));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < out_features; ++o) {
      dequantize_row(weight, o, row.data());
      const float bias_value = bias ? weight_element(*bias, o) : 0.0f;
      for (int64_t t = 0; t < n_tokens; ++t) {
        const float* input = x + t * in_features;
        float sum = 0.0f;
        for (int64_t i = 0; i < in_features; ++i) sum += row[i] * input[i];
        out[t * out_features + o] = sum + bias_value;
      }
    }
  }
}

}  // namespace glm::cpu
