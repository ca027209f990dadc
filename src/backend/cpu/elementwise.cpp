// Reference RMSNorm, SwiGLU and rotary embedding.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace glm::cpu {

// y = x / sqrt(mean(x^2) + eps) * gamma, as transformers computes it: the
// normalisation in f32, then the weight multiplies the normalised value.
void rms_norm(float* out, const float* x, const Weight& gamma, int64_t rows, int64_t dim, float eps) {
  thread_local std::vector<float> scale_buffer;  // keeps its capacity between calls
  scale_buffer.resize(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) scale_buffer[i] = weight_element(gamma, i);
  // The worker threads read the calling thread's buffer (a thread_local named
  // inside the parallel loop would be each worker's own, empty one).
  const float* scale = scale_buffer.data();
#pragma omp parallel for schedule(static) if (rows > 8)
  for (int64_t r = 0; r < rows; ++r) {
    const float* input = x + r * dim;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum_squares += input[i] * input[i];
    const float inverse_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
    float* output = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) output[i] = scale[i] * (input[i] * inverse_rms);
  }
}

void swiglu(float* out, const float* gate, const float* up, int64_t count) {
#pragma omp parallel for schedule(static) if (count > 4096)
  for (int64_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
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
#pragma omp parallel for schedule(static) if (n_tokens > 4)
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
