// The CUDA backend's internal interface: the execution context every op runs
// in (stream, cuBLAS handle, device scratch and host->device staging, owned by
// CudaBackend in cuda_backend.cu) and the launcher of each op family, one .cu
// file per family. Launchers take device pointers and do the host-side checks
// and uploads of their host inputs; they never synchronise with the host
// (except moe_experts on prompts, which reads the routing back to group tokens).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/common.cuh"
#include "backend/cuda/launch.cuh"

namespace glm::cuda {

// A weight matrix in device memory, as place() left it: [rows, cols] logical
// values (a 1-D weight is one row) in one of the formats of core/weight.h.
// Kernels read it through weight_formats.cuh; it is passed to them by value.
struct Matrix {
  const void* data = nullptr;  // F32/BF16/F16 values, U32 affine words or F8_E4M3 bytes; rows packed densely
  DType dtype = DType::F32;    // the stored element type
  int64_t rows = 0;
  int64_t cols = 0;
  WeightFormat::Kind kind = WeightFormat::Kind::Float;
  // Affine: bits and group size (group_shift = log2 of it, -1 when not a power
  // of 2); scales holds (scale, bias) pairs [rows, scales_stride groups, 2]
  // in BF16 or F32, interleaved by place(); biases is unused.
  // Fp8: scales [] (tensor), [rows] (channel) or [row blocks, scales_stride] (block).
  int bits = 0;
  int64_t group_size = 0;
  int group_shift = -1;
  const void* scales = nullptr;
  DType scales_dtype = DType::F32;
  int64_t scales_stride = 0;
  WeightFormat::Fp8Scale fp8_scale = WeightFormat::Fp8Scale::Channel;
  int64_t block_rows = 0;
  int64_t block_cols = 0;
  // Weight::f32_activations (the MoE router): its GEMVs keep f32 activations
  // in every mode, and its tensor-core products take x as two bf16 parts
  // (tensor_linear).
  bool f32_activations = false;
};

inline void append_signature(Signature& signature, const Matrix& m) {
  signature.add_all(m.data, m.dtype, m.rows, m.cols, m.kind, m.bits, m.group_size, m.group_shift, m.scales,
                    m.scales_dtype, m.scales_stride, m.fp8_scale, m.block_rows, m.block_cols, m.f32_activations);
}

// Activation rows as the GEMV and expert kernels read them: f32 as computed,
// or quantized to int8 per 32 values (quantize_activations) for the dp4a
// path of 4- and 8-bit affine weights. Row r starts at r * cols.
struct F32Activations {
  const float* data;  // [rows, cols]
  int64_t cols;
};
struct Int8Activations {
  const int8_t* values;  // [rows, cols]: round(x / scale), in [-127, 127]
  const float* scales;   // [rows, cols / 32]: max |x| / 127 of each 32 values
  const float* sums;     // [rows, cols / 32]: the exact f32 sum of each 32 values (for the affine biases)
  const float* rounding;  // [rows, cols / 32]: sum(x) - scale * sum(q), what quantizing lost of the sum
  int64_t cols;
};
// Activation rows for FP8 weights in the fast mode: each 32 values divided
// by their largest magnitude and rounded to f16 (so a 32-term f16 dot
// product with e4m3 weights, |w| <= 448, stays far from f16's range), with
// that magnitude kept in f32 (scale_activations_to_half).
struct HalfActivations {
  const __half* values;  // [rows, cols]: x / scale, |value| <= 1
  const float* scales;   // [rows, cols / 32]: max |x| of each 32 values (1 where all are 0)
  int64_t cols;
};
// Where a producer kernel (add_rms_norm, attention) writes the quantized form
// of its f32 output beside it, so the decode GEMVs that read that output next
// need no quantize or scale kernel of their own (2 us each, four a layer):
// `kind` says which form, None writes nothing. Filled by
// prepare_activations (activations.cu); the kernels call prepare_group
// (prepared_activations.cuh), which computes exactly what the standalone
// quantize_activations and scale_activations_to_half kernels compute.
enum class ActivationKind : uint8_t { None, Int8, Half };
struct PreparedOutput {
  ActivationKind kind = ActivationKind::None;
  int8_t* int8_values = nullptr;  // [rows, cols] (Int8)
  __half* half_values = nullptr;  // [rows, cols] (Half)
  float* scales = nullptr;        // [rows, cols / 32]
  float* sums = nullptr;          // [rows, cols / 32] (Int8)
  float* rounding = nullptr;      // [rows, cols / 32] (Int8)
};
inline void append_signature(Signature& signature, const PreparedOutput& p) {
  signature.add_all(p.kind, p.int8_values, p.half_values, p.scales, p.sums, p.rounding);
}

inline void append_signature(Signature& signature, const F32Activations& x) { signature.add_all(x.data, x.cols); }
inline void append_signature(Signature& signature, const HalfActivations& x) {
  signature.add_all(x.values, x.scales, x.cols);
}
inline void append_signature(Signature& signature, const Int8Activations& x) {
  signature.add_all(x.values, x.scales, x.sums, x.rounding, x.cols);
}

// Launchers put their work on the stream with launch(), memset_async() and
// copy_async() (launch.cuh), never with <<<>>> or cuda*Async directly, so a
// step can be deferred and replayed from a CUDA graph.
class Context : public Submitter {
 public:
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  int multiprocessors = 1;  // SMs of the device, for sizing grids
  // GLM_CUDA_ACTIVATIONS=int8 (the default) or f32: whether decode GEMVs and
  // experts on 4/8-bit affine weights quantize their f32 input per 32 values
  // and use dp4a (and on FP8 weights scale it per 32 values to f16 for
  // packed f16 products), or keep it f32 (exact).
  bool int8_activations = true;
  // GLM_CUDA_PROMPTS=tensor (default) or simt: whether prompt-sized products
  // and prompt attention run on tensor cores with bf16 operands
  // (gemm_tensor.cu, attention_prefill.cu) or keep f32 activations on the
  // SIMT kernels (the f32-exact mode the tests compare).
  bool tensor_core_prompts = true;
  // Whether those products issue Hopper's warpgroup MMA (wgmma) rather than
  // mma.sync: on sm_90 devices when this binary holds sm_90a code, unless
  // GLM_CUDA_WGMMA=0 (gemm_tensor.cu).
  bool wgmma_prompts = false;
  // Whether, on wgmma, products with 4/8-bit affine and FP8 (tensor or
  // channel scale) weights take the kernel that widens the weights straight
  // into wgmma's register operand (register_weights_kernel) rather than into
  // a bf16 tile in shared memory: yes unless GLM_CUDA_REGISTER_WEIGHTS=0.
  bool register_weight_prompts = false;
  // GLM_CUDA_SHORT_ATTENTION=1 (default) or 0: whether decode attention at
  // head_dim 128 with GQA groups of a multiple of 4 takes the kernel that
  // shares each key row over a warp (attention.cu, short_attention_kernel;
  // contexts past 256 positions in slices) or the split kernel.
  bool short_attention = true;
  // GLM_CUDA_FOLD_ROTARY=1 (default) or 0: whether a decode step's head
  // norm, rotary and KV write run inside short_attention_kernel (one launch a
  // layer fewer) when attention() is handed them as a RotaryFold.
  bool fold_rotary = true;
  // GLM_CUDA_SHORT_SLICE=N: the shortest slice, in positions, of a decode
  // context of up to 256 positions on short_attention_kernel (32; 0: such
  // contexts whole, one block a head group, unfolded; attention.cu,
  // short_slices).
  int64_t short_slice_min = 32;
  // GLM_CUDA_GATE_UP_PREPARES=1 (default) or 0: whether, at one token in the
  // fast mode, the experts' gate/up kernel (in blocks of 32 rows) writes the
  // SwiGLU output's f16/int8 form for the down kernel (moe.cu) instead of a
  // quantize kernel making it.
  bool gate_up_prepares = true;
  int64_t gate_up_preparing_launches = 0;  // (execution_summary)
  // GLM_CUDA_SHARED_EARLY=1 (default) or 0: whether, at one token, the
  // experts' gate/up kernel runs the shared expert's blocks without waiting
  // for the routing, while the router GEMV and the route kernel still run
  // (moe.cu, moe_gate_up_kernel). Only when the stream is exactly router
  // GEMV on x -> route -> gate/up on x (the ops recorded below), so x was
  // complete before the gate/up kernel could be scheduled.
  bool shared_early = true;
  int64_t shared_early_launches = 0;  // (execution_summary)
  int64_t submitted_ops = 0;          // stream work submitted so far (submit() counts)
  int64_t last_gemv_op = -1;          // submitted_ops just after the last row-block GEMV launch
  const float* last_gemv_input = nullptr;   // that GEMV's f32 input
  int64_t last_route_op = -1;               // submitted_ops just after the last route launch
  const float* route_gemv_input = nullptr;  // the input of the GEMV launched just before it, else null
  // GLM_CUDA_COMBINE_EARLY=1 (default) or 0: whether the decode experts'
  // combine kernel ranks each token's experts before waiting for the down
  // kernel (the routing was complete before it could start; moe.cu).
  bool combine_early = true;
  // GLM_CUDA_EXPERT_TILE_ROWS=32|64|128: the rows of a prompt's expert tiles
  // on tensor cores, forced for measuring (0, the default: chosen per call,
  // gemm_tensor.cu, tensor_expert_tile_rows).
  int expert_tile_rows = 0;

  // Activations a producer op prepared for the GEMVs that read its output
  // (PreparedOutput above): the consumers' quantize_activations and
  // scale_activations_to_half return them instead of launching a kernel.
  // An entry lives until the next op that may write device memory
  // (CudaBackend clears the list at every op except the GEMV and expert ops
  // that read it, which drop only entries their outputs overlap), a scratch
  // rewind that hands its source out again, or a reset. The forms themselves
  // live outside the scratch (prepared_form_bytes), so the layer-end norm's
  // form for the next layer's q/k/v survives the model's per-layer rewind.
  struct Prepared {
    const float* source;  // the f32 tensor [rows, cols] the form was made from
    int64_t rows, cols;
    PreparedOutput form;
  };
  std::vector<Prepared> prepared_activations;
  // The form the GEMVs last asked for, by input width: a producer prepares
  // that one (nothing before any GEMV has asked; a wrong guess costs only
  // the consumer's own quantize kernel).
  std::vector<std::pair<int64_t, ActivationKind>> activation_kind_by_cols;
  int64_t prepared_uses = 0;  // GEMV launches that found their input prepared (execution_summary)

  void forget_prepared_activations() { prepared_activations.clear(); }
  // Drops the entries whose source overlaps [begin, begin + bytes).
  void forget_prepared_activations(const void* begin, size_t bytes) {
    const auto* first = static_cast<const char*>(begin);
    std::erase_if(prepared_activations, [&](const Prepared& p) {
      const auto* source = reinterpret_cast<const char*>(p.source);
      return source < first + bytes && first < source + sizeof(float) * p.rows * p.cols;
    });
  }

  // Device memory valid until the backend's next reset_scratch(); 256-byte aligned.
  virtual void* scratch_bytes(size_t bytes) = 0;
  // Device memory for one producer's prepared form: a ring of two buffers
  // apart from the scratch, each handed out again two prepares later. That is
  // safe because every producer op clears the entries before it (select()),
  // and stream order keeps the earlier readers ahead of the next writer.
  virtual void* prepared_form_bytes(size_t bytes) = 0;
  // Copies host bytes into fresh device scratch on the stream (through pinned
  // staging, so the caller's buffer may change as soon as this returns).
  virtual void* upload_bytes(const void* host, size_t bytes) = 0;
  // Device -> host; waits for the stream (everything queued before it).
  virtual void download_bytes(void* host, const void* device, size_t bytes) = 0;

  // The Matrix descriptors of an expert table's placed weights, indexed by
  // local expert: in device memory (for kernels that pick experts on the
  // device) and on the host. Built on first use, kept with the weights.
  // `appended`: a weight of the same format and shape placed after the
  // table's experts (index = the table's size), e.g. a shared expert.
  virtual const Matrix* expert_matrices(const ExpertTable& table, const Weight* appended = nullptr) = 0;
  virtual const std::vector<Matrix>& expert_matrices_host(const ExpertTable& table) = 0;

  template <typename T>
  T* scratch(int64_t count) {
    return static_cast<T*>(scratch_bytes(sizeof(T) * static_cast<size_t>(count > 0 ? count : 1)));
  }
  template <typename T>
  const T* upload(std::span<const T> values) {
    return static_cast<const T*>(upload_bytes(values.data(), values.size_bytes()));
  }
};

// The device matrix of a weight placed by this backend; throws a clear error
// for host weights.
Matrix matrix_of(const Weight& weight, int device_index);

// Calls f with a value of the C++ type of a float dtype, so a launcher can
// instantiate its kernel for the stored type: f(float{}), f(__nv_bfloat16{}), f(__half{}).
template <typename F>
void with_float_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    case DType::F16: f(__half{}); return;
    default: fail("internal error: dtype ", dtype_name(dtype), " reached a CUDA kernel");
  }
}

// Reads element i of a device buffer of float dtype (for per-feature vectors:
// biases, norm weights, router bias; the dtype branch is uniform).
__device__ __forceinline__ float element_f32(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(data)[i]);
    default: return static_cast<const float*>(data)[i];
  }
}

// embedding.cu: out[t] = table[ids[t]] dequantized to f32. ids on the device.
void embedding(Context& ctx, float* out /*[n, cols]*/, const Matrix& table, const int32_t* ids /*[n]*/, int64_t n);

// elementwise.cu
void add(Context& ctx, float* out, const float* a, const float* b, int64_t count);
void swiglu(Context& ctx, float* out, const float* gate, const float* up, int64_t count);
// out[r] = source[rows[r]]; rows on the device.
void gather_rows(Context& ctx, float* out /*[m, width]*/, const float* source, const int32_t* rows /*[m]*/, int64_t m,
                 int64_t width);

// norm.cu: RMSNorm of each row times gamma (out may alias x).
void rms_norm(Context& ctx, float* out, const float* x, const Matrix& gamma /*[dim]*/, int64_t rows, int64_t dim,
              float eps);
// residual += delta; normed = RMSNorm(residual) * gamma, in one pass for wide rows.
void add_rms_norm(Context& ctx, float* residual /*[rows, dim]*/, float* normed /*[rows, dim]*/,
                  const float* delta /*[rows, dim]*/, const Matrix& gamma /*[dim]*/, int64_t rows, int64_t dim,
                  float eps);

// linear.cu: out = x W^T (+ bias), W in any format. A block per few output
// features for up to 8 tokens (decoding), cuBLAS SGEMM (f32 weights) or a
// tiled GEMM dequantizing W tiles for more.
void linear(Context& ctx, float* out /*[n, rows]*/, const float* x /*[n, cols]*/, int64_t n, const Matrix& weight,
            const Matrix* bias /*[rows] or null*/);
// Several projections of one input: one launch when decoding and the weights
// share a format, else one linear() each.
struct LinearTarget {
  float* out;          // [n, weight.rows]
  Matrix weight;
  const Matrix* bias;  // [weight.rows] or null
};
void linears(Context& ctx, const float* x /*[n, cols]*/, int64_t n, std::span<const LinearTarget> targets);

// gemm_tensor.cu: prompt-sized products on tensor cores, bf16 operands, f32
// sums. tensor_linear returns false, doing nothing, where it does not apply
// (GLM_CUDA_PROMPTS=simt, formats without 8-value pieces, depth not a
// multiple of 32); linear() then takes its SIMT path.
bool tensor_linear(Context& ctx, float* out /*[n, rows]*/, const float* x /*[n, cols]*/, int64_t n,
                   const Matrix& weight, const Matrix* bias /*[rows] or null*/);
// Whether the binary holds sm_90a code (wgmma) for the current device; runs
// a one-thread probe on `stream` and waits for it (at start-up only).
bool wgmma_compiled(cudaStream_t stream);
// Expert rows grouped by local expert (device memory): expert e owns rows
// [row_begin[e], row_begin[e + 1]) and GEMM tiles [tile_begin[e], tile_begin[e + 1]).
struct ExpertRows {
  const int32_t* token;       // [assignments] the token (x row) of each row
  const int32_t* row_begin;   // [held + 1]
  const int32_t* tile_begin;  // [held + 1]
  int held;
  int tile_rows;              // rows of one tile: tensor_expert_tile_rows()
  int64_t max_tiles;          // an upper bound on tile_begin[held], known on the host
};
bool tensor_experts_fit(const Context& ctx, const Matrix& gate, const Matrix& up, const Matrix& down, const float* x);
// Rows of one expert tile for `assignments` rows over `held` experts.
int tensor_expert_tile_rows(const Context& ctx, int64_t assignments, int64_t held, const Matrix& gate0,
                            const Matrix& down0);
// act[r] = silu(gate_e x[token[r]]) * (up_e x[token[r]]) in bf16 (the next
// product's operand, in the depth order the kernel that will take down0
// reads) for the rows r of each expert e.
void tensor_experts_gate_up(Context& ctx, __nv_bfloat16* act /*[assignments, width]*/,
                            const float* x /*[n, hidden]*/, int64_t n, const ExpertRows& rows,
                            const Matrix* gate /*device [held]*/, const Matrix* up /*device [held]*/,
                            const Matrix& gate0, const Matrix& down0);
// expert_out[r] = down_e act[r] for the rows r of each expert e.
void tensor_experts_down(Context& ctx, float* expert_out /*[assignments, hidden]*/,
                         const __nv_bfloat16* act /*[assignments, width]*/, const ExpertRows& rows,
                         const Matrix* down /*device [held]*/, const Matrix& down0);

// activations.cu: x [n, cols] (cols % 32 == 0) quantized per 32 values into
// scratch, or the form its producer prepared (Context::prepared_activations).
Int8Activations quantize_activations(Context& ctx, const float* x, int64_t n, int64_t cols);
// x [n, cols] (cols % 32 == 0) scaled per 32 values to f16 into scratch (FP8
// weights' fast path), or the form its producer prepared.
HalfActivations scale_activations_to_half(Context& ctx, const float* x, int64_t n, int64_t cols);
// For a producer about to write x [n, cols]: scratch for the form the GEMVs
// last asked for at this width, registered as prepared from x; kind None
// (the kernel writes nothing) in the exact mode, for more than
// kMaxPreparedRows rows, widths not a multiple of 32, or before any GEMV asked.
constexpr int64_t kMaxPreparedRows = 64;
PreparedOutput prepare_activations(Context& ctx, const float* x, int64_t n, int64_t cols);

// rotary.cu: in place on the first rotary_dim dims of each head. positions
// and inverse_frequency ([rotary_dim / 2]) on the device.
void rotary(Context& ctx, float* x /*[n, heads, head_dim]*/, const int32_t* positions, const float* inverse_frequency,
            int64_t n, int64_t heads, int64_t head_dim, int64_t rotary_dim);
// Where head_norm_rotary also writes the new keys and values: the f32 cache
// [blocks * block_size slots, k_heads, head_dim] and each token's slot.
struct KvWrite {
  float* keys = nullptr;  // null: no cache write
  float* values = nullptr;
  const float* v = nullptr;        // [n, k_heads, head_dim]
  const int64_t* slots = nullptr;  // [n] on the device
};
inline void append_signature(Signature& signature, const KvWrite& kv) {
  signature.add_all(kv.keys, kv.values, kv.v, kv.slots);
}
// Per-head RMSNorm of q and k (a gamma whose data is null skips that norm),
// then rotary on both, then (kv.keys set) k and v to their cache slots, in
// one launch: a warp per (token, head).
void head_norm_rotary(Context& ctx, float* q /*[n, q_heads, head_dim]*/, float* k /*[n, k_heads, head_dim]*/,
                      const Matrix& q_gamma, const Matrix& k_gamma, float eps, const int32_t* positions,
                      const float* inverse_frequency, int64_t n, int64_t q_heads, int64_t k_heads, int64_t head_dim,
                      int64_t rotary_dim, const KvWrite& kv = {});

// head_norm_rotary's work handed to attention() with q and k as projected:
// the decode kernel folds it in where it can (every sequence brings one
// token, head_dim 128, the short kernel), else attention() runs
// head_norm_rotary with the KV write first. Rotations at plan.token_position.
struct RotaryFold {
  Matrix q_gamma, k_gamma;  // data null: no head norm
  float eps = 0.0f;
  const float* inverse_frequency = nullptr;  // [rotary_dim / 2] on the device
  int64_t rotary_dim = 0;
};

// attention.cu: writes k/v to their slots (unless kv_written), then paged
// causal attention (GQA groups in one block, long contexts split over blocks).
// With `fold`, q and k arrive unrotated (and are left in any state): see RotaryFold.
void attention(Context& ctx, float* out /*[n, heads, head_dim]*/, float* q, float* k, const float* v, int64_t n,
               int64_t heads, int64_t kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan,
               float scale, bool kv_written = false, const RotaryFold* fold = nullptr);

// attention_prefill.cu: the attention of the tokens of `sequences` (plan
// indices, each with many new tokens: a prompt or a prompt chunk) on tensor
// cores, bf16 operands with f32 softmax and accumulation; their keys and
// values are already in the cache. positions: plan.token_position on the device.
bool attention_prefill_supported(int64_t heads, int64_t kv_heads, int64_t head_dim);
void attention_prefill(Context& ctx, float* out /*[n, heads, head_dim]*/, const float* q /*[n, heads, head_dim]*/,
                       int64_t heads, int64_t kv_heads, int64_t head_dim, const KvLayer& cache,
                       const AttentionPlan& plan, std::span<const int32_t> sequences, const int32_t* positions,
                       float scale);

// kv_copy.cu: block `to` of keys and values becomes a copy of block `from`.
void copy_kv_block(Context& ctx, KvLayer& cache, int32_t from_block, int32_t to_block);

// router.cu: one warp per token; expert ids and weights stay on the device.
void route(Context& ctx, int32_t* expert_ids /*[n, top_k]*/, float* weights /*[n, top_k]*/,
           const float* logits /*[n, n_experts]*/, const Matrix& correction_bias, int64_t n, int64_t n_experts,
           const RouterParams& params);

// moe.cu: the routed expert MLPs, grouped by expert on the device for
// decoding (no host round trip), on the host for prompts.
void moe_experts(Context& ctx, float* out /*[n, hidden]*/, const float* x /*[n, hidden]*/, int64_t n,
                 int64_t hidden, const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                 const ExpertTable& down);
// The routed experts and a shared expert in the same kernels (the shared
// expert as one more expert taking every token, added after the routed
// sum); false, doing nothing, where that path does not apply (prompts,
// formats or shapes that differ from the routed experts').
bool moe_experts_and_shared(Context& ctx, float* out /*[n, hidden]*/, const float* x /*[n, hidden]*/, int64_t n,
                            int64_t hidden, const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                            const ExpertTable& down, const SharedExpert& shared);

// sampling.cu: the next token of each row by the rule of backend/sampling_rule.h,
// one block per row; tokens stay on the device (the caller downloads them).
void sample(Context& ctx, int32_t* tokens /*[rows]*/, const float* logits /*[rows, vocab]*/, int64_t rows,
            int64_t vocab, std::span<const SamplingRequest> requests /*[rows]*/);

}  // namespace glm::cuda
