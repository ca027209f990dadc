// Register-only loops measuring the CPU's arithmetic peaks (peak.h). Each
// loop keeps 12 independent accumulator chains, enough to cover the
// instruction latency on current cores, and an empty asm statement keeps the
// compiler from hoisting the work out of the loop. Functions are compiled
// for their ISA by target attributes and called only where the CPU has it.
#include "backend/cpu/peak.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <chrono>

namespace glm::cpu {
namespace {

constexpr int kChains = 12;
constexpr long kIterations = 20000000;

#define GLM_PEAK_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx512f,fma"), noinline)) float fma512_loop(long iterations) {
#define GLM_PEAK_DECLARE(i) __m512 a##i = _mm512_set1_ps(i * 1e-3f);
  GLM_PEAK_CHAINS(GLM_PEAK_DECLARE)
  __m512 b = _mm512_set1_ps(0.5f), c = _mm512_set1_ps(0.25f);
  for (long it = 0; it < iterations; ++it) {
#define GLM_PEAK_FMA(i) a##i = _mm512_fmadd_ps(a##i, b, c);
    GLM_PEAK_CHAINS(GLM_PEAK_FMA)
    __asm__("" : "+v"(b));
  }
  __m512 sum = _mm512_setzero_ps();
#define GLM_PEAK_SUM(i) sum = _mm512_add_ps(sum, a##i);
  GLM_PEAK_CHAINS(GLM_PEAK_SUM)
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"), noinline)) float fma256_loop(long iterations) {
#define GLM_PEAK_DECLARE_Y(i) __m256 a##i = _mm256_set1_ps(i * 1e-3f);
  GLM_PEAK_CHAINS(GLM_PEAK_DECLARE_Y)
  __m256 b = _mm256_set1_ps(0.5f), c = _mm256_set1_ps(0.25f);
  for (long it = 0; it < iterations; ++it) {
#define GLM_PEAK_FMA_Y(i) a##i = _mm256_fmadd_ps(a##i, b, c);
    GLM_PEAK_CHAINS(GLM_PEAK_FMA_Y)
    __asm__("" : "+x"(b));
  }
  __m256 sum = _mm256_setzero_ps();
#define GLM_PEAK_SUM_Y(i) sum = _mm256_add_ps(sum, a##i);
  GLM_PEAK_CHAINS(GLM_PEAK_SUM_Y)
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

__attribute__((target("avx512f,avx512bf16"), noinline)) float bf16_loop(long iterations) {
  GLM_PEAK_CHAINS(GLM_PEAK_DECLARE)
  __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f00);
  for (long it = 0; it < iterations; ++it) {
#define GLM_PEAK_DP(i) a##i = _mm512_dpbf16_ps(a##i, b, b);
    GLM_PEAK_CHAINS(GLM_PEAK_DP)
    __asm__("" : "+v"(b));
  }
  __m512 sum = _mm512_setzero_ps();
  GLM_PEAK_CHAINS(GLM_PEAK_SUM)
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx512f,avx512vnni"), noinline)) float vnni_loop(long iterations) {
#define GLM_PEAK_DECLARE_I(i) __m512i a##i = _mm512_set1_epi32(i);
  GLM_PEAK_CHAINS(GLM_PEAK_DECLARE_I)
  __m512i b = _mm512_set1_epi8(1);
  for (long it = 0; it < iterations; ++it) {
#define GLM_PEAK_VNNI(i) a##i = _mm512_dpbusd_epi32(a##i, b, b);
    GLM_PEAK_CHAINS(GLM_PEAK_VNNI)
    __asm__("" : "+v"(b));
  }
  __m512i sum = _mm512_setzero_si512();
#define GLM_PEAK_SUM_I(i) sum = _mm512_add_epi32(sum, a##i);
  GLM_PEAK_CHAINS(GLM_PEAK_SUM_I)
  return static_cast<float>(_mm512_reduce_add_epi32(sum));
}

// 10 chains, not 12: a chain holds its sum and a product in flight, and
// with 12 (+ b and the ones) GCC spilled sums to the stack every step, which
// put a store-to-load round trip on each chain and measured ~0.6 of the
// instruction pair's rate (session 26). A step is 7 cycles of latency, so 10
// chains still keep both multiply pipes busy.
#define GLM_PEAK_CHAINS_M(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define GLM_PEAK_COUNT(i) +1
constexpr int kMaddubsChains = 0 GLM_PEAK_CHAINS_M(GLM_PEAK_COUNT);
__attribute__((target("avx2"), noinline)) float maddubs_loop(long iterations) {
#define GLM_PEAK_DECLARE_M(i) __m256i a##i = _mm256_set1_epi32(i);
  GLM_PEAK_CHAINS_M(GLM_PEAK_DECLARE_M)
  __m256i b = _mm256_set1_epi8(1);
  const __m256i ones = _mm256_set1_epi16(1);
  for (long it = 0; it < iterations; ++it) {
  // Each chain multiplies its own sum's bytes: with a shared operand pair the
  // compiler would form one product for all the chains and time the adds.
#define GLM_PEAK_MADDUBS(i) a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(_mm256_maddubs_epi16(b, a##i), ones));
    GLM_PEAK_CHAINS_M(GLM_PEAK_MADDUBS)
    __asm__("" : "+x"(b));
  }
  __m256i sum = _mm256_setzero_si256();
#define GLM_PEAK_SUM_M(i) sum = _mm256_add_epi32(sum, a##i);
  GLM_PEAK_CHAINS_M(GLM_PEAK_SUM_M)
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  int64_t total = 0;
  for (int32_t lane : lanes) total += lane;
  return static_cast<float>(total);
}

volatile float sink;  // keeps the loops' results alive

// Operations per second (in G) of every thread running `loop` (`chains`
// instructions an iteration), best of `repetitions`.
double rate(float (*loop)(long), double operations_per_instruction, int repetitions, int chains = kChains) {
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    float total = 0.0f;
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : total)
    total += loop(kIterations);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    sink = total;
  }
  return omp_get_max_threads() * static_cast<double>(kIterations) * chains * operations_per_instruction / best / 1e9;
}

}  // namespace

CpuPeaks measure_cpu_peaks(int repetitions) {
  CpuPeaks peaks;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    peaks.fma_isa = "AVX-512";
    peaks.fma_gflops = rate(fma512_loop, 32, repetitions);
    if (__builtin_cpu_supports("avx512bf16")) peaks.bf16_gflops = rate(bf16_loop, 64, repetitions);
    if (__builtin_cpu_supports("avx512vnni")) peaks.vnni_gops = rate(vnni_loop, 128, repetitions);
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    peaks.fma_isa = "AVX2";
    peaks.fma_gflops = rate(fma256_loop, 16, repetitions);
  }
  // Measured without VNNI only, where the int8 kernels use it.
  if (peaks.vnni_gops == 0 && __builtin_cpu_supports("avx2")) peaks.maddubs_gops = rate(maddubs_loop, 64, repetitions, kMaddubsChains);
  return peaks;
}

}  // namespace glm::cpu
