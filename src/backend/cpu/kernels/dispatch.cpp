// Chooses and runs a projection kernel: reads the CPU's features and the
// GLM_CPU_* options once, describes the weight to the kernels as plain
// pointers, prepares fast-mode activations (bf16 or int8 + scales) once per
// call into reused per-thread buffers, and splits output rows evenly over
// the OpenMP threads. Nothing is allocated per call once the buffers have
// grown to the largest batch.
#include <omp.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernel_args.h"
#include "backend/cpu/kernels/kernels.h"

namespace glm::cpu::kernels {
namespace {

struct CpuFeatures {
  Isa isa = Isa::Reference;
  bool bf16 = false;  // AVX512_BF16
  bool vnni = false;  // AVX512_VNNI
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    // F16C and AVX512_BF16 by CPUID: clang 14's __builtin_cpu_supports
    // knows neither name.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (has_avx512 && avx512::compiled()) {
      f.isa = Isa::Avx512;
      f.bf16 = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5));  // leaf 7.1 EAX bit 5
      f.vnni = __builtin_cpu_supports("avx512vnni");
    } else if (has_avx2 && avx2::compiled()) {
      f.isa = Isa::Avx2;
    }
#endif
    return f;
  }();
  return features;
}

Options options_from_environment() {
  Options o;
  o.isa = supported_isa();
  if (const char* isa = std::getenv("GLM_CPU_ISA")) {
    const std::string value = isa;
    if (value == "reference") o.isa = Isa::Reference;
    else if (value == "avx2") o.isa = Isa::Avx2;
    else if (value == "avx512") o.isa = Isa::Avx512;
    else fail("GLM_CPU_ISA=", value, ": expected reference, avx2 or avx512");
  }
  if (const char* mode = std::getenv("GLM_CPU_ACTIVATIONS")) {
    const std::string value = mode;
    if (value == "exact") o.activations = Activations::Exact;
    else if (value == "fast") o.activations = Activations::Fast;
    else if (value == "fast-prompts") o.activations = Activations::FastPrompts;
    else if (value == "int8") o.activations = Activations::Int8;
    else fail("GLM_CPU_ACTIVATIONS=", value, ": expected exact, fast, fast-prompts or int8");
  }
  return o;
}

bool scale_type_of(DType dtype, ScaleType* out) {
  switch (dtype) {
    case DType::F32: *out = ScaleType::F32; return true;
    case DType::BF16: *out = ScaleType::BF16; return true;
    case DType::F16: *out = ScaleType::F16; return true;
    default: return false;
  }
}

// Fills the weight half of `a`; false when no kernel handles this weight.
bool describe_weight(const Weight& weight, LinearArgs& a) {
  if (weight.shape.size() != 2 || weight.view.rank() != 2 || weight.placement.kind != Placement::Kind::Host)
    return false;
  const WeightFormat& f = weight.format;
  a.w = static_cast<const uint8_t*>(weight.view.data);
  a.w_stride = weight.view.row_stride * static_cast<int64_t>(dtype_size(weight.view.dtype));
  if (f.kind == WeightFormat::Kind::Float) {
    switch (weight.view.dtype) {
      case DType::F32: a.kind = WeightKind::F32; return true;
      case DType::BF16: a.kind = WeightKind::BF16; return true;
      case DType::F16: a.kind = WeightKind::F16; return true;
      default: return false;
    }
  }
  if (f.kind != WeightFormat::Kind::Affine || (f.bits != 4 && f.bits != 8) || f.group_size <= 0 ||
      f.group_size % 32 != 0 || weight.dim(1) % f.group_size != 0 || weight.dim(1) / f.group_size > kMaxGroups || weight.view.dtype != DType::U32 ||
      f.scales.empty() || f.biases.empty() || f.scales.rank() != 2 || f.biases.rank() != 2 ||
      !scale_type_of(f.scales.dtype, &a.scale_type) || !scale_type_of(f.biases.dtype, &a.bias_type))
    return false;
  a.kind = f.bits == 4 ? WeightKind::Affine4 : WeightKind::Affine8;
  a.group = f.group_size;
  a.scales = f.scales.data;
  a.biases = f.biases.data;
  a.scale_stride = f.scales.row_stride;
  a.bias_stride = f.biases.row_stride;
  return true;
}

// Int8: VPDPBUSD (AVX512_VNNI), affine 4/8-bit. Int8Avx2: VPMADDUBSW,
// affine 4-bit, for CPUs without VNNI (or GLM_CPU_ISA=avx2); same bits.
enum class Path { Exact, Bf16, Int8, Int8Avx2 };

Path choose_path(const Options& o, const LinearArgs& a, int64_t n_tokens) {
  const bool int8_only = o.activations == Activations::Int8;  // affine weights only
  const bool fast = int8_only || o.activations == Activations::Fast ||
                    (o.activations == Activations::FastPrompts && n_tokens >= o.fast_min_tokens);
  if (!fast || o.isa == Isa::Reference) return Path::Exact;
  const CpuFeatures& cpu = cpu_features();
  const bool int8_group = a.group == 32 || a.group == 64 || a.group == 128;
  if (o.isa == Isa::Avx512) {
    if (a.kind == WeightKind::BF16 && cpu.bf16 && !int8_only) return Path::Bf16;
    if ((a.kind == WeightKind::Affine4 || a.kind == WeightKind::Affine8) && cpu.vnni && int8_group) return Path::Int8;
  }
  if (a.kind == WeightKind::Affine4 && int8_group) return Path::Int8Avx2;  // AVX2, or AVX-512 without VNNI
  return Path::Exact;
}

// Grow-only 64-byte-aligned storage, one per calling thread: activations a
// call prepares for its worker threads.
class Buffer {
 public:
  template <class T>
  T* get(size_t count) {
    const size_t bytes = count * sizeof(T) + 64;
    if (storage_.size() < bytes) storage_.resize(bytes);
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.data());
    return reinterpret_cast<T*>((base + 63) & ~uintptr_t{63});
  }

 private:
  std::vector<uint8_t> storage_;
};

struct CallBuffers {
  Buffer bias, activations, scales, sums, scratch;
};

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;
// Threads split rows in units of this many (the kernels' row tiles: 4 rows,
// or blocks of 16 for avx512::int8_rows, 8 for avx2::int8_rows).
constexpr int64_t kRowUnit = 4;
constexpr int64_t kInt8RowUnit = 16;
constexpr int64_t kInt8Avx2RowUnit = 8;

}  // namespace

Isa supported_isa() { return cpu_features().isa; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Reference: return "reference";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Options& options() {
  static Options o = options_from_environment();
  // Never run instructions the CPU lacks, whatever was asked.
  if (static_cast<int>(o.isa) > static_cast<int>(supported_isa())) o.isa = supported_isa();
  return o;
}

const char* kernel_name(const Weight& weight, int64_t n_tokens) {
  const Options& o = options();
  LinearArgs a;
  if (o.isa == Isa::Reference || !describe_weight(weight, a)) return nullptr;
  switch (choose_path(o, a, n_tokens)) {
    case Path::Bf16: return "avx512 bf16-dot";
    case Path::Int8: return "avx512 int8-vnni";
    case Path::Int8Avx2: return "avx2 int8-maddubs";
    case Path::Exact: return o.isa == Isa::Avx512 ? "avx512 exact" : "avx2 exact";
  }
  return nullptr;
}

bool linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias) {
  const Options& o = options();
  if (o.isa == Isa::Reference || n_tokens <= 0) return false;
  LinearArgs a;
  if (!describe_weight(weight, a)) return false;
  if (bias && (bias->format.kind != WeightFormat::Kind::Float || !dtype_is_float(bias->view.dtype))) return false;
  a.x = x;
  a.n_tokens = n_tokens;
  a.in = weight.dim(1);
  a.out = out;
  a.out_features = weight.dim(0);
  const int64_t in = a.in;

  thread_local CallBuffers buffers;
  if (bias) {
    float* b = buffers.bias.get<float>(static_cast<size_t>(a.out_features));
    load_row_f32(bias->view, 0, b);
    a.bias = b;
  }

  const Path path = choose_path(o, a, n_tokens);
  const bool affine = a.kind == WeightKind::Affine4 || a.kind == WeightKind::Affine8;
  const bool exact_prepared = path == Path::Exact && o.isa == Isa::Avx512 && affine;
  RowsKernel kernel = o.isa == Isa::Avx512 ? avx512::exact_rows : avx2::exact_rows;
  if (exact_prepared) {
    a.xp = buffers.activations.get<float>(static_cast<size_t>(n_tokens * in));
    a.xgs = buffers.sums.get<float>(static_cast<size_t>(n_tokens * (in / a.group)));
  } else if (path == Path::Bf16) {
    kernel = avx512::bf16_rows;
    a.xb_stride = bf16_stride(in);
    a.xb = buffers.activations.get<uint16_t>(static_cast<size_t>(n_tokens * a.xb_stride));
  } else if (path == Path::Int8 || path == Path::Int8Avx2) {
    kernel = path == Path::Int8 ? avx512::int8_rows : avx2::int8_rows;
    a.xq_stride = int8_stride(in);
    a.xq = buffers.activations.get<int8_t>(static_cast<size_t>(n_tokens * a.xq_stride));
    a.xscale = buffers.scales.get<float>(static_cast<size_t>(n_tokens * (in / a.group)));
    a.xsum = buffers.sums.get<float>(static_cast<size_t>(n_tokens * (in / a.group)));
  }

  const int64_t work = n_tokens * in * a.out_features;
  const int threads = work < kMinParallelWork ? 1 : omp_get_max_threads();
  const bool int8 = path == Path::Int8 || path == Path::Int8Avx2;
  const int64_t row_unit = path == Path::Int8 ? kInt8RowUnit : path == Path::Int8Avx2 ? kInt8Avx2RowUnit : kRowUnit;
  const int64_t units = (a.out_features + row_unit - 1) / row_unit;
  uint8_t* scratch = nullptr;
  const int64_t scratch_each = int8 ? (int8_scratch_bytes(in, a.group) + 63) / 64 * 64 : 0;
  if (int8) scratch = buffers.scratch.get<uint8_t>(static_cast<size_t>(threads * scratch_each));
#pragma omp parallel num_threads(threads)
  {
    if (exact_prepared) {
      const int64_t groups = in / a.group;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tokens; ++t)
        avx512::prepare_exact(x + t * in, in, a.group, weight.format.bits, const_cast<float*>(a.xp) + t * in,
                              const_cast<float*>(a.xgs) + t * groups);
    } else if (path == Path::Bf16) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tokens; ++t)
        avx512::prepare_bf16(x + t * in, in, const_cast<uint16_t*>(a.xb) + t * a.xb_stride);
    } else if (path == Path::Int8) {
      const int64_t groups = in / a.group;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tokens; ++t)
        avx512::prepare_int8(x + t * in, in, a.group, weight.format.bits, const_cast<int8_t*>(a.xq) + t * a.xq_stride,
                             const_cast<float*>(a.xscale) + t * groups, const_cast<float*>(a.xsum) + t * groups);
    } else if (path == Path::Int8Avx2) {
      const int64_t groups = in / a.group;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tokens; ++t)
        avx2::prepare_int8(x + t * in, in, a.group, const_cast<int8_t*>(a.xq) + t * a.xq_stride,
                           const_cast<float*>(a.xscale) + t * groups, const_cast<float*>(a.xsum) + t * groups);
    }
    // Even contiguous row ranges (whole tiles); each output is computed by
    // one thread in a fixed order, so the thread count changes no bits.
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = std::min(a.out_features, units * id / team * row_unit);
    const int64_t end = std::min(a.out_features, units * (id + 1) / team * row_unit);
    LinearArgs mine = a;
    if (scratch) mine.scratch = scratch + id * scratch_each;
    if (begin < end) kernel(mine, begin, end);
  }
  return true;
}

}  // namespace glm::cpu::kernels
