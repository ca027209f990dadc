// The exact arithmetic of sampling (backend/sampling.h), shared by the CPU
// reference (backend/sampling.cpp) and the CUDA kernel (backend/cuda/sampling.cu)
// so both choose the same token bit for bit. Three decisions make that possible:
//
// - Weights come from an exp written here with +, * and exact power-of-two
//   scalings only (library expf differs by an ulp between libm and CUDA),
//   every operation rounded once: the device uses the _rn intrinsics, which
//   are never fused into an FMA, and the host files that include this header
//   are compiled with -ffp-contract=off (CMakeLists.txt).
// - Probabilities are integers: a token's mass is floor(w * 2^44), w =
//   exp((x - x_max) / T) in (0, 1]. Sums of integers are the same in any order,
//   so a GPU reduction and the CPU's sorted loop agree on every cumulative
//   mass, top-p cut and draw. (Tokens with w < 2^-44 get mass 0 and are never
//   drawn; at 151k tokens they hold at most 1e-8 of the probability.)
// - Order is by logit, then by token id on ties, on the logits themselves
//   (not on rounded weights), so "the k-th best token" has one answer.
//
// The rule, for a row x[0, V) (transformers' warpers in their order):
//   greedy: the first index of the largest logit.
//   top-k (0 < k < V): keep the k best and every token tied with the k-th.
//   top-p (p < 1): over the top-k survivors, total mass Q and
//     limit = trunc(Q * (1 - p)) (in double); walking from the worst token up,
//     drop tokens while the cumulative mass is <= limit; the best always stays.
//   min-p (m > 0): drop tokens whose weight w (f32) is below m (w is already
//     relative to the best token, whose weight is 1).
//   draw: u = counter_uniform(seed, sequence, step); over the survivors,
//     total mass K, target = min(trunc(u * K), K - 1) (in double); the token is
//     the first, in order, whose cumulative mass exceeds the target.
// Only the kept/dropped decisions use weights; they never need normalising.
#pragma once

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "backend/sampling.h"
#include "core/error.h"

namespace glm {

// A SamplingRequest in the form the kernels read: validated, with the
// per-row constants computed once on the host.
struct SamplingRule {
  bool greedy = true;
  float inverse_temperature = 1.0f;  // f32(1 / temperature); +inf for temperatures below f32's range
  int64_t top_k = 0;                 // 0: off (also when >= the vocabulary)
  bool top_p_on = false;
  double one_minus_top_p = 0.0;      // 1 - top_p in double
  float min_p = 0.0f;                // 0: off
  uint64_t seed = 0, sequence = 0, step = 0;
};

inline SamplingRule make_sampling_rule(const SamplingRequest& request, int64_t vocab) {
  const SamplingParams& params = request.params;
  GLM_CHECK(!std::isnan(params.temperature) && params.temperature < INFINITY, "temperature ", params.temperature,
            " is not a finite number");
  GLM_CHECK(params.top_k >= 0, "top-k must not be negative (got ", params.top_k, ")");
  GLM_CHECK(params.top_p >= 0.0 && params.top_p <= 1.0, "top-p must lie in [0, 1] (got ", params.top_p, ")");
  GLM_CHECK(params.min_p >= 0.0 && params.min_p <= 1.0, "min-p must lie in [0, 1] (got ", params.min_p, ")");
  // Masses of at most 2^44 each must sum below 2^63.
  GLM_CHECK(vocab > 0 && vocab <= (int64_t{1} << 18), "sampling supports 1 to 262144 logits per row, not ", vocab);
  SamplingRule rule;
  rule.greedy = params.greedy();
  const double inverse_temperature = rule.greedy ? 1.0 : 1.0 / params.temperature;
  rule.inverse_temperature = inverse_temperature > FLT_MAX ? INFINITY : static_cast<float>(inverse_temperature);
  rule.top_k = params.top_k < vocab ? params.top_k : 0;
  rule.top_p_on = params.top_p < 1.0;
  rule.one_minus_top_p = 1.0 - params.top_p;
  rule.min_p = static_cast<float>(params.min_p);
  rule.seed = params.seed;
  rule.sequence = request.sequence;
  rule.step = request.step;
  return rule;
}

// Internal linkage: each file gets the copy compiled with its own flags, so
// the linker can never substitute one compiled with FMA contraction.
namespace {

constexpr int kMassBits = 44;

// Rounded-once IEEE operations (see the file comment).
GLM_HOST_DEVICE inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
GLM_HOST_DEVICE inline float sub_rn(float a, float b) { return add_rn(a, -b); }  // negation is exact
GLM_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
GLM_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
GLM_HOST_DEVICE inline uint32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  return std::bit_cast<uint32_t>(x);
#endif
}
GLM_HOST_DEVICE inline float bits_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}

// exp(y) for y <= 0 (-inf included), to about 1e-7 relative: y = n ln2 + r
// with |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 (Horner), times 2^n.
// Below -32 it returns 0: exp(-32) * 2^44 < 1, no mass either way.
GLM_HOST_DEVICE inline float exp_nonpositive(float y) {
  if (!(y > -32.0f)) return 0.0f;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (|t| < 2^22).
  const float n = sub_rn(add_rn(mul_rn(y, 1.44269504088896341f), 0x1.8p23f), 0x1.8p23f);
  // ln 2 in two parts; the first has few enough bits that n * part is exact.
  const float r = sub_rn(sub_rn(y, mul_rn(n, 0x1.62e4p-1f)), mul_rn(n, 0x1.7f7d1cp-20f));
  float p = 1.0f / 5040.0f;
  p = add_rn(mul_rn(p, r), 1.0f / 720.0f);
  p = add_rn(mul_rn(p, r), 1.0f / 120.0f);
  p = add_rn(mul_rn(p, r), 1.0f / 24.0f);
  p = add_rn(mul_rn(p, r), 1.0f / 6.0f);
  p = add_rn(mul_rn(p, r), 0.5f);
  p = add_rn(mul_rn(p, r), 1.0f);
  p = add_rn(mul_rn(p, r), 1.0f);
  const int exponent = static_cast<int>(n);  // in [-47, 0]: 2^n is a normal float
  return mul_rn(p, bits_float(static_cast<uint32_t>(exponent + 127) << 23));
}

// A token's weight exp((x - x_max) / T) in (0, 1]: exactly 1 for the best
// logit (and its ties), whatever the temperature.
GLM_HOST_DEVICE inline float sampling_weight(float x, float x_max, float inverse_temperature) {
  if (x == x_max) return 1.0f;
  return exp_nonpositive(mul_rn(sub_rn(x, x_max), inverse_temperature));
}

// The integer probability mass of a weight: floor(weight * 2^44).
GLM_HOST_DEVICE inline uint64_t mass_of_weight(float weight) {
  return static_cast<uint64_t>(mul_rn(weight, 0x1p44f));
}

// A token's integer probability mass.
GLM_HOST_DEVICE inline uint64_t sampling_mass(float x, float x_max, float inverse_temperature) {
  return mass_of_weight(sampling_weight(x, x_max, inverse_temperature));
}

// Of `total` mass (the top-k survivors), tokens ranked after the point where
// the mass ranked before them reaches the returned value are dropped by top-p;
// 0 keeps only the best token.
GLM_HOST_DEVICE inline uint64_t top_p_kept_mass(uint64_t total, const SamplingRule& rule) {
  const uint64_t limit = static_cast<uint64_t>(mul_rn(static_cast<double>(total), rule.one_minus_top_p));
  return limit >= total ? 0 : total - limit;
}

// The cumulative mass the draw must exceed, in [0, total).
GLM_HOST_DEVICE inline uint64_t draw_target(const SamplingRule& rule, uint64_t total) {
  const double u = counter_uniform(rule.seed, rule.sequence, rule.step);
  const uint64_t target = static_cast<uint64_t>(mul_rn(u, static_cast<double>(total)));
  return target < total ? target : total - 1;
}

// An unsigned key whose order is the order of the logits (-0 and +0 equal),
// for radix selection on the device.
GLM_HOST_DEVICE inline uint32_t order_key(float x) {
  const uint32_t bits = x == 0.0f ? 0u : float_bits(x);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}
GLM_HOST_DEVICE inline float key_value(uint32_t key) {
  return bits_float((key & 0x80000000u) ? key & 0x7fffffffu : ~key);
}

}  // namespace
}  // namespace glm
