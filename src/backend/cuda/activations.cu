// Quantizing activation rows to int8 per 32 values, for the dp4a GEMV and
// expert kernels on 4- and 8-bit affine weights (weight_formats.cuh,
// block_row_dots_int8): x ~ scale * q with scale = max |x| / 127 over the 32
// values, q = round(x / scale). The exact f32 sum of the 32 values is kept
// too (an affine weight's bias multiplies it), and what quantizing lost of
// it: the kernels centre the weights' integers (see block_row_dots_int8).
// For FP8 weights the fast mode scales each 32 values into [-1, 1] and keeps
// them as f16 instead (block_row_dots_half).
//
// The arithmetic is prepare_group (prepared_activations.cuh), shared with
// the producers that write these forms beside their own output; the
// launchers here first look for such a prepared form.
#include <algorithm>

#include "backend/cuda/prepared_activations.cuh"

namespace glm::cuda {
namespace {

constexpr int kGroupsPerBlock = 8;  // a warp per 32 values

__global__ void __launch_bounds__(kGroupsPerBlock * 32)
    prepare_activations_kernel(const PreparedOutput out, const float* __restrict__ x, int64_t groups) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t group = blockIdx.x * static_cast<int64_t>(kGroupsPerBlock) + threadIdx.x / 32;
  if (group >= groups) return;  // uniform over the warp
  const float value[1] = {x[group * 32 + threadIdx.x % 32]};
  prepare_group<1>(out, group, value);
}

// Memory for one form of x [n, cols] (not yet written): the consumer's own
// in the scratch, a producer's from the prepared-form ring (whose buffers
// outlive the model's per-layer scratch rewind). One block either way,
// carved into 256-byte aligned pieces.
PreparedOutput allocate_form(Context& ctx, ActivationKind kind, int64_t n, int64_t cols, bool for_producer) {
  const auto piece = [](int64_t bytes) { return (static_cast<size_t>(bytes) + 255) & ~size_t{255}; };
  const int64_t groups = n * cols / 32;
  const size_t values_bytes = piece(n * cols * (kind == ActivationKind::Half ? 2 : 1));
  const size_t group_bytes = piece(groups * 4);
  const int group_arrays = kind == ActivationKind::Half ? 1 : 3;  // scales (+ sums, rounding)
  const size_t bytes = values_bytes + group_arrays * group_bytes;
  char* block = static_cast<char*>(for_producer ? ctx.prepared_form_bytes(bytes) : ctx.scratch_bytes(bytes));
  PreparedOutput out;
  out.kind = kind;
  out.scales = reinterpret_cast<float*>(block + values_bytes);
  if (kind == ActivationKind::Half) {
    out.half_values = reinterpret_cast<__half*>(block);
  } else {
    out.int8_values = reinterpret_cast<int8_t*>(block);
    out.sums = reinterpret_cast<float*>(block + values_bytes + group_bytes);
    out.rounding = reinterpret_cast<float*>(block + values_bytes + 2 * group_bytes);
  }
  return out;
}

// The form GEMVs of this input width last asked for (None: none yet).
ActivationKind& wanted_kind(Context& ctx, int64_t cols) {
  for (auto& [width, wanted] : ctx.activation_kind_by_cols)
    if (width == cols) return wanted;
  return ctx.activation_kind_by_cols.emplace_back(cols, ActivationKind::None).second;
}

// The form of kind `kind` of x: prepared by x's producer, else made here.
PreparedOutput form_of(Context& ctx, const float* x, int64_t n, int64_t cols, ActivationKind kind) {
  GLM_CHECK(cols % 32 == 0, "internal error: quantized activations need rows of a multiple of 32 values, not ", cols);
  wanted_kind(ctx, cols) = kind;  // prepare_activations' guess for this width
  for (const Context::Prepared& p : ctx.prepared_activations)
    if (p.source == x && p.rows == n && p.cols == cols && p.form.kind == kind) {
      ++ctx.prepared_uses;
      return p.form;
    }
  const PreparedOutput out = allocate_form(ctx, kind, n, cols, false);
  const int64_t groups = n * cols / 32;
  if (groups > 0)
    launch(ctx, prepare_activations_kernel, dim3(blocks_for(groups, kGroupsPerBlock)), dim3(kGroupsPerBlock * 32), 0,
           out, x, groups);
  return out;
}

}  // namespace

HalfActivations scale_activations_to_half(Context& ctx, const float* x, int64_t n, int64_t cols) {
  const PreparedOutput form = form_of(ctx, x, n, cols, ActivationKind::Half);
  return HalfActivations{form.half_values, form.scales, cols};
}

Int8Activations quantize_activations(Context& ctx, const float* x, int64_t n, int64_t cols) {
  const PreparedOutput form = form_of(ctx, x, n, cols, ActivationKind::Int8);
  return Int8Activations{form.int8_values, form.scales, form.sums, form.rounding, cols};
}

PreparedOutput prepare_activations(Context& ctx, const float* x, int64_t n, int64_t cols) {
  if (!ctx.int8_activations || n <= 0 || n > kMaxPreparedRows || cols % 32 != 0) return {};
  const ActivationKind kind = wanted_kind(ctx, cols);
  if (kind == ActivationKind::None) return {};
  const PreparedOutput out = allocate_form(ctx, kind, n, cols, true);
  ctx.forget_prepared_activations(x, sizeof(float) * static_cast<size_t>(n * cols));
  ctx.prepared_activations.push_back({x, n, cols, out});
  return out;
}

}  // namespace glm::cuda
