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
#include <iterator>
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

constexpr Isa kIsas[] = {Isa::Reference, Isa::Avx2, Isa::Avx512};
constexpr Activations kModes[] = {Activations::Exact, Activations::Fast, Activations::FastPrompts, Activations::Int8};

Options options_from_environment() {
  Options o;
  o.isa = supported_isa();
  // Each value is the name isa_name / activations_name gives its setting.
  if (const char* isa = std::getenv("GLM_CPU_ISA")) {
    const auto* found = std::find_if(std::begin(kIsas), std::end(kIsas),
                                     [&](Isa candidate) { return std::strcmp(isa, isa_name(candidate)) == 0; });
    if (found == std::end(kIsas)) fail("GLM_CPU_ISA=", isa, ": expected reference, avx2 or avx512");
    o.isa = *found;
  }
  if (const char* mode = std::getenv("GLM_CPU_ACTIVATIONS")) {
    const auto* found = std::find_if(std::begin(kModes), std::end(kModes), [&](Activations candidate) {
      return std::strcmp(mode, activations_name(candidate)) == 0;
    });
    if (found == std::end(kModes)) fail("GLM_CPU_ACTIVATIONS=", mode, ": expected exact, fast, fast-prompts or int8");
    o.activations = *found;
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
  a.f32_activations = weight.f32_activations;
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
  if (!f.block_scale_pairs.empty()) a.block_pairs = static_cast<const uint32_t*>(f.block_scale_pairs.data);
  return true;
}

// Int8: VPDPBUSD (AVX512_VNNI), affine 4/8-bit. Int8Avx2: VPMADDUBSW,
// affine 4/8-bit, for CPUs without VNNI (or GLM_CPU_ISA=avx2); same bits.
// Bf16Packed / Bf16Lanes: bf16_packed_rows and, for calls of fewer tokens,
// bf16_lanes_rows (the same bits), in the prompt steps of fast-prompts.
// PanelAvx2 / LanesAvx2: avx2::float_panel_rows and, for calls of fewer
// tokens, avx2::float_lanes_rows (the same bits): float weights on AVX2, so
// a token's bits do not depend on its call. PanelOneChainAvx2: the panels
// with one chain per output, every call of fast-prompts' prompt steps (a
// token's bits then depend on whether its step was a prompt).
enum class Path { Exact, Bf16, Bf16Packed, Bf16Lanes, Int8, Int8Avx2, PanelAvx2, LanesAvx2, PanelOneChainAvx2 };

// step_tokens: the step's tokens (FastPrompts' threshold); a.n_tokens: the
// call's; a.in set (describe_weight leaves both to the caller).
Path choose_path(const Options& o, const LinearArgs& a, int64_t step_tokens) {
  const bool int8_only = o.activations == Activations::Int8;  // affine weights only
  const bool fast = !a.f32_activations &&
                    (int8_only || o.activations == Activations::Fast ||
                     (o.activations == Activations::FastPrompts && step_tokens >= o.fast_min_tokens));
  const bool float_weight = a.kind == WeightKind::F32 || a.kind == WeightKind::BF16 || a.kind == WeightKind::F16;
  if (o.isa == Isa::Avx2 && float_weight && a.in > 0) {  // f32 activations, every mode
    if (o.activations == Activations::FastPrompts && fast) return Path::PanelOneChainAvx2;
    return a.n_tokens >= avx2::kAvx2PanelMinTokens ? Path::PanelAvx2 : Path::LanesAvx2;
  }
  if (!fast || o.isa == Isa::Reference) return Path::Exact;
  const CpuFeatures& cpu = cpu_features();
  const bool int8_group = a.group == 32 || a.group == 64 || a.group == 128;
  if (o.isa == Isa::Avx512) {
    if (a.kind == WeightKind::BF16 && cpu.bf16 && !int8_only) {
      if (o.activations != Activations::FastPrompts || a.in == 0) return Path::Bf16;
      return a.n_tokens >= o.packed_min_tokens || a.n_tokens > kBf16LanesMaxTokens ? Path::Bf16Packed
                                                                                  : Path::Bf16Lanes;
    }
    if ((a.kind == WeightKind::Affine4 || a.kind == WeightKind::Affine8) && cpu.vnni && int8_group) return Path::Int8;
  }
  if ((a.kind == WeightKind::Affine4 || a.kind == WeightKind::Affine8) && int8_group)
    return Path::Int8Avx2;  // AVX2, or AVX-512 without VNNI
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
// or blocks of 16 for avx512::int8_rows, 8 for avx2::int8_rows, 48 for
// avx512::bf16_packed_rows, 24 for avx512::bf16_lanes_rows).
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

const char* activations_name(Activations activations) {
  switch (activations) {
    case Activations::Exact: return "exact";
    case Activations::Fast: return "fast";
    case Activations::FastPrompts: return "fast-prompts";
    case Activations::Int8: return "int8";
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
  a.n_tokens = n_tokens;
  a.in = weight.dim(1);
  switch (choose_path(o, a, n_tokens)) {
    case Path::Bf16: return "avx512 bf16-dot";
    case Path::Bf16Packed: return "avx512 bf16-packed";
    case Path::Bf16Lanes: return "avx512 bf16-lanes";
    case Path::Int8: return "avx512 int8-vnni";
    case Path::Int8Avx2: return "avx2 int8-maddubs";
    case Path::PanelAvx2: return "avx2 float-panels";
    case Path::LanesAvx2: return "avx2 float-lanes";
    case Path::PanelOneChainAvx2: return "avx2 float-panels-one-chain";
    case Path::Exact: return o.isa == Isa::Avx512 ? "avx512 exact" : "avx2 exact";
  }
  return nullptr;
}

namespace {

// One job of linear_many, described: its weight and kernel, which prepared
// activations it reads, and where its rows fall in the call's row units.
struct JobPlan {
  LinearArgs a;
  Path path = Path::Exact;
  RowsKernel kernel = nullptr;
  int64_t row_unit = kRowUnit;
  int64_t first_unit = 0, units = 0;  // [first_unit, first_unit + units) of the call's units
  int prep = -1;                      // index into the call's preparations, or -1 (x is read as it is)
};

// Activations prepared once for every job that reads them: the same x, token
// count, width and preparation (kind, group, bits). Gate and up of one
// input, or a decode step's experts fed the same token, share one.
struct Prep {
  const float* x = nullptr;
  int64_t n_tokens = 0, in = 0, group = 0;
  int bits = 0;
  Path path = Path::Exact;
  // Where its prepared activations live (the activation fields of LinearArgs).
  LinearArgs prepared;
  bool same_as(const Prep& o) const {
    return x == o.x && n_tokens == o.n_tokens && in == o.in && group == o.group && bits == o.bits && path == o.path;
  }
};

// Whether a job's x must be prepared, and how many elements of each buffer that takes.
bool needs_prep(Path path, Isa isa, WeightKind kind) {
  const bool affine = kind == WeightKind::Affine4 || kind == WeightKind::Affine8;
  const bool reads_x = path == Path::Exact || path == Path::LanesAvx2;
  return !reads_x || (isa == Isa::Avx512 && affine);
}

// avx2::int8_rows' prompt calls take tokens in tiles of this many (the
// last one shorter), from xq_tiles; 0 where the call reads xq's rows. The
// AVX-512 kernel's tiles of 8 read the rows: the same packing measured 0.99
// / 0.95 / 1.01 at prompts of 32 / 128 / 512 tokens on a 16-core Xeon
// (12-way L1), so it has none (session 24).
int64_t int8_tile_tokens(const Prep& p) {
  return p.path == Path::Int8Avx2 && p.n_tokens > avx2::int8_avx2_gemv_tokens(p.bits) ? avx2::kInt8Avx2TileTokens : 0;
}

// Token t's xq row (prepared) into its tile of xq_tiles: [in / 4][T][4 bytes]
// from the tile's first token t0 at xq_tiles + t0 * xq_stride.
void pack_int8_token(const Prep& p, int64_t t) {
  const LinearArgs& a = p.prepared;
  const int64_t tile_tokens = int8_tile_tokens(p), t0 = t / tile_tokens * tile_tokens;
  const int64_t size = std::min(tile_tokens, p.n_tokens - t0);
  const int8_t* row = a.xq + t * a.xq_stride;
  int8_t* out = const_cast<int8_t*>(a.xq_tiles) + t0 * a.xq_stride + 4 * (t - t0);
  for (int64_t quad = 0; quad < p.in / 4; ++quad) std::memcpy(out + 4 * quad * size, row + 4 * quad, 4);
}

// Token t of preparation p into its buffers.
void prepare_token(const Prep& p, int64_t t) {
  const LinearArgs& a = p.prepared;
  const int64_t groups = p.group > 0 ? p.in / p.group : 0;
  const float* x = p.x + t * p.in;
  switch (p.path) {
    case Path::Exact:
      avx512::prepare_exact(x, p.in, p.group, p.bits, const_cast<float*>(a.xp) + t * p.in,
                            const_cast<float*>(a.xgs) + t * groups);
      break;
    case Path::Bf16:
    case Path::Bf16Packed:
    case Path::Bf16Lanes:
      avx512::prepare_bf16(x, p.in, const_cast<uint16_t*>(a.xb) + t * a.xb_stride);
      break;
    case Path::Int8:
      avx512::prepare_int8(x, p.in, p.group, p.bits, const_cast<int8_t*>(a.xq) + t * a.xq_stride,
                           const_cast<float*>(a.xscale) + t * groups, const_cast<float*>(a.xsum) + t * groups);
      break;
    case Path::Int8Avx2:
      avx2::prepare_int8(x, p.in, p.group, p.bits == 4 && p.n_tokens <= avx2::int8_avx2_gemv_tokens(p.bits),
                         const_cast<int8_t*>(a.xq) + t * a.xq_stride,
                         const_cast<float*>(a.xscale) + t * groups, const_cast<float*>(a.xsum) + t * groups);
      break;
    case Path::PanelAvx2:
    case Path::PanelOneChainAvx2:
      avx2::pack_panel_token(x, t, p.n_tokens, p.in, const_cast<float*>(a.x_tiles));
      break;
    case Path::LanesAvx2:  // reads x as it is (needs_prep)
      break;
  }
  if (a.xq_tiles) pack_int8_token(p, t);
}

// Bytes of the activation buffer one token of p takes (elements of its type times their size).
int64_t activation_bytes(const Prep& p) {
  switch (p.path) {
    case Path::Exact:
    case Path::PanelAvx2:
    case Path::PanelOneChainAvx2: return p.in * int64_t{sizeof(float)};
    case Path::Bf16:
    case Path::Bf16Packed:
    case Path::Bf16Lanes: return bf16_stride(p.in) * int64_t{sizeof(uint16_t)};
    default: return (int8_tile_tokens(p) > 0 ? 2 : 1) * int8_stride(p.in);  // prompts: xq in rows, then in tiles
  }
}

}  // namespace

int64_t block_scale_pairs_count(const Weight& weight) {
  LinearArgs a;
  if (!describe_weight(weight, a)) return 0;
  a.n_tokens = 1;  // the one-token kernel's layout
  a.in = weight.dim(1);
  const Path path = choose_path(options(), a, 1);
  if ((path != Path::Int8 && path != Path::Int8Avx2) || a.scale_type != a.bias_type || a.scale_type == ScaleType::F32)
    return 0;
  return (weight.dim(0) + 15) / 16 * (weight.dim(1) / a.group) * 16;
}

void fill_block_scale_pairs(const Weight& weight, uint32_t* out) {
  LinearArgs a;
  GLM_CHECK(block_scale_pairs_count(weight) > 0 && describe_weight(weight, a),
            "internal error: no block scale pairs for ", weight.name);
  a.in = weight.dim(1);
  a.out_features = weight.dim(0);
  a.n_tokens = 1;
  if (choose_path(options(), a, 1) == Path::Int8) avx512::fill_block_scale_pairs(a, out);
  else avx2::fill_block_scale_pairs(a, out);
}

bool linear(float* out, const float* x, int64_t n_tokens, const Weight& weight, const Weight* bias,
            int64_t step_tokens) {
  const LinearJob job{out, x, n_tokens, &weight, bias, step_tokens};
  return linear_many(&job, 1);
}

bool linear_many(const LinearJob* jobs, int64_t count) {
  const Options& o = options();
  if (o.isa == Isa::Reference || count <= 0) return false;
  thread_local std::vector<JobPlan> plans;
  thread_local std::vector<Prep> preps;
  thread_local CallBuffers buffers;
  plans.resize(static_cast<size_t>(count));
  preps.clear();

  // Describe every job first: nothing is touched unless all have a kernel.
  int64_t units = 0, work = 0, bias_floats = 0, scratch_each = 0;
  for (int64_t j = 0; j < count; ++j) {
    const LinearJob& job = jobs[j];
    JobPlan& plan = plans[j];
    plan = JobPlan{};
    if (job.n_tokens <= 0 || !describe_weight(*job.weight, plan.a)) return false;
    if (job.bias && (job.bias->format.kind != WeightFormat::Kind::Float || !dtype_is_float(job.bias->view.dtype)))
      return false;
    LinearArgs& a = plan.a;
    a.x = job.x;
    a.n_tokens = job.n_tokens;
    a.in = job.weight->dim(1);
    a.out = job.out;
    a.out_features = job.weight->dim(0);
    plan.path = choose_path(o, a, std::max(job.n_tokens, job.step_tokens));
    switch (plan.path) {
      case Path::Exact: plan.kernel = o.isa == Isa::Avx512 ? avx512::exact_rows : avx2::exact_rows; break;
      case Path::Bf16: plan.kernel = avx512::bf16_rows; break;
      case Path::Bf16Packed: plan.kernel = avx512::bf16_packed_rows; plan.row_unit = kBf16PanelRows; break;
      case Path::Bf16Lanes: plan.kernel = avx512::bf16_lanes_rows; plan.row_unit = kBf16LanesRows; break;
      case Path::Int8: plan.kernel = avx512::int8_rows; plan.row_unit = kInt8RowUnit; break;
      case Path::Int8Avx2: plan.kernel = avx2::int8_rows; plan.row_unit = kInt8Avx2RowUnit; break;
      case Path::PanelAvx2: plan.kernel = avx2::float_panel_rows; plan.row_unit = avx2::kAvx2PanelRows; break;
      case Path::LanesAvx2: plan.kernel = avx2::float_lanes_rows; plan.row_unit = avx2::kAvx2LanesRowUnit; break;
      case Path::PanelOneChainAvx2:
        plan.kernel = avx2::float_panel_rows_one_chain;
        plan.row_unit = avx2::kAvx2PanelRows;
        break;
    }
    if (plan.path == Path::PanelAvx2 || plan.path == Path::PanelOneChainAvx2) scratch_each = std::max(scratch_each, (avx2::avx2_panel_bytes(a.n_tokens) + 63) / 64 * 64);
    if (plan.path == Path::Int8 || plan.path == Path::Int8Avx2)
      scratch_each = std::max(scratch_each, (int8_scratch_bytes(a.in, a.group) + 63) / 64 * 64);
    if (plan.path == Path::Bf16Packed) scratch_each = std::max(scratch_each, bf16_panel_bytes());
    if (plan.path == Path::Bf16Lanes) scratch_each = std::max(scratch_each, bf16_lanes_bytes(a.in, a.n_tokens));
    if (needs_prep(plan.path, o.isa, a.kind)) {
      Prep p;
      p.x = job.x;
      p.n_tokens = job.n_tokens;
      p.in = a.in;
      p.group = a.group;
      p.bits = job.weight->format.bits;
      p.path = plan.path;
      const auto same = std::find_if(preps.begin(), preps.end(), [&](const Prep& q) { return q.same_as(p); });
      plan.prep = static_cast<int>(same - preps.begin());
      if (same == preps.end()) preps.push_back(p);
    }
    plan.first_unit = units;
    plan.units = (a.out_features + plan.row_unit - 1) / plan.row_unit;
    units += plan.units;
    work += job.n_tokens * a.in * a.out_features;
    if (job.bias) bias_floats += a.out_features;
  }

  // One buffer of each kind for all preparations, carved at 64-byte steps.
  int64_t activation_total = 0, group_total = 0, tokens_total = 0;
  for (const Prep& p : preps) {
    activation_total += (p.n_tokens * activation_bytes(p) + 63) / 64 * 64;
    group_total += (p.n_tokens * (p.group > 0 ? p.in / p.group : 0) + 15) / 16 * 16;
    tokens_total += p.n_tokens;
  }
  uint8_t* activations = buffers.activations.get<uint8_t>(static_cast<size_t>(activation_total));
  float* scales = buffers.scales.get<float>(static_cast<size_t>(group_total));
  float* sums = buffers.sums.get<float>(static_cast<size_t>(group_total));
  for (Prep& p : preps) {
    LinearArgs& a = p.prepared;
    switch (p.path) {
      case Path::Exact:
        a.xp = reinterpret_cast<const float*>(activations);
        a.xgs = sums;
        break;
      case Path::Bf16:
      case Path::Bf16Packed:
      case Path::Bf16Lanes:
        a.xb_stride = bf16_stride(p.in);
        a.xb = reinterpret_cast<const uint16_t*>(activations);
        break;
      case Path::Int8:
      case Path::Int8Avx2:
        a.xq_stride = int8_stride(p.in);
        a.xq = reinterpret_cast<const int8_t*>(activations);
        if (int8_tile_tokens(p) > 0) a.xq_tiles = a.xq + p.n_tokens * a.xq_stride;
        a.xscale = scales;
        a.xsum = sums;
        break;
      case Path::PanelAvx2:
      case Path::PanelOneChainAvx2:
        a.x_tiles = reinterpret_cast<const float*>(activations);
        break;
      case Path::LanesAvx2:  // never prepared
        break;
    }
    activations += (p.n_tokens * activation_bytes(p) + 63) / 64 * 64;
    scales += (p.n_tokens * (p.group > 0 ? p.in / p.group : 0) + 15) / 16 * 16;
    sums += (p.n_tokens * (p.group > 0 ? p.in / p.group : 0) + 15) / 16 * 16;
  }
  float* biases = bias_floats > 0 ? buffers.bias.get<float>(static_cast<size_t>(bias_floats)) : nullptr;
  for (int64_t j = 0; j < count; ++j) {
    LinearArgs& a = plans[j].a;
    if (jobs[j].bias) {
      load_row_f32(jobs[j].bias->view, 0, biases);
      a.bias = biases;
      biases += a.out_features;
    }
    if (plans[j].prep < 0) continue;
    const LinearArgs& p = preps[static_cast<size_t>(plans[j].prep)].prepared;
    a.xp = p.xp;
    a.xgs = p.xgs;
    a.xb = p.xb;
    a.xb_stride = p.xb_stride;
    a.xq = p.xq;
    a.xq_stride = p.xq_stride;
    a.xscale = p.xscale;
    a.xsum = p.xsum;
    a.x_tiles = p.x_tiles;
    a.xq_tiles = p.xq_tiles;
  }

  const int threads = work < kMinParallelWork ? 1 : omp_get_max_threads();
  uint8_t* scratch = scratch_each > 0 ? buffers.scratch.get<uint8_t>(static_cast<size_t>(threads * scratch_each)) : nullptr;
  // The plans live in this thread's buffers: the team reads them through these.
  const JobPlan* plan_of = plans.data();
  const Prep* prep_of = preps.data();
#pragma omp parallel num_threads(threads)
  {
    // Every (preparation, token), split over the team; the loop's barrier
    // then releases the rows.
    if (tokens_total > 0) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < tokens_total; ++i) {
        int64_t t = i;
        const Prep* p = prep_of;
        while (t >= p->n_tokens) t -= (p++)->n_tokens;
        prepare_token(*p, t);
      }
    }
    // Even contiguous ranges of all jobs' row units (whole tiles); each
    // output is computed by one thread in a fixed order, so neither the
    // thread count nor the other jobs change its bits.
    const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = units * id / team, end = units * (id + 1) / team;
    for (int64_t j = 0; j < count; ++j) {
      const JobPlan& plan = plan_of[j];
      const int64_t from = std::max(begin, plan.first_unit) - plan.first_unit;
      const int64_t to = std::min(end, plan.first_unit + plan.units) - plan.first_unit;
      if (from >= to) continue;
      LinearArgs mine = plan.a;
      if (scratch) mine.scratch = scratch + id * scratch_each;
      plan.kernel(mine, from * plan.row_unit, std::min(plan.a.out_features, to * plan.row_unit));
    }
  }
  return true;
}

}  // namespace glm::cpu::kernels
