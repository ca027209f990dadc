// The arithmetic peaks of this CPU, measured: register-only loops of the
// instructions the prompt kernels are built on (FMA, VDPBF16PS, VPDPBUSD, and
// on CPUs without VNNI the VPMADDUBSW + VPMADDWD pair standing in for it),
// on every OpenMP thread at once. Benchmarks report prompt throughput as a
// fraction of these, measured in the same run (the development VM's rates
// move with its neighbours' load, so a stored figure would mislead).
#pragma once

namespace glm::cpu {

struct CpuPeaks {
  const char* fma_isa = "none";  // "AVX-512" or "AVX2"
  double fma_gflops = 0;         // f32 FMA: 2 flops per lane
  double bf16_gflops = 0;        // VDPBF16PS: 4 flops per f32 lane; 0 without AVX512_BF16
  double vnni_gops = 0;          // VPDPBUSD: 8 int ops per i32 lane; 0 without AVX512_VNNI
  // VPMADDUBSW + VPMADDWD + VPADDD on ymm, 64 int ops (32 byte products
  // summed into int32) per triple: the AVX2 int8 kernels' inner step;
  // 0 without AVX2.
  double maddubs_gops = 0;
};

// Best of `repetitions` runs of each loop (a shared machine: the best is the
// closest to what the hardware can do).
CpuPeaks measure_cpu_peaks(int repetitions = 3);

}  // namespace glm::cpu
