// Fast CPU projections (out = x W^T + b): SIMD kernels for AVX2 and AVX-512
// chosen at run time, threaded over output rows with OpenMP. cpu::linear asks
// these first and falls back to the reference loop when none applies.
//
// Which weights have a fast kernel:
//   Float F32, BF16, F16                        (AVX2+FMA+F16C, AVX-512F)
//   Affine 4- and 8-bit, groups multiple of 32  (same; other bit widths and
//                                                FP8 run the reference)
//
// Activations. Every kernel accumulates in f32. Three modes (and FastPrompts):
//   Exact: activations stay f32; weights are widened or
//     dequantized (scale * q + bias) to f32 in registers and FMA'd. Agrees
//     with the reference to rounding (~1e-6 relative).
//   Fast (the default): activations are rounded to bf16 for BF16 weights
//     (VDPBF16PS, needs AVX512_BF16) and quantized to int8 with one absmax
//     scale per weight group for affine weights (VPDPBUSD with AVX512_VNNI;
//     for 4-bit weights VPMADDUBSW on AVX2 otherwise, with the same
//     results), at every batch size. About 3e-3 (bf16) and 7e-3 (int8)
//     relative L2 error on random data; twice (bf16) to four times (int8)
//     the arithmetic rate of FMA. Why it is the default: prompts are bound
//     by arithmetic, and with f32 activations a bf16 prompt runs on FMA at
//     half VDPBF16PS's rate, below llama.cpp, which rounds activations to
//     bf16 for BF16 weights as it quantizes them to 8 bits for Q4_0/Q8_0
//     (2-layer bf16 Air, 512-token prompt: ~310 -> ~550 tok/s); a 4-bit
//     GEMV with f32 activations is bound by unpacking nibbles on each core,
//     the VPDPBUSD one by memory. The quality cost is small (mean KL on the
//     bundled bf16 model's whole held-out text: bf16 activations 0.0007
//     nats; 4-bit g64 weights 0.0469 -> 0.0473 with int8 activations;
//     docs/benchmarks.md; tests/quant checks 256 tokens), and a token's bits
//     still do not depend on the batch it is in. The tests compare with f32
//     references at 1e-5, so they run Exact
//     (tests/common/exact_cpu_activations.cpp).
//   Int8 (the default before Fast): affine 4/8-bit weights take int8
//     activations as in Fast (the same kernels, at every batch size); float
//     weights stay exact.
//   Other weights, or a CPU without the instructions, run Exact in Fast and
//   Int8 modes.
//
// Determinism: a token's outputs are computed by the same instruction
// sequence whatever n_tokens, the thread count or the tile a token falls in
// (one accumulator per (row, token), summed over columns in a fixed order,
// reduced by a fixed tree), so a token alone and in a ragged batch get
// bit-identical results in a given mode. Mode FastPrompts (Fast only when
// the step has >= fast_min_tokens tokens; bf16 weights then take packed
// panels, or for calls under packed_min_tokens tokens the tokens-in-lanes
// kernel, both in another summation order than Fast's, the same as each
// other) gives up that property on purpose: a token's bits depend on
// whether its step was a prompt.
#pragma once

#include <cstdint>

#include "core/weight.h"

namespace glm::cpu::kernels {

enum class Isa { Reference, Avx2, Avx512 };
enum class Activations { Exact, Fast, FastPrompts, Int8 };

struct Options {
  Isa isa = Isa::Reference;                    // clamped to what the CPU supports
  Activations activations = Activations::Fast;
  int64_t fast_min_tokens = 32;                // FastPrompts threshold: tokens of the step
  // FastPrompts, bf16 weights: calls of at least this many tokens (or more
  // than 64) run the packed-panel kernel (avx512::bf16_packed_rows), smaller
  // ones the tokens-in-lanes kernel (bf16_lanes_rows); the same bits. The
  // lanes kernel is the faster up to its limit of 64 tokens.
  int64_t packed_min_tokens = 65;
};

// The best ISA this CPU (and build) supports.
Isa supported_isa();
const char* isa_name(Isa isa);
// The GLM_CPU_ACTIVATIONS value of a mode ("exact", "int8", ...).
const char* activations_name(Activations activations);
// Process-wide options, initialised on first use from the environment:
//   GLM_CPU_ISA=reference|avx2|avx512         (default: the best supported)
//   GLM_CPU_ACTIVATIONS=exact|fast|fast-prompts|int8 (default: fast)
// Tests and benchmarks may change them between calls (not during one).
Options& options();

// The kernel the current options pick for this weight and batch size, e.g.
// "avx512 bf16-dot", "avx2 exact", or nullptr when the reference would run.
const char* kernel_name(const Weight& weight, int64_t n_tokens);

// out [n_tokens, out_features] = x [n_tokens, in_features] W^T (+ bias).
// Returns false, touching nothing, when no fast kernel applies.
// step_tokens: the tokens of the whole step when this call takes only a
// share of them (an expert's), so that FastPrompts' threshold counts the
// step, not the share; 0 means n_tokens.
bool linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias,
            int64_t step_tokens = 0);

// Scales and biases laid out for the one-token int8 kernel
// (WeightFormat::block_scale_pairs): how many uint32 this weight takes, 0
// when that kernel (AVX512_VNNI, fast (default) or int8 activations, 16-bit scales
// and biases of one type) would not run for it under the current options;
// and filling them (out 64-byte aligned). With them the kernel skips a
// transpose per block of 16 rows, 11% of its work at 4 bits and group 64.
int64_t block_scale_pairs_count(const Weight& weight);
void fill_block_scale_pairs(const Weight& weight, uint32_t* out);

// One projection of a linear_many call: out [n_tokens, weight->dim(0)] =
// x [n_tokens, weight->dim(1)] W^T (+ bias).
struct LinearJob {
  float* out = nullptr;
  const float* x = nullptr;
  int64_t n_tokens = 0;
  const Weight* weight = nullptr;
  const Weight* bias = nullptr;  // or null
  int64_t step_tokens = 0;       // as in linear(): the step's tokens when more than n_tokens
};

// Several independent projections in one parallel region, each with the
// bits kernels::linear gives it alone. Jobs that read the same x (same
// pointer, token count, width and activation format) share one preparation
// of it (int8 quantization, bf16 rounding), and the rows of all jobs are
// split into even contiguous ranges over the threads: a decode step's
// experts (the gate and up projections of every expert, then every down
// projection) fork and join the team twice instead of three times per
// expert, and quantize the token once instead of twice per expert. Returns
// false, touching nothing, unless every job has a fast kernel.
bool linear_many(const LinearJob* jobs, int64_t count);

}  // namespace glm::cpu::kernels
