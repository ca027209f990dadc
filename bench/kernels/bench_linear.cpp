// Micro-benchmark of the CPU projection kernels against this machine's
// limits: GEMV (decode, 1 token) in GB/s of weight bytes vs a read-bandwidth
// kernel on the same threads, and GEMM (a 512-token prompt) in GFLOP/s vs the
// peak rate of the instruction used (FMA, VDPBF16PS, VPDPBUSD), each peak
// measured here by a register-only loop. Not built by default:
//
//   cmake --build build-simd --target glm_backend
//   g++ -O2 -std=gnu++20 -fopenmp -Isrc bench/kernels/bench_linear.cpp \
//       build-simd/libglm_backend.a build-simd/libglm_core.a -o build-simd/bench_linear
//   OMP_NUM_THREADS=2 build-simd/bench_linear [--quick] [--decode]
//
// --decode runs only the GEMV rows: from memory on all threads, and on one
// core with the weight in L2 (what the core can compute, with memory out of
// the way: a kernel far above its share of the read bandwidth there is
// memory-bound from DRAM, one near it is core-bound).
//
// GLM_CPU_ISA / GLM_CPU_ACTIVATIONS are honoured for the rows that do not set
// the mode themselves. --gemm runs only the GEMM rows, --tokens 32,512 at
// those token counts (default 512), --kind bf16 only that weight format;
// --compare-bf16 (with --tokens) only times fast's and fast-prompts' bf16
// kernels against each other, in turns; --compare-float the AVX2 float
// kernels (column-strided, lanes, panels of two and one chains). Every other number is the best of several repetitions (the
// machine may be shared; decode from memory: the 90th percentile of calls).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <utility>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/peak.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernel_args.h"  // --compare-float calls the AVX2 float kernels directly
#include "backend/cpu/kernels/kernels.h"

namespace {

using namespace glm;
using Clock = std::chrono::steady_clock;

double seconds_of(const std::function<void()>& body, int repetitions) {
  double best = 1e30;
  for (int i = 0; i < repetitions; ++i) {
    const auto start = Clock::now();
    body();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count());
  }
  return best;
}

// ---- machine limits ----

volatile float sink;
float sink_total;  // atomically updated (a volatile cannot be)

// One sequential stream, software-prefetched 2 KB ahead (as the kernels
// prefetch their next rows): the best this machine reads. AVX2, which every
// CPU the kernels support has (the vector width does not change a read rate).
__attribute__((target("avx2"), noinline)) float read_sum(const float* data, size_t count) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 32 <= count; i += 32) {
    __builtin_prefetch(data + i + 512, 0, 2);
    a0 = _mm256_add_ps(a0, _mm256_load_ps(data + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(data + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(data + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(data + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

// Read bandwidth of all threads, each summing its part of a buffer far
// larger than the caches as `streams` interleaved sequential streams (a
// GEMV tile reads 4 weight rows at once; one stream per core leaves the
// memory system under-used).
__attribute__((target("avx2"), noinline)) float read_streams(const float* data, size_t count, int streams) {
  const size_t each = count / streams / 64 * 64;
  __m256 acc[8];
  for (int s = 0; s < 8; ++s) acc[s] = _mm256_setzero_ps();
  for (size_t i = 0; i < each; i += 16)
    for (int s = 0; s < streams; ++s) {
      acc[s] = _mm256_add_ps(acc[s], _mm256_load_ps(data + s * each + i));
      acc[s] = _mm256_add_ps(acc[s], _mm256_load_ps(data + s * each + i + 8));
    }
  __m256 total = acc[0];
  for (int s = 1; s < 8; ++s) total = _mm256_add_ps(total, acc[s]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, total);
  float sum = 0;
  for (float lane : lanes) sum += lane;
  return sum;
}

// The read-bandwidth kernels' buffer: 512 MiB, far larger than the caches.
struct ReadBuffer {
  size_t count = size_t{128} << 20;
  float* data = nullptr;
  ReadBuffer() {
    data = static_cast<float*>(std::aligned_alloc(64, count * sizeof(float)));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; ++i) data[i] = 1.0f;
  }
  ~ReadBuffer() { std::free(data); }
};

// One pass of all threads over floats [first, first + count) of the buffer
// (default: all of it), each over its own part.
double read_seconds(const ReadBuffer& buffer, int streams, size_t first = 0, size_t count = 0) {
  if (count == 0) count = buffer.count;
  const auto start = Clock::now();
#pragma omp parallel
  {
    const size_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const size_t begin = first + count * id / team / 64 * 64, end = first + count * (id + 1) / team / 64 * 64;
    const float value = streams == 1 ? read_sum(buffer.data + begin, end - begin)
                                     : read_streams(buffer.data + begin, end - begin, streams);
#pragma omp atomic
    sink_total += value;
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The value below which `fraction` of `rates` lie.
double percentile(std::vector<double> rates, double fraction) {
  std::sort(rates.begin(), rates.end());
  return rates[static_cast<size_t>(fraction * (rates.size() - 1))];
}

// Best GB/s of the 1-stream and 4-stream read kernels.
double read_bandwidth(const ReadBuffer& buffer, int repetitions) {
  double best = 1e30;
  for (int i = 0; i < repetitions; ++i)
    for (int streams : {1, 4}) best = std::min(best, read_seconds(buffer, streams));
  return buffer.count * sizeof(float) / best / 1e9;
}

// The instruction peaks come from backend/cpu/peak.h, as in `glm4moe bench`.

// ---- weights ----

struct Owned {
  std::vector<uint8_t> values, scales, biases;
  std::vector<uint32_t> pairs;  // block_scale_pairs, 64 bytes aligned inside
  Weight weight;
};

Owned make_weight(const std::string& kind, int64_t out, int64_t in, unsigned seed) {
  Owned o;
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  Weight& w = o.weight;
  w.name = kind;
  w.shape = {out, in};
  if (kind == "f32" || kind == "bf16" || kind == "f16") {
    const DType dtype = kind == "f32" ? DType::F32 : kind == "bf16" ? DType::BF16 : DType::F16;
    o.values.resize(static_cast<size_t>(out * in) * dtype_size(dtype));
    if (dtype == DType::F32) {
      std::normal_distribution<float> normal;
      for (size_t i = 0; i < o.values.size(); i += 4) {
        const float v = normal(generator);
        std::memcpy(&o.values[i], &v, 4);
      }
    } else {
      for (size_t i = 0; i < o.values.size(); i += 2) {  // small normal numbers in either format
        o.values[i] = static_cast<uint8_t>(byte(generator));
        o.values[i + 1] = static_cast<uint8_t>(0x38 + byte(generator) % 8);
      }
    }
    w.view = TensorView(o.values.data(), dtype, {out, in});
    w.format.dtype = dtype;
    return o;
  }
  const int bits = kind == "int4" ? 4 : 8;
  const int64_t group = 64, words = in * bits / 32;
  o.values.resize(static_cast<size_t>(out * words * 4));
  for (auto& b : o.values) b = static_cast<uint8_t>(byte(generator));
  o.scales.resize(static_cast<size_t>(out * (in / group) * 2));
  o.biases.resize(o.scales.size());
  for (size_t i = 0; i < o.scales.size(); i += 2) {
    const uint16_t s = f32_to_bf16(0.01f), b = f32_to_bf16(-0.01f * (1 << (bits - 1)));
    std::memcpy(&o.scales[i], &s, 2);
    std::memcpy(&o.biases[i], &b, 2);
  }
  w.view = TensorView(o.values.data(), DType::U32, {out, words});
  w.format.kind = WeightFormat::Kind::Affine;
  w.format.dtype = DType::U32;
  w.format.bits = bits;
  w.format.group_size = group;
  w.format.scales = TensorView(o.scales.data(), DType::BF16, {out, in / group});
  w.format.biases = TensorView(o.biases.data(), DType::BF16, {out, in / group});
  // The scale pairs the CPU backend lays out at load (CpuBackend::place)
  // where the int8 decode kernels read them, so the rows here time the
  // kernels the model runs.
  if (const int64_t count = cpu::kernels::block_scale_pairs_count(w); count > 0) {
    o.pairs.resize(static_cast<size_t>(count) + 16);
    uint32_t* aligned = o.pairs.data() + (64 - reinterpret_cast<uintptr_t>(o.pairs.data()) % 64) % 64 / 4;
    cpu::kernels::fill_block_scale_pairs(w, aligned);
    w.format.block_scale_pairs = TensorView(aligned, DType::U32, {count});
  }
  return o;
}

// Decode: one token through enough copies of the weight to defeat the L3
// (as 8 experts per token do), in GB/s of weight bytes. Each call is timed
// alone, in turns with a read of as many bytes by the read kernel (a
// different part of its buffer each time), and each side reports its 90th
// percentile rate: on a machine shared with other work a call that lost a
// core to another process is an outlier, and such calls slow kernel and
// read alike. Returns {kernel GB/s, read GB/s}.
std::pair<double, double> gemv_gbps(const std::string& kind, int64_t out, int64_t in, const ReadBuffer& buffer,
                                    int repetitions) {
  const Owned probe = make_weight(kind, out, in, 1);
  const size_t bytes = probe.weight.nbytes();
  const int copies = static_cast<int>(std::max<size_t>(1, (size_t{256} << 20) / bytes));
  std::vector<Owned> weights;
  for (int i = 0; i < copies; ++i) weights.push_back(make_weight(kind, out, in, 2 + i));
  std::vector<float> x(static_cast<size_t>(in), 0.5f), y(static_cast<size_t>(out));
  const size_t floats = std::min(bytes / sizeof(float) / 64 * 64, buffer.count);
  std::vector<double> kernel, read;
  size_t first = 0;
  for (int i = 0; i < repetitions; ++i)
    for (const Owned& w : weights) {
      kernel.push_back(bytes / seconds_of([&] { cpu::linear(y.data(), x.data(), 1, w.weight, nullptr); }, 1) / 1e9);
      if (first + floats > buffer.count) first = 0;
      const int streams = read.size() % 2 ? 4 : 1;  // both read kernels, on fresh bytes each time
      read.push_back(floats * sizeof(float) / read_seconds(buffer, streams, first, floats) / 1e9);
      first += floats;
    }
  return {percentile(kernel, 0.9), percentile(read, 0.9)};
}

// Decode on one thread with the weight (~400 KB) in L2: GB/s of weight
// bytes, the best of many short calls (each shorter than a scheduler time
// slice, so a shared machine still yields the quiet number).
double gemv_core_gbps(const std::string& kind, int64_t in, int repetitions) {
  const int64_t out = (int64_t{400} << 10) / (in * (kind == "int4" ? 1 : 2) / 2);
  const Owned w = make_weight(kind, out - out % 16, in, 5);
  std::vector<float> x(static_cast<size_t>(in)), y(static_cast<size_t>(out));
  std::mt19937 generator(3);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(generator);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double s = seconds_of([&] { cpu::linear(y.data(), x.data(), 1, w.weight, nullptr); }, 200 * repetitions);
  omp_set_num_threads(threads);
  return w.weight.nbytes() / s / 1e9;
}

// Prompt: n_tokens through one weight, in GFLOP/s (2 per multiply-add).
double gemm_gflops(const std::string& kind, int64_t out, int64_t in, int64_t n_tokens, int repetitions) {
  const Owned w = make_weight(kind, out, in, 7);
  std::vector<float> x(static_cast<size_t>(n_tokens * in)), y(static_cast<size_t>(n_tokens * out));
  std::mt19937 generator(3);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(generator);
  const double s = seconds_of([&] { cpu::linear(y.data(), x.data(), n_tokens, w.weight, nullptr); }, repetitions);
  return 2.0 * n_tokens * out * in / s / 1e9;
}

struct Shape {
  const char* name;
  int64_t out, in;
};
// GLM-4.5-Air shapes: attention's widest projection and one routed expert.
const Shape kShapes[] = {{"q_proj 12288x4096", 12288, 4096}, {"expert 1408x4096", 1408, 4096}};

// 8 copies of an Air expert in bf16 (weights from memory, as a prompt's
// experts are), a call's x and its output.
struct ExpertCalls {
  static constexpr int kCopies = 8;
  const Shape& expert = kShapes[1];
  std::vector<Owned> weights;
  std::vector<float> x, y;
  ExpertCalls(int64_t n_tokens, unsigned weight_seed, unsigned x_seed)
      : x(static_cast<size_t>(n_tokens * kShapes[1].in)), y(static_cast<size_t>(n_tokens * kShapes[1].out)) {
    for (int i = 0; i < kCopies; ++i) weights.push_back(make_weight("bf16", expert.out, expert.in, weight_seed + i));
    std::mt19937 generator(x_seed);
    std::normal_distribution<float> normal;
    for (float& v : x) v = normal(generator);
  }
  // The median GFLOP/s of each of `count` variants over `rounds` rounds, the
  // variants in turns: prepare(i) sets variant i up (untimed), then
  // run(i, weight) calls it on each copy.
  template <class Prepare, class Run>
  std::vector<double> median_rates(int64_t n_tokens, int count, int rounds, Prepare&& prepare, Run&& run) {
    std::vector<std::vector<double>> rates(static_cast<size_t>(count));
    for (int round = 0; round < rounds; ++round)
      for (int i = 0; i < count; ++i) {
        prepare(i);
        const auto start = Clock::now();
        for (const Owned& w : weights) run(i, w);
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        rates[i].push_back(2.0 * n_tokens * expert.out * expert.in * kCopies / s / 1e9);
      }
    std::vector<double> medians;
    for (auto& r : rates) {
      std::sort(r.begin(), r.end());
      medians.push_back(r[r.size() / 2]);
    }
    return medians;
  }
};

// bf16 prompts: fast's bf16_rows against fast-prompts' packed panels and
// its tokens-in-lanes kernel (up to 64 tokens), on ExpertCalls' 8 copies,
// the kernels in turns call after call; median GFLOP/s of each over
// `rounds` rounds of the 8 copies. Calls are timed as shares of a 512-token
// step.
void compare_bf16_kernels(int64_t n_tokens, int rounds) {
  ExpertCalls calls(n_tokens, 40, 3);
  auto& options = cpu::kernels::options();
  const cpu::kernels::Options saved = options;
  struct Variant {
    cpu::kernels::Activations mode;
    int64_t packed_min_tokens;
  };
  const Variant variants[3] = {{cpu::kernels::Activations::Fast, 64},
                               {cpu::kernels::Activations::FastPrompts, 1},
                               {cpu::kernels::Activations::FastPrompts, int64_t{1} << 40}};
  std::string names[3];
  auto prepare = [&](int i) {
    options.activations = variants[i].mode;
    options.packed_min_tokens = variants[i].packed_min_tokens;
    options.fast_min_tokens = 1;  // for the name: the call is a share of a prompt
    names[i] = cpu::kernels::kernel_name(calls.weights[0].weight, n_tokens);
    options.fast_min_tokens = saved.fast_min_tokens;
  };
  const std::vector<double> rates = calls.median_rates(n_tokens, 3, rounds, prepare, [&](int, const Owned& w) {
    cpu::kernels::linear(calls.y.data(), calls.x.data(), n_tokens, w.weight, nullptr, 512);
  });
  options = saved;
  std::printf("  %4lld tokens:", static_cast<long long>(n_tokens));
  for (int i = 0; i < 3; ++i) std::printf(" %s %6.1f%s", names[i].c_str(), rates[i], i < 2 ? "," : "");
  std::printf(" GFLOP/s (medians of %d rounds)\n", rounds);
}

// Float weights on AVX2: the kernels that give float weights their bits,
// called directly on ExpertCalls' 8 copies, in turns, rows split over the
// threads in blocks of 16: the column-strided exact kernel (exact_rows;
// float weights took it until session 22), rows in lanes
// (float_lanes_rows), two-chain panels (float_panel_rows) and one-chain
// panels (float_panel_rows_one_chain). Medians of `rounds`.
void compare_float_kernels(int64_t n_tokens, int rounds) {
  namespace k = cpu::kernels;
  if (k::supported_isa() < k::Isa::Avx2) return;
  ExpertCalls calls(n_tokens, 50, 4);
  const Shape& expert = calls.expert;
  const int threads = omp_get_max_threads();
  const size_t scratch_each = static_cast<size_t>(k::avx2::avx2_panel_bytes(n_tokens) + 64);
  std::vector<uint8_t> scratch(scratch_each * static_cast<size_t>(threads) + 64);
  using Kernel = void (*)(const k::LinearArgs&, int64_t, int64_t);
  const Kernel kernels[4] = {k::avx2::exact_rows, k::avx2::float_lanes_rows, k::avx2::float_panel_rows,
                             k::avx2::float_panel_rows_one_chain};
  const char* names[4] = {"column-strided", "lanes", "panels", "panels-one-chain"};
  // The panels read x in tiles, which the dispatcher prepares once per call
  // (outside this timing: x is the same in every call here).
  std::vector<float> x_tiles(calls.x.size());
  for (int64_t t = 0; t < n_tokens; ++t)
    k::avx2::pack_panel_token(calls.x.data() + t * expert.in, t, n_tokens, expert.in, x_tiles.data());
  const std::vector<double> rates = calls.median_rates(n_tokens, 4, rounds, [](int) {}, [&](int i, const Owned& w) {
    k::LinearArgs a;
    a.kind = k::WeightKind::BF16;
    a.w = static_cast<const uint8_t*>(w.weight.view.data);
    a.w_stride = expert.in * 2;
    a.in = expert.in;
    a.out_features = expert.out;
    a.n_tokens = n_tokens;
    a.x = calls.x.data();
    a.x_tiles = x_tiles.data();
    a.out = calls.y.data();
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      const int64_t blocks = (expert.out + 15) / 16, per = (blocks + threads - 1) / threads;
      k::LinearArgs mine = a;
      const uintptr_t base = reinterpret_cast<uintptr_t>(scratch.data()) + t * scratch_each;
      mine.scratch = reinterpret_cast<uint8_t*>((base + 63) & ~uintptr_t{63});
      kernels[i](mine, std::min<int64_t>(expert.out, t * per * 16), std::min<int64_t>(expert.out, (t + 1) * per * 16));
    }
  });
  std::printf("  %4lld tokens:", static_cast<long long>(n_tokens));
  for (int i = 0; i < 4; ++i)
    std::printf(" %s %6.1f (%.1f GB/s)%s", names[i], rates[i], rates[i] / n_tokens, i < 3 ? "," : "");
  std::printf(" GFLOP/s, medians of %d rounds\n", rounds);
}

// Decode: GLM-4.5-Air GEMVs on one core from L2, then on every thread from memory.
void run_gemv_rows(const ReadBuffer& buffer, int reps) {
  auto& options = cpu::kernels::options();
  const cpu::kernels::Activations initial_mode = options.activations;
  std::printf("\nGEMV, 1 token, one core, weight in L2 (q_proj width 4096)\n");
  for (auto mode : {cpu::kernels::Activations::Exact, cpu::kernels::Activations::Fast})  // fast: int8 for these
    for (const char* kind : {"int8", "int4"}) {
      options.activations = mode;
      const char* kernel = cpu::kernels::kernel_name(make_weight(kind, 16, 64, 0).weight, 1);
      if (mode != cpu::kernels::Activations::Exact && (!kernel || std::string(kernel).find("exact") != std::string::npos))
        continue;
      std::printf("  %-5s %-18s %6.1f GB/s\n", kind, kernel ? kernel : "reference", gemv_core_gbps(kind, 4096, reps));
    }
  options.activations = initial_mode;

  for (auto mode : {cpu::kernels::Activations::Exact, cpu::kernels::Activations::Fast}) {
    const bool fast = mode == cpu::kernels::Activations::Fast;
    std::printf("\nGEMV, 1 token (%s activations)\n", fast ? "fast: bf16 or int8" : "exact");
    options.activations = mode;
    for (const Shape& shape : kShapes)
      for (const char* kind : {"f32", "bf16", "f16", "int8", "int4"}) {
        const char* kernel = cpu::kernels::kernel_name(make_weight(kind, 8, 64, 0).weight, 1);
        if (fast && (!kernel || std::string(kernel).find("exact") != std::string::npos)) continue;
        const auto [gbps, read] = gemv_gbps(kind, shape.out, shape.in, buffer, reps);
        std::printf("  %-18s %-5s %-18s %6.1f GB/s  %3.0f%% of read bandwidth (%.1f GB/s)\n", shape.name, kind,
                    kernel ? kernel : "reference", gbps, 100 * gbps / read, read);
      }
  }
  options.activations = initial_mode;
}

// Prompts: n_tokens through each shape and format, in every mode with its
// own kernel, against the peak of the instruction that kernel uses.
void run_gemm_rows(int64_t n_tokens, const std::string& only_kind, bool quick) {
  auto& options = cpu::kernels::options();
  const cpu::kernels::Activations initial_mode = options.activations;
  std::printf("\nGEMM, %lld tokens\n", static_cast<long long>(n_tokens));
  for (const Shape& shape : kShapes)
    for (const char* kind : {"f32", "bf16", "int8", "int4"})
      for (auto mode : {cpu::kernels::Activations::Exact, cpu::kernels::Activations::Fast,
                        cpu::kernels::Activations::FastPrompts}) {
        if (!only_kind.empty() && only_kind != kind) continue;
        options.activations = cpu::kernels::Activations::Fast;
        const char* fast_kernel = cpu::kernels::kernel_name(make_weight(kind, 8, 64, 0).weight, n_tokens);
        options.activations = mode;
        const char* kernel = cpu::kernels::kernel_name(make_weight(kind, 8, 64, 0).weight, n_tokens);
        if (mode != cpu::kernels::Activations::Exact && (!kernel || std::string(kernel).find("exact") != std::string::npos))
          continue;  // no fast kernel for this format
        if (mode == cpu::kernels::Activations::FastPrompts && std::string(kernel) == fast_kernel)
          continue;  // the same kernel as fast (fast-prompts differs for bf16 calls of 64+ tokens)
        const std::string name = kernel ? kernel : "reference";
        const bool dot_bf16 = name.find("bf16-") != std::string::npos;
        const bool dot_int8 = name.find("int8") != std::string::npos;
        const bool maddubs = name.find("maddubs") != std::string::npos;  // AVX2: VPMADDUBSW + VPMADDWD
        double gflops = 0.0, limit = 0.0;
        for (int i = 0; i < (quick ? 2 : 3); ++i) {  // in turns with the peak loop (a shared machine)
          gflops = std::max(gflops, gemm_gflops(kind, shape.out, shape.in, n_tokens, 1));
          const glm::cpu::CpuPeaks now = glm::cpu::measure_cpu_peaks(1);
          limit = std::max(limit, dot_bf16 ? now.bf16_gflops
                                  : maddubs ? now.maddubs_gops
                                  : dot_int8 ? now.vnni_gops
                                             : now.fma_gflops);
        }
        std::printf("  %-18s %-5s %-18s %7.1f GFLOP/s  %3.0f%% of the peak of %s (%.0f)\n", shape.name, kind,
                    name.c_str(), gflops, 100 * gflops / limit,
                    dot_bf16 ? "VDPBF16PS" : maddubs ? "VPMADDUBSW" : dot_int8 ? "VPDPBUSD" : "FMA", limit);
      }
  options.activations = initial_mode;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, decode_only = false, gemm_only = false, compare_bf16 = false, compare_float = false;
  std::vector<int64_t> gemm_tokens = {512};
  std::string only_kind;  // --kind bf16: GEMM rows of that weight format only
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    quick = quick || arg == "--quick";
    decode_only = decode_only || arg == "--decode";
    gemm_only = gemm_only || arg == "--gemm";
    compare_bf16 = compare_bf16 || arg == "--compare-bf16";
    compare_float = compare_float || arg == "--compare-float";
    if (arg == "--kind" && i + 1 < argc) only_kind = argv[++i];
    if (arg == "--tokens" && i + 1 < argc) {  // e.g. 16,32,512: an expert's share of a prompt is ~32
      gemm_tokens.clear();
      for (std::string list = argv[++i]; !list.empty();) {
        const size_t comma = list.find(',');
        gemm_tokens.push_back(std::stoll(list.substr(0, comma)));
        list = comma == std::string::npos ? "" : list.substr(comma + 1);
      }
    }
  }
  const int reps = quick ? 3 : 7;
  std::printf("threads %d, ISA %s\n", omp_get_max_threads(), cpu::kernels::isa_name(cpu::kernels::options().isa));
  if (compare_bf16) {  // two kernels against each other: no yardsticks needed
    std::printf("\nbf16 experts 1408x4096, 8 copies, fast and fast-prompts kernels in turns\n");
    for (const int64_t n_tokens : gemm_tokens) compare_bf16_kernels(n_tokens, quick ? 5 : 11);
    return 0;
  }
  if (compare_float) {
    std::printf("\nbf16 experts 1408x4096, 8 copies, the AVX2 float kernels in turns\n");
    for (const int64_t n_tokens : gemm_tokens) compare_float_kernels(n_tokens, quick ? 5 : 11);
    return 0;
  }

  const ReadBuffer buffer;
  const double bandwidth = read_bandwidth(buffer, reps);
  const glm::cpu::CpuPeaks peaks = glm::cpu::measure_cpu_peaks(reps);
  std::printf("read bandwidth %.1f GB/s; peaks: FMA %.0f GFLOP/s, VDPBF16PS %.0f GFLOP/s, VPDPBUSD %.0f GOP/s, "
              "VPMADDUBSW %.0f GOP/s\n",
              bandwidth, peaks.fma_gflops, peaks.bf16_gflops, peaks.vnni_gops, peaks.maddubs_gops);
  if (!gemm_only) run_gemv_rows(buffer, reps);
  if (decode_only) return 0;
  for (const int64_t n_tokens : gemm_tokens) run_gemm_rows(n_tokens, only_kind, quick);
  return 0;
}
