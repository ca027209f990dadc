// The routed expert MLPs on the GPU, in two ways:
//
// Decoding (n <= kDeviceGroupingTokens): everything stays on the device, so a
// step needs no host round trip (and can later be captured in a graph).
//   1. moe_plan_kernel groups the (token, k) assignments by expert: the
//      active experts in ascending id, each with its tokens in ascending
//      order, and for every (token, k) the row its expert output goes to.
//      A single token needs no grouping: its k-th expert takes row k (after
//      the shared expert's), read straight from the routing (MoePlan::direct_ids).
//   2. moe_gate_up_kernel: a block per (active expert, 8 rows of its width)
//      reads those gate and up rows once for all the expert's tokens
//      (block_row_dots) and writes silu(gate) * up. Only the chosen experts'
//      rows are read. One token in the fast mode: blocks of 32 rows, which
//      also write that output's f16/int8 form for the down kernel. One
//      token right after the route kernel: the shared expert's blocks start
//      without waiting, while the router and the routing still run.
//   3. moe_down_kernel: the same over 16 rows of the down projection.
//   4. moe_combine_kernel: out[t] = sum of weight * expert output over the
//      token's experts in ascending id, the CPU reference's order (the
//      experts ranked before the wait for the down kernel's rows).
// Grids are sized from n and top_k alone (min(n * top_k, held) expert slots;
// slots past the active count exit at once), never from device values.
//
// Prompts on tensor cores (n > kDeviceGroupingTokens, GLM_CUDA_PROMPTS=tensor):
//   1. count_assignments_kernel / place_assignments_kernel sort the (token, k)
//      assignments by expert on the device, tokens ascending within each
//      expert, and give each expert its rows and its GEMM tiles (64 or 128
//      rows: tensor_expert_tile_rows).
//   2. one grouped GEMM for every expert's gate and up with SwiGLU in its
//      epilogue, 3. another for down (gemm_tensor.cu), 4. moe_combine_kernel
//      weighs and sums each token's rows as for decoding.
// Other prompts (GLM_CUDA_PROMPTS=simt, formats without 8-value pieces): the
// routing is read back to the host (one synchronisation per MoE layer), each
// used expert runs over its tokens with the linear, SwiGLU and gather
// kernels, and adds its weighted output into the result, experts in
// ascending id.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "backend/cuda/prepared_activations.cuh"
#include "backend/cuda/weight_formats.cuh"

namespace glm::cuda {
namespace {

constexpr int64_t kDeviceGroupingTokens = 64;
constexpr int kMaxTopK = 32;

// Device views of one expert table: Matrix descriptors indexed by local expert.
struct ExpertMatrices {
  const Matrix* gate;
  const Matrix* up;
  const Matrix* down;
};

// The grouping written by moe_plan_kernel (all device memory), or, for one
// token, none at all: with `direct_ids` set, slot s is assignment row s
// (first_slot shared-expert rows, then the token's k-th expert at row
// first_slot + k, whatever its id), which needs no plan kernel (a 4 us
// dependent step at batch 1); the other fields are then unused.
struct MoePlan {
  int32_t* active_count;      // [1]
  int32_t* active_expert;     // [slots] local expert ids, ascending
  int32_t* slot_begin;        // [slots + 1] first assignment of each active expert
  int32_t* assignment_token;  // [n * top_k] token of each assignment, by expert then token
  int32_t* assignment_of;     // [n * top_k] assignment row of (t, k); -1 when the expert is not held
  const int32_t* direct_ids = nullptr;  // one token: its [top_k] expert ids (routing), else null
  int first_expert = 0;                 // direct: global id of local expert 0
  int held = 0;                         // direct: local experts (the shared one is index held)
  int first_slot = 0;                   // direct: 1 with a shared expert, else 0
};

void append_signature(Signature& signature, const ExpertMatrices& experts) {
  signature.add_all(experts.gate, experts.up, experts.down);
}
void append_signature(Signature& signature, const MoePlan& plan) {
  signature.add_all(plan.active_count, plan.active_expert, plan.slot_begin, plan.assignment_token, plan.assignment_of,
                    plan.direct_ids, plan.first_expert, plan.held, plan.first_slot);
}

// The work of grid slot `slot`: its local expert and its assignment rows
// [begin, end); false when the slot has none (uniform over the block).
__device__ __forceinline__ bool slot_work(const MoePlan& plan, int slot, int& expert, int& begin, int& end) {
  if (plan.direct_ids) {
    if (slot < plan.first_slot) {
      expert = plan.held;  // the shared expert
    } else {
      expert = plan.direct_ids[slot - plan.first_slot] - plan.first_expert;
      if (expert < 0 || expert >= plan.held) return false;  // another rank's expert
    }
    begin = slot;
    end = slot + 1;
    return true;
  }
  if (slot >= *plan.active_count) return false;
  expert = plan.active_expert[slot];
  begin = plan.slot_begin[slot];
  end = plan.slot_begin[slot + 1];
  return true;
}

// The token of assignment row `row`.
__device__ __forceinline__ int token_of(const MoePlan& plan, int row) {
  return plan.direct_ids ? 0 : plan.assignment_token[row];
}

// The assignment row of token t's k-th expert (entry i = t * top_k + k, its
// global id `id`); -1 when this rank does not hold that expert.
__device__ __forceinline__ int assignment_row(const MoePlan& plan, int64_t i, int k, int32_t id) {
  if (!plan.direct_ids) return plan.assignment_of[i];
  const int local = id - plan.first_expert;
  return local >= 0 && local < plan.held ? plan.first_slot + k : -1;
}

// One block. Shared memory: counts, first assignment and slot of each held expert.
// shared_tokens > 0: slot 0 is a shared expert (table index `held`) taking
// rows 0 .. shared_tokens - 1, one per token; the routed rows follow.
__global__ void moe_plan_kernel(MoePlan plan, const int32_t* __restrict__ expert_ids, int entries, int top_k,
                                int first_expert, int held, int shared_tokens) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int first_slot = shared_tokens > 0 ? 1 : 0;
  extern __shared__ int32_t shared[];
  int32_t* counts = shared;          // [held]
  int32_t* begins = counts + held;   // [held]
  const int tid = threadIdx.x;
  for (int e = tid; e < held; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int i = tid; i < entries; i += blockDim.x) {
    const int e = expert_ids[i] - first_expert;
    if (e >= 0 && e < held) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  for (int t = tid; t < shared_tokens; t += blockDim.x) plan.assignment_token[t] = t;
  if (tid == 0 && shared_tokens > 0) {
    plan.active_expert[0] = held;
    plan.slot_begin[0] = 0;
  }
  for (int e = tid; e < held; e += blockDim.x) {
    int begin = shared_tokens, slot = first_slot;
    for (int other = 0; other < e; ++other) {
      begin += counts[other];
      slot += counts[other] > 0;
    }
    begins[e] = begin;
    if (counts[e] > 0) {
      plan.active_expert[slot] = e;
      plan.slot_begin[slot] = begin;
    }
    if (e == held - 1) {  // the last expert knows the totals (slots include the shared one)
      const int active = slot + (counts[e] > 0);
      *plan.active_count = active;
      plan.slot_begin[active] = begin + counts[e];
    }
  }
  __syncthreads();
  for (int i = tid; i < entries; i += blockDim.x) {
    const int32_t id = expert_ids[i];
    const int e = id - first_expert;
    if (e < 0 || e >= held) {
      plan.assignment_of[i] = -1;
      continue;
    }
    int rank = 0;  // earlier tokens of the same expert (a token picks an expert at most once)
    for (int j = 0; j < i; ++j) rank += expert_ids[j] == id;
    const int row = begins[e] + rank;
    plan.assignment_of[i] = row;
    plan.assignment_token[row] = i / top_k;
  }
}

// silu(g) * u, each step rounded on its own (the explicitly rounded
// intrinsics are never fused into an FMA with expf's last multiply), so the
// value is the same bits wherever the compiler inlines it: the gate/up
// kernel's two stores below must agree with each other.
__device__ __forceinline__ float swiglu(float g, float u) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// act[a, r] = silu(gate_e[r] . x[token(a)]) * (up_e[r] . x[token(a)]) for the
// assignments a of the block's expert and its R rows r: gate and up rows are
// read once for all the expert's tokens (NT at a time). With R = 32 a
// block's rows are whole groups of 32 of act's rows, and `prepared` (kind
// not None) gets their quantized form for the down kernel, which then
// launches no quantize kernel (prepared_activations.cuh; the same
// arithmetic, so the same bits).
//
// shared_early (one token, launched right after the route kernel, which lets
// this kernel be scheduled while the router GEMV before it still runs): the
// shared expert's blocks (slot < plan.first_slot, the first in the grid)
// skip the wait. They read only x, complete before the router GEMV passed
// its own wait, and constant weights, and write only their own rows of act
// and of the prepared form, which no running kernel reads; so the shared
// expert streams its weights while the router and the routing run, and the
// routed experts' blocks, which wait, are all that is left after them.
template <typename Format, int NT, int R, typename Activations>
__global__ void __launch_bounds__(256)
    moe_gate_up_kernel(float* __restrict__ act, const Activations x, ExpertMatrices experts, MoePlan plan,
                       int64_t width, const PreparedOutput prepared, bool shared_early) {
  if (shared_early && static_cast<int>(blockIdx.y) < plan.first_slot) start_dependents();
  else wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  int expert, begin, end;
  if (!slot_work(plan, blockIdx.y, expert, begin, end)) return;
  __shared__ float result[2 * R * NT];
  const int64_t row0 = blockIdx.x * static_cast<int64_t>(R);
  const Matrix matrices[2] = {experts.gate[expert], experts.up[expert]};
  for (int a0 = begin; a0 < end; a0 += NT) {
    const int count = min(NT, end - a0);
    int64_t rows[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) rows[t] = token_of(plan, a0 + min(t, count - 1));
    row_dots<Format, NT, R, 2>(matrices, row0, x, rows, count, result);
    if constexpr (R == 32) {
      if (prepared.kind != ActivationKind::None) {  // the launcher: width % 32 == 0, so all 32 rows exist
        if (threadIdx.x < 32) {  // lane l: row row0 + l of each token, stored and prepared from one value
          for (int t = 0; t < count; ++t) {
            const float value[1] = {swiglu(result[threadIdx.x * NT + t], result[R * NT + threadIdx.x * NT + t])};
            act[(a0 + t) * width + row0 + threadIdx.x] = value[0];
            prepare_group<1>(prepared, ((a0 + t) * width + row0) / 32, value);
          }
        }
        continue;
      }
    }
    for (int i = threadIdx.x; i < R * NT; i += blockDim.x) {
      const int64_t r = row0 + i / NT;
      const int t = i % NT;
      if (r >= width || t >= count) continue;
      act[(a0 + t) * width + r] = swiglu(result[i], result[R * NT + i]);
    }
  }
}

// expert_out[a, o] = down_e[o] . act[a] for the assignments a of the block's
// expert and its R rows o.
template <typename Format, int NT, int R, typename Activations>
__global__ void __launch_bounds__(256)
    moe_down_kernel(float* __restrict__ expert_out, const Activations act, ExpertMatrices experts, MoePlan plan,
                    int64_t hidden) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  int expert, begin, end;
  if (!slot_work(plan, blockIdx.y, expert, begin, end)) return;
  __shared__ float result[R * NT];
  const int64_t row0 = blockIdx.x * static_cast<int64_t>(R);
  const Matrix matrices[1] = {experts.down[expert]};
  for (int a0 = begin; a0 < end; a0 += NT) {
    const int count = min(NT, end - a0);
    int64_t rows[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) rows[t] = a0 + min(t, count - 1);
    row_dots<Format, NT, R, 1>(matrices, row0, act, rows, count, result);
    for (int i = threadIdx.x; i < R * NT; i += blockDim.x) {
      const int64_t o = row0 + i / NT;
      const int t = i % NT;
      if (o < hidden && t < count) expert_out[(a0 + t) * hidden + o] = result[i];
    }
  }
}

// out[t] = sum over the token's held experts, ascending id, of weight *
// expert_out, then + expert_out row t when `shared` (the shared expert's
// rows come first), as the plain ops compute routed + shared. A block per
// token. Its first warp puts the token's (row, weight) pairs in ascending
// expert id in shared memory (a lane per k, ranked by shuffles), then every
// thread sums its dims with up to 8 expert rows' loads in flight.
// The rows come from the plan (assignment_row: its assignment_of, or the one-token
// rows of MoePlan::direct_ids).
//
// routing_ready: the routing and the plan were complete before this kernel
// could be scheduled, so the ranking runs before the wait, under the down
// kernel's last blocks. True after moe_on_device's down kernel: this kernel
// is scheduled only once every down block has passed its wait, i.e. once the
// gate/up kernel has finished, whose routed blocks all waited for what came
// before them (the route or plan kernel, or a quantize kernel after it).
__global__ void __launch_bounds__(1024)
    moe_combine_kernel(float* __restrict__ out, const float* __restrict__ expert_out,
                       const int32_t* __restrict__ expert_ids, const float* __restrict__ weights, MoePlan plan,
                       int top_k, int64_t hidden, bool shared, bool vectorized, bool routing_ready) {
  if (!routing_ready) wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  __shared__ int32_t sorted_row[kMaxTopK];
  __shared__ float sorted_mix[kMaxTopK];
  __shared__ int used_count;
  const int64_t t = blockIdx.x;
  if (threadIdx.x < 32) {  // launched with >= 32 threads; top_k <= kMaxTopK == 32
    const int k = threadIdx.x;
    int32_t id = 0, row = -1;
    float mix = 0.0f;
    if (k < top_k) {
      const int64_t i = t * top_k + k;
      id = expert_ids[i];
      mix = weights[i];
      row = assignment_row(plan, i, k, id);
    }
    const unsigned held_lanes = __ballot_sync(0xffffffffu, row >= 0);
    int rank = 0;  // held experts of lower id (a token picks an expert at most once; ties by k regardless)
    for (int j = 0; j < top_k; ++j) {
      const int32_t other = __shfl_sync(0xffffffffu, id, j);
      rank += (held_lanes >> j & 1u) && (other < id || (other == id && j < k));
    }
    if (row >= 0) {
      sorted_row[rank] = row;
      sorted_mix[rank] = mix;
    }
    if (k == 0) used_count = __popc(held_lanes);
  }
  __syncthreads();
  if (routing_ready) wait_for_previous_kernel();  // the expert rows come from the down kernel
  const int used = used_count;
  constexpr int kInFlight = 8;
  if (vectorized) {
    const float4* rows4 = reinterpret_cast<const float4*>(expert_out);
    const int64_t hidden4 = hidden / 4;
    for (int64_t d4 = threadIdx.x; d4 < hidden4; d4 += blockDim.x) {
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int j0 = 0; j0 < used; j0 += kInFlight) {
        float4 e[kInFlight];
#pragma unroll
        for (int b = 0; b < kInFlight; ++b)
          if (j0 + b < used) e[b] = rows4[sorted_row[j0 + b] * hidden4 + d4];
#pragma unroll
        for (int b = 0; b < kInFlight; ++b) {
          if (j0 + b >= used) break;
          const float m = sorted_mix[j0 + b];
          sum.x += m * e[b].x, sum.y += m * e[b].y, sum.z += m * e[b].z, sum.w += m * e[b].w;
        }
      }
      if (shared) {
        const float4 e = rows4[t * hidden4 + d4];
        sum.x += e.x, sum.y += e.y, sum.z += e.z, sum.w += e.w;
      }
      reinterpret_cast<float4*>(out + t * hidden)[d4] = sum;
    }
    return;
  }
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
    float sum = 0.0f;
    for (int j = 0; j < used; ++j) sum += sorted_mix[j] * expert_out[sorted_row[j] * hidden + d];
    if (shared) sum += expert_out[t * hidden + d];
    out[t * hidden + d] = sum;
  }
}

// out[tokens[i]] += mix[i] * expert_out[i]. A token appears at most once per
// expert, and experts run one after another, so there are no write races.
__global__ void scatter_add_kernel(float* __restrict__ out, const float* __restrict__ expert_out,
                                   const int32_t* __restrict__ tokens, const float* __restrict__ mix, int64_t hidden) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  const int64_t i = blockIdx.x;
  float* target = out + static_cast<int64_t>(tokens[i]) * hidden;
  const float* source = expert_out + i * hidden;
  const float weight = mix[i];
  for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) target[d] += weight * source[d];
}

// moe_combine_kernel over n tokens: out[t] from expert_out's rows (assignment_row).
// routing_ready: see the kernel (Context::combine_early may veto it).
void combine(Context& ctx, float* out, const float* expert_out, const Routing& routing, const MoePlan& plan,
             int64_t n, int64_t hidden, bool shared, bool routing_ready) {
  // float4s where rows stay 16-byte aligned (expert_out is scratch: aligned).
  const bool vectors = hidden % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  launch(ctx, moe_combine_kernel, dim3(static_cast<unsigned>(n)),
         dim3(static_cast<unsigned>(std::clamp<int64_t>((vectors ? hidden / 4 : hidden + 31) / 32 * 32, 32, 1024))), 0,
         out, expert_out, routing.expert_ids.i32(), routing.weights.f32(), plan,
         static_cast<int>(routing.expert_ids.dim(1)), hidden, shared, vectors, routing_ready && ctx.combine_early);
}

// The device-side path (see the file comment).
// `shared`: null, or a shared expert run as one more expert (slot 0, every token).
void moe_on_device(Context& ctx, float* out, const float* x, int64_t n, int64_t hidden, const Routing& routing,
                   const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down,
                   const SharedExpert* shared = nullptr) {
  const int64_t top_k = routing.expert_ids.dim(1), entries = n * top_k;
  const int64_t held = static_cast<int64_t>(gate.experts.size());
  const int64_t shared_rows = shared ? n : 0;
  const ExpertMatrices experts{ctx.expert_matrices(gate, shared ? shared->gate : nullptr),
                               ctx.expert_matrices(up, shared ? shared->up : nullptr),
                               ctx.expert_matrices(down, shared ? shared->down : nullptr)};
  const Matrix& gate0 = ctx.expert_matrices_host(gate).front();
  const Matrix& down0 = ctx.expert_matrices_host(down).front();
  const int64_t width = gate0.rows;
  const int64_t total_rows = shared_rows + entries;  // shared rows first, then one per (token, k)
  // One token: slot s is row s (MoePlan::direct_ids), no plan kernel; more
  // tokens: the plan kernel groups them by expert.
  const bool direct = n == 1;
  const int64_t slots = direct ? total_rows : std::min(entries, held) + (shared ? 1 : 0);
  MoePlan plan{};
  if (direct) {
    plan.direct_ids = routing.expert_ids.i32();
    plan.first_expert = static_cast<int>(gate.first_expert);
    plan.held = static_cast<int>(held);
    plan.first_slot = static_cast<int>(shared_rows);
  } else {
    plan.active_count = ctx.scratch<int32_t>(1);
    plan.active_expert = ctx.scratch<int32_t>(slots);
    plan.slot_begin = ctx.scratch<int32_t>(slots + 1);
    plan.assignment_token = ctx.scratch<int32_t>(total_rows);
    plan.assignment_of = ctx.scratch<int32_t>(entries);
  }
  float* act = ctx.scratch<float>(total_rows * width);         // [total_rows, width]
  float* expert_out = ctx.scratch<float>(total_rows * hidden);  // [total_rows, hidden]

  if (!direct)
    launch(ctx, moe_plan_kernel, dim3(1), dim3(256), sizeof(int32_t) * 2 * static_cast<size_t>(held), plan,
           routing.expert_ids.i32(), static_cast<int>(entries), static_cast<int>(top_k),
           static_cast<int>(gate.first_expert), static_cast<int>(held), static_cast<int>(shared_rows));

  constexpr int kGateUpRows = 8, kPreparingGateUpRows = 32, kDownRows = 16;
  // Threads split a row's 8-value pieces: no more threads than pieces.
  auto threads_for = [](int64_t cols) { return static_cast<unsigned>(std::min<int64_t>(256, (cols / 8 + 31) / 32 * 32)); };
  auto int8_for = [&](const Matrix& m) {
    return ctx.int8_activations && m.kind == WeightFormat::Kind::Affine && (m.bits == 4 || m.bits == 8) &&
           m.cols % 32 == 0 && m.group_size % 32 == 0;
  };
  // One token in the fast mode: gate/up blocks of 32 rows write act's
  // quantized form too (moe_gate_up_kernel), so the down kernel needs no
  // quantize kernel of its own, a dependent ~2 us step of every MoE layer.
  // prepare_activations gives no form (kind None) before the down GEMV has
  // once asked for this width, or in the exact mode.
  const PreparedOutput down_input = direct && ctx.gate_up_prepares && width % 32 == 0
                                        ? prepare_activations(ctx, act, total_rows, width)
                                        : PreparedOutput{};
  const bool preparing = down_input.kind != ActivationKind::None;
  ctx.gate_up_preparing_launches += preparing;
  const dim3 gate_up_grid(blocks_for(width, preparing ? kPreparingGateUpRows : kGateUpRows),
                          static_cast<unsigned>(slots));
  const dim3 down_grid(blocks_for(hidden, kDownRows), static_cast<unsigned>(slots));
  // Gate and up share a format (one kernel reads both); down may differ
  // (mlx-lm leaves a projection unquantized when its width is not a multiple
  // of the group size).
  auto with_tokens = [&](auto&& launch_tokens) {
    if (n == 1) launch_tokens(std::integral_constant<int, 1>{});  // each expert has one token
    else launch_tokens(std::integral_constant<int, 2>{});
  };
  // launch_with(activations, threads): int8 activations where the mode and
  // the weight format allow, else the f32 input as it is.
  auto with_activations = [&](auto format, const Matrix& m, const float* input, int64_t rows, auto&& launch_with) {
    if constexpr (kHasInt8Path<decltype(format)>) {
      if (int8_for(m)) {
        launch_with(quantize_activations(ctx, input, rows, m.cols), static_cast<unsigned>(kInt8Threads));
        return;
      }
    }
    if constexpr (kHasHalfPath<decltype(format)>) {
      if (ctx.int8_activations && half_path_fits(m)) {
        launch_with(scale_activations_to_half(ctx, input, rows, m.cols), static_cast<unsigned>(kInt8Threads));
        return;
      }
    }
    launch_with(F32Activations{input, m.cols}, threads_for(m.cols));
  };
  dispatch_format(gate0, [&](auto format) {
    using Format = decltype(format);
    if constexpr (Format::kHasPieces) {
      with_activations(format, gate0, x, n, [&](auto activations, unsigned threads) {
        with_tokens([&](auto nt) {
          // Decided here, after with_activations, which may have launched a
          // quantize kernel of its own (x's form then comes from it: no early start).
          const bool shared_early = ctx.shared_early && direct && shared && ctx.programmatic_launch() &&
                                    ctx.last_route_op == ctx.submitted_ops && ctx.route_gemv_input == x;
          ctx.shared_early_launches += shared_early;
          auto launch_rows = [&](auto rows) {  // down_input: kind None unless preparing
            launch(ctx, moe_gate_up_kernel<Format, decltype(nt)::value, decltype(rows)::value, decltype(activations)>,
                   gate_up_grid, dim3(threads), 0, act, activations, experts, plan, width, down_input, shared_early);
          };
          if (preparing) launch_rows(std::integral_constant<int, kPreparingGateUpRows>{});
          else launch_rows(std::integral_constant<int, kGateUpRows>{});
        });
      });
    }
  });
  dispatch_format(down0, [&](auto format) {
    using Format = decltype(format);
    if constexpr (Format::kHasPieces) {
      with_activations(format, down0, act, total_rows, [&](auto activations, unsigned threads) {
        with_tokens([&](auto nt) {
          launch(ctx, moe_down_kernel<Format, decltype(nt)::value, kDownRows, decltype(activations)>, down_grid,
                 dim3(threads), 0, expert_out, activations, experts, plan, hidden);
        });
      });
    }
  });
  combine(ctx, out, expert_out, routing, plan, n, hidden, shared != nullptr, /*routing_ready=*/true);
}

// The host-grouped path (see the file comment).
void moe_grouped_on_host(Context& ctx, float* out, const float* x, int64_t n, int64_t hidden, const Routing& routing,
                         const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  memset_async(ctx, out, 0, sizeof(float) * static_cast<size_t>(n * hidden));
  const int64_t top_k = routing.expert_ids.dim(1);
  std::vector<int32_t> ids(static_cast<size_t>(n * top_k));
  std::vector<float> mix(static_cast<size_t>(n * top_k));
  ctx.download_bytes(ids.data(), routing.expert_ids.i32(), ids.size() * sizeof(int32_t));
  ctx.download_bytes(mix.data(), routing.weights.f32(), mix.size() * sizeof(float));

  // Counting sort of the (token, weight) assignments by held expert.
  const int64_t first = gate.first_expert, held = static_cast<int64_t>(gate.experts.size());
  std::vector<int32_t> offsets(static_cast<size_t>(held + 1), 0);
  for (int32_t expert : ids)
    if (gate.holds(expert)) ++offsets[expert - first + 1];
  for (int64_t e = 0; e < held; ++e) offsets[e + 1] += offsets[e];
  const int64_t assigned = offsets[held];
  if (assigned == 0) return;
  std::vector<int32_t> tokens(static_cast<size_t>(assigned));
  std::vector<float> token_mix(static_cast<size_t>(assigned));
  std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t t = 0; t < n; ++t)  // ascending tokens within each expert
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t expert = ids[t * top_k + k];
      if (!gate.holds(expert)) continue;
      const int32_t at = fill[expert - first]++;
      tokens[at] = static_cast<int32_t>(t);
      token_mix[at] = mix[t * top_k + k];
    }
  const int32_t* device_tokens = ctx.upload(std::span<const int32_t>(tokens));
  const float* device_mix = ctx.upload(std::span<const float>(token_mix));

  const std::vector<Matrix>& gates = ctx.expert_matrices_host(gate);
  const std::vector<Matrix>& ups = ctx.expert_matrices_host(up);
  const std::vector<Matrix>& downs = ctx.expert_matrices_host(down);
  int64_t max_tokens = 0, max_width = 0;
  for (int64_t e = 0; e < held; ++e) {
    const int64_t m = offsets[e + 1] - offsets[e];
    if (m == 0) continue;
    max_tokens = std::max(max_tokens, m);
    max_width = std::max(max_width, gates[e].rows);
  }
  float* inputs = ctx.scratch<float>(max_tokens * hidden);       // [m, hidden]
  float* gate_out = ctx.scratch<float>(max_tokens * max_width);  // [m, width]
  float* up_out = ctx.scratch<float>(max_tokens * max_width);    // [m, width]
  float* expert_out = ctx.scratch<float>(max_tokens * hidden);   // [m, hidden]

  for (int64_t e = 0; e < held; ++e) {
    const int64_t begin = offsets[e], m = offsets[e + 1] - begin;
    if (m == 0) continue;
    const Matrix &gate_w = gates[e], &up_w = ups[e], &down_w = downs[e];
    GLM_CHECK(gate_w.cols == hidden && up_w.rows == gate_w.rows && up_w.cols == hidden && down_w.rows == hidden &&
                  down_w.cols == gate_w.rows,
              "internal error: expert ", first + e, " shapes");
    const int64_t width = gate_w.rows;
    gather_rows(ctx, inputs, x, device_tokens + begin, m, hidden);
    linear(ctx, gate_out, inputs, m, gate_w, nullptr);
    linear(ctx, up_out, inputs, m, up_w, nullptr);
    swiglu(ctx, gate_out, gate_out, up_out, m * width);
    linear(ctx, expert_out, gate_out, m, down_w, nullptr);
    launch(ctx, scatter_add_kernel, dim3(static_cast<unsigned>(m)), dim3(256), 0, out, expert_out,
           device_tokens + begin, device_mix + begin, hidden);
  }
}

// ---- Prompts on tensor cores: the assignments grouped by expert on the
// device (no host round trip), then two grouped GEMMs (gemm_tensor.cu).

// Block e counts local expert e's assignments; block 0 also marks the
// assignments of experts this rank does not hold.
__global__ void count_assignments_kernel(int32_t* __restrict__ counts, int32_t* __restrict__ assignment_of,
                                         const int32_t* __restrict__ expert_ids, int entries, int first_expert,
                                         int held) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  __shared__ int total;
  const int e = blockIdx.x, id = first_expert + e;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  int count = 0;
  for (int i = threadIdx.x; i < entries; i += blockDim.x) {
    const int32_t expert = expert_ids[i];
    count += expert == id;
    if (e == 0 && (expert < first_expert || expert >= first_expert + held)) assignment_of[i] = -1;
  }
  for (int offset = 16; offset > 0; offset /= 2) count += __shfl_down_sync(0xffffffffu, count, offset);
  if (threadIdx.x % 32 == 0) atomicAdd(&total, count);
  __syncthreads();
  if (threadIdx.x == 0) counts[e] = total;
}

// Block e: its first row and first tile from the counts of the experts before
// it, then its assignments in ascending (token, k) order, the order the CPU
// reference sums them in (a block-wide stable compaction, 1024 entries a pass).
__global__ void __launch_bounds__(1024)
    place_assignments_kernel(int32_t* __restrict__ row_begin, int32_t* __restrict__ tile_begin,
                             int32_t* __restrict__ row_token, int32_t* __restrict__ assignment_of,
                             const int32_t* __restrict__ counts, const int32_t* __restrict__ expert_ids, int entries,
                             int top_k, int first_expert, int held, int tile_rows) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  __shared__ int before[2];      // rows, tiles of the experts before this one
  __shared__ int warp_found[32];
  const int e = blockIdx.x, id = first_expert + e, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warps = blockDim.x / 32;
  if (tid < 2) before[tid] = 0;
  __syncthreads();
  int rows = 0, tiles = 0;
  for (int other = tid; other < e; other += blockDim.x) {
    rows += counts[other];
    tiles += (counts[other] + tile_rows - 1) / tile_rows;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    rows += __shfl_down_sync(0xffffffffu, rows, offset);
    tiles += __shfl_down_sync(0xffffffffu, tiles, offset);
  }
  if (lane == 0) {
    atomicAdd(&before[0], rows);
    atomicAdd(&before[1], tiles);
  }
  __syncthreads();
  const int first_row = before[0];
  if (tid == 0) {
    row_begin[e] = first_row;
    tile_begin[e] = before[1];
    if (e == held - 1) {  // the last expert knows the totals
      row_begin[held] = first_row + counts[e];
      tile_begin[held] = before[1] + (counts[e] + tile_rows - 1) / tile_rows;
    }
  }
  int placed = 0;  // this expert's assignments in earlier passes
  for (int pass = 0; pass < entries; pass += blockDim.x) {
    const int i = pass + tid;
    const bool mine = i < entries && expert_ids[i] == id;
    const unsigned found = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_found[warp] = __popc(found);
    __syncthreads();
    int row = first_row + placed + __popc(found & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) row += warp_found[w];
    if (mine) {
      assignment_of[i] = row;
      row_token[row] = i / top_k;
    }
    for (int w = 0; w < warps; ++w) placed += warp_found[w];
    __syncthreads();
  }
}

void moe_prompt_on_device(Context& ctx, float* out, const float* x, int64_t n, int64_t hidden,
                          const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                          const ExpertTable& down) {
  const int64_t top_k = routing.expert_ids.dim(1), entries = n * top_k;
  const int held = static_cast<int>(gate.experts.size());
  const Matrix& gate0 = ctx.expert_matrices_host(gate).front();
  const Matrix& down0 = ctx.expert_matrices_host(down).front();
  const int64_t width = gate0.rows;
  const int tile_rows = tensor_expert_tile_rows(ctx, entries, held, gate0, down0);
  const int64_t max_tiles = (entries + tile_rows - 1) / tile_rows + std::min<int64_t>(held, entries);
  GLM_CHECK(max_tiles <= 65535, "a step of ", n, " tokens is too long for the CUDA expert kernels (",
            max_tiles, " tiles of a grid's 65535): process the prompt in shorter chunks (--prefill-chunk)");

  int32_t* counts = ctx.scratch<int32_t>(held);
  int32_t* row_begin = ctx.scratch<int32_t>(held + 1);
  int32_t* tile_begin = ctx.scratch<int32_t>(held + 1);
  int32_t* row_token = ctx.scratch<int32_t>(entries);
  int32_t* assignment_of = ctx.scratch<int32_t>(entries);
  __nv_bfloat16* act = ctx.scratch<__nv_bfloat16>(entries * width);  // [assignments, width]
  float* expert_out = ctx.scratch<float>(entries * hidden);           // [assignments, hidden]

  launch(ctx, count_assignments_kernel, dim3(static_cast<unsigned>(held)), dim3(256), 0, counts, assignment_of,
         routing.expert_ids.i32(), static_cast<int>(entries), static_cast<int>(gate.first_expert), held);
  launch(ctx, place_assignments_kernel, dim3(static_cast<unsigned>(held)), dim3(1024), 0, row_begin, tile_begin,
         row_token, assignment_of, counts, routing.expert_ids.i32(), static_cast<int>(entries),
         static_cast<int>(top_k), static_cast<int>(gate.first_expert), held, tile_rows);

  // Each expert with assignments wastes at most one partial tile.
  const ExpertRows rows{row_token, row_begin, tile_begin, held, tile_rows, max_tiles};
  tensor_experts_gate_up(ctx, act, x, n, rows, ctx.expert_matrices(gate), ctx.expert_matrices(up), gate0, down0);
  tensor_experts_down(ctx, expert_out, act, rows, ctx.expert_matrices(down), down0);

  MoePlan rows_of_entries{};  // the combine needs only each entry's row
  rows_of_entries.assignment_of = assignment_of;
  combine(ctx, out, expert_out, routing, rows_of_entries, n, hidden, false, /*routing_ready=*/false);
}

}  // namespace

namespace {

// Whether the device-grouped path can run these tables (the same format for
// gate and up, 8-value pieces, 16-byte aligned rows).
bool device_path_fits(Context& ctx, const float* x, int64_t n, int64_t hidden, const ExpertTable& gate,
                      const ExpertTable& up, const ExpertTable& down) {
  const Matrix& gate0 = ctx.expert_matrices_host(gate).front();
  const Matrix& up0 = ctx.expert_matrices_host(up).front();
  const Matrix& down0 = ctx.expert_matrices_host(down).front();
  const bool same_gate_up_format = gate0.kind == up0.kind && gate0.dtype == up0.dtype && gate0.bits == up0.bits &&
                                   gate0.rows == up0.rows && gate0.cols == up0.cols;
  bool pieces = reinterpret_cast<uintptr_t>(x) % 16 == 0 && gate0.rows % 4 == 0;  // act rows stay 16-byte aligned
  for (const Matrix* m : {&gate0, &down0})
    dispatch_format(*m, [&](auto format) { pieces = pieces && decltype(format)::pieces_ok(*m); });
  GLM_CHECK(gate0.cols == hidden && down0.rows == hidden && down0.cols == gate0.rows,
            "internal error: expert shapes for hidden ", hidden);
  return n <= kDeviceGroupingTokens && same_gate_up_format && pieces;
}

// Whether a placed weight matches an expert's format and shape exactly (one kernel instance reads both).
bool same_format(const Matrix& a, const Matrix& b) {
  return a.kind == b.kind && a.dtype == b.dtype && a.bits == b.bits && a.rows == b.rows && a.cols == b.cols &&
         a.group_size == b.group_size && a.scales_dtype == b.scales_dtype && a.fp8_scale == b.fp8_scale &&
         a.block_rows == b.block_rows && a.block_cols == b.block_cols;
}

}  // namespace

void moe_experts(Context& ctx, float* out, const float* x, int64_t n, int64_t hidden, const Routing& routing,
                 const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  if (n == 0) return;
  GLM_CHECK(routing.expert_ids.dim(1) <= kMaxTopK, "more than ", kMaxTopK, " experts per token on CUDA");
  if (gate.experts.empty()) {  // an expert-parallel rank holding nothing
    memset_async(ctx, out, 0, sizeof(float) * static_cast<size_t>(n * hidden));
    return;
  }
  const Matrix& gate0 = ctx.expert_matrices_host(gate).front();
  if (device_path_fits(ctx, x, n, hidden, gate, up, down))
    moe_on_device(ctx, out, x, n, hidden, routing, gate, up, down);
  else if (n > kDeviceGroupingTokens &&
           tensor_experts_fit(ctx, gate0, ctx.expert_matrices_host(up).front(), ctx.expert_matrices_host(down).front(), x))
    moe_prompt_on_device(ctx, out, x, n, hidden, routing, gate, up, down);
  else
    moe_grouped_on_host(ctx, out, x, n, hidden, routing, gate, up, down);
}

bool moe_experts_and_shared(Context& ctx, float* out, const float* x, int64_t n, int64_t hidden,
                            const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                            const ExpertTable& down, const SharedExpert& shared) {
  if (n == 0 || gate.experts.empty() || routing.expert_ids.dim(1) > kMaxTopK) return false;
  if (!device_path_fits(ctx, x, n, hidden, gate, up, down)) return false;
  const int device = shared.gate->placement.device_index;
  const Matrix* experts[] = {&ctx.expert_matrices_host(gate).front(), &ctx.expert_matrices_host(up).front(),
                             &ctx.expert_matrices_host(down).front()};
  const Weight* shared_weights[] = {shared.gate, shared.up, shared.down};
  for (int i = 0; i < 3; ++i) {
    if (shared_weights[i]->placement.kind != Placement::Kind::Device) return false;
    if (!same_format(matrix_of(*shared_weights[i], device), *experts[i])) return false;
  }
  moe_on_device(ctx, out, x, n, hidden, routing, gate, up, down, &shared);
  return true;
}

}  // namespace glm::cuda
