// RMSNorm, SwiGLU, add and rotary embedding: the reference loops, and the
// dispatch to their AVX-512 or AVX2 versions (elementwise_avx512.cpp,
// elementwise_avx2.cpp) when allowed.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernels.h"
#include "backend/cpu/simd_ops.h"

namespace glm::cpu {

bool simd::simd_ops_available() {
  return kernels::options().isa == kernels::Isa::Avx512 && simd::compiled_for_avx512();
}

const simd::ElementwiseOps* simd::elementwise_ops() {
  const kernels::Isa isa = kernels::options().isa;
  if (isa == kernels::Isa::Avx512 && simd::avx512_elementwise_ops()) return simd::avx512_elementwise_ops();
  if (isa >= kernels::Isa::Avx2) return simd::avx2_elementwise_ops();
  return nullptr;
}

bool simd::avx2_attention_available() {
  return kernels::options().isa >= kernels::Isa::Avx2 && simd::avx2_attention_compiled();
}

namespace {

// gamma widened to f32 into the calling thread's buffer (kept between calls).
const float* widened_gamma(const Weight& gamma, int64_t dim) {
  thread_local std::vector<float> scale_buffer;
  scale_buffer.resize(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) scale_buffer[i] = weight_element(gamma, i);
  return scale_buffer.data();
}

// f(begin, length) over [0, count) cut into pieces of `piece` elements,
// pieces spread over threads for large counts.
template <typename F>
void for_each_piece(int64_t count, int64_t piece, F&& f) {
  const int64_t pieces = (count + piece - 1) / piece;
#pragma omp parallel for schedule(static) if (count >= kParallelMinElements)
  for (int64_t p = 0; p < pieces; ++p) f(p * piece, std::min(piece, count - p * piece));
}

}  // namespace

// y = x / sqrt(mean(x^2) + eps) * gamma, as transformers computes it: the
// normalisation in f32, then the weight multiplies the normalised value.
void rms_norm_reference(float* out, const float* x, const Weight& gamma, int64_t rows, int64_t dim, float eps) {
  // The worker threads read the calling thread's buffer (a thread_local named
  // inside the parallel loop would be each worker's own, empty one).
  const float* scale = widened_gamma(gamma, dim);
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const float* input = x + r * dim;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum_squares += input[i] * input[i];
    const float inverse_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
    float* output = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) output[i] = scale[i] * (input[i] * inverse_rms);
  }
}

void rms_norm(float* out, const float* x, const Weight& gamma, int64_t rows, int64_t dim, float eps) {
  const simd::ElementwiseOps* ops = simd::elementwise_ops();
  if (!ops) {
    rms_norm_reference(out, x, gamma, rows, dim, eps);
    return;
  }
  const float* scale = widened_gamma(gamma, dim);
#pragma omp parallel for schedule(static) if (rows * dim >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) ops->rms_norm_row(out + r * dim, x + r * dim, scale, dim, eps);
}

void swiglu_reference(float* out, const float* gate, const float* up, int64_t count) {
#pragma omp parallel for schedule(static) if (count >= kParallelMinElements)
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// The fast version is lane-wise (masked tails, no scalar remainder), so an
// element's result depends on neither its piece nor its thread.
void swiglu(float* out, const float* gate, const float* up, int64_t count) {
  const simd::ElementwiseOps* ops = simd::elementwise_ops();
  if (!ops) {
    swiglu_reference(out, gate, up, count);
    return;
  }
  for_each_piece(count, 1024, [&](int64_t begin, int64_t length) {
    ops->swiglu(out + begin, gate + begin, up + begin, length);
  });
}

void add(float* out, const float* a, const float* b, int64_t count) {
  const simd::ElementwiseOps* ops = simd::elementwise_ops();
  if (!ops) {
#pragma omp parallel for schedule(static) if (count >= kParallelMinElements)
    for (int64_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
    return;
  }
  for_each_piece(count, 4096, [&](int64_t begin, int64_t length) {
    ops->add(out + begin, a + begin, b + begin, length);
  });
}

// Half-split ("NeoX") pairing over the rotary part of each head: dim i and dim
// i + rotary_dim/2 rotate together by angle position * theta^(-2i/rotary_dim).
// The frequencies depend on rotary_dim, not head_dim, as in transformers'
// partial-rotary models.
void rotary(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, std::span<const int32_t> positions,
            int64_t rotary_dim, double theta) {
  const int64_t half = rotary_dim / 2;
  thread_local std::vector<float> frequency_buffer;  // keeps its capacity between calls
  frequency_buffer.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    frequency_buffer[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / rotary_dim));
  const float* inverse_frequency = frequency_buffer.data();  // shared with the worker threads
  // Each token's cosines and sines cost about as much as rotating 16 heads.
#pragma omp parallel for schedule(static) if (n_tokens * (n_heads + 16) * rotary_dim >= kParallelMinElements)
  for (int64_t t = 0; t < n_tokens; ++t) {
    thread_local std::vector<float> cosines, sines;
    cosines.resize(static_cast<size_t>(half));
    sines.resize(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      // f32 angle, as transformers computes position * inv_freq in f32.
      const float angle = static_cast<float>(positions[t]) * inverse_frequency[i];
      cosines[i] = std::cos(angle);
      sines[i] = std::sin(angle);
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* head = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float first = head[i], second = head[i + half];
        head[i] = first * cosines[i] - second * sines[i];
        head[i + half] = second * cosines[i] + first * sines[i];
      }
    }
  }
}

}  // namespace glm::cpu
