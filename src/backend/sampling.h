// Choosing the next token from a row of logits, defined once for every
// backend: greedy, or sampling with temperature, top-k, top-p and min-p
// applied in transformers' order. The random draw is counter-based — a pure
// function of (seed, sequence, step) — so any backend, and any batch
// composition, draws the same token. backend/sampling_rule.h has the exact
// arithmetic (shared with the CUDA kernel); sample_token below is the plain
// reference every backend's Backend::sample is checked against.
#pragma once

#include <cstdint>
#include <span>

#if defined(__CUDACC__)
#define GLM_HOST_DEVICE __host__ __device__
#else
#define GLM_HOST_DEVICE
#endif

namespace glm {

struct SamplingParams {
  double temperature = 1.0;  // 0 means greedy
  int64_t top_k = 0;         // 0 disables
  double top_p = 1.0;        // 1 disables
  double min_p = 0.0;        // 0 disables
  uint64_t seed = 0;
  GLM_HOST_DEVICE bool greedy() const { return temperature <= 0.0; }
};

// One row of a sampling batch: how to choose, and the counter that keys the
// row's random draw (a generation's stream and its token index).
struct SamplingRequest {
  SamplingParams params;
  uint64_t sequence = 0;
  uint64_t step = 0;
};

// The 64-bit finaliser of SplitMix64 (Steele, Lea, Flood 2014): integer-only,
// so host and device compute the same bits.
GLM_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A uniform number in [0, 1) determined by (seed, sequence, step): 53 random
// bits scaled by 2^-53, which is exact in double on any IEEE machine.
GLM_HOST_DEVICE inline double counter_uniform(uint64_t seed, uint64_t sequence, uint64_t step) {
  const uint64_t bits = splitmix64(splitmix64(splitmix64(seed) ^ sequence) ^ step);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Throws a clear error for parameters outside their ranges (negative top-k,
// top-p or min-p outside [0, 1], a temperature that is not a finite number)
// or a row too long for the integer masses.
void check_sampling_request(const SamplingRequest& request, int64_t vocab);

// Index of the largest logit (the first one on ties, as torch.argmax).
int32_t argmax(std::span<const float> logits);

// The chosen token id for one row of logits: the reference implementation of
// the rule in backend/sampling_rule.h (sorting, then transformers' warpers
// literally). Logits must not be NaN.
int32_t sample_token(std::span<const float> logits, const SamplingRequest& request);
inline int32_t sample_token(std::span<const float> logits, const SamplingParams& params, uint64_t sequence,
                            uint64_t step) {
  return sample_token(logits, SamplingRequest{params, sequence, step});
}

}  // namespace glm
