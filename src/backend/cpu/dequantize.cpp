// Reference dequantization: any weight format to f32 values, one row at a
// time. Plain and obviously correct on purpose; it is the oracle for the
// SIMD kernels.
#include "backend/cpu/cpu_ops.h"

namespace glm::cpu {

void dequantize_row(const Weight& weight, int64_t row, float* out) {
  switch (weight.format.kind) {
    case WeightFormat::Kind::Float: load_row_f32(weight.view, row, out); return;
    case WeightFormat::Kind::Affine:
    case WeightFormat::Kind::Fp8: break;
  }
  fail(weight.name, ": ", weight.format.describe(), " weights are not supported yet");
}

float weight_element(const Weight& weight, int64_t index) {
  GLM_CHECK(weight.format.kind == WeightFormat::Kind::Float, weight.name, ": expected a float vector, found ",
            weight.format.describe());
  return load_as_f32(weight.view.data, weight.view.dtype, static_cast<size_t>(index));
}

}  // namespace glm::cpu
