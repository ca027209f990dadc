// The operation interface between the model and the hardware. The model's
// forward pass is written only in terms of these operations; a backend (cpu/
// today, cuda/ next) implements them and owns the memory activations and the
// KV cache live in. A backend knows nothing about GLM: the ops are generic
// transformer building blocks (norms, projections, rotary, paged attention,
// sigmoid-grouped routing, expert MLPs, token sampling).
//
// Conventions: activations are dense row-major Tensors allocated by the
// backend; shapes are written [rows, ...]. Weights are Weight descriptors
// (core/weight.h) of any float dtype; the reference CPU backend widens them
// to f32 as it reads and accumulates in f32.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/communicator.h"
#include "backend/sampling.h"
#include "core/tensor.h"
#include "core/weight.h"

namespace glm {

// The routing decision for a batch: the explicit value passed from the router
// op to the experts op.
struct Routing {
  Tensor expert_ids;  // [n_tokens, top_k] i32: chosen experts, best first
  Tensor weights;     // [n_tokens, top_k] f32: their mixing weights
};

// Parameters of the sigmoid, group-limited, bias-corrected router
// ("noaux_tc"); docs/model.md walks through the algorithm.
struct RouterParams {
  int64_t n_group = 1;             // experts are split into n_group equal groups
  int64_t topk_group = 1;          // groups that stay eligible
  int64_t top_k = 1;               // experts chosen per token
  bool norm_topk_prob = true;      // renormalise chosen weights to sum 1
  float routed_scaling_factor = 1.0f;
};

// One layer's slice of the paged KV cache: `n_blocks` blocks of `block_size`
// token slots. Slot s lives in block s / block_size at offset s % block_size.
struct KvLayer {
  Tensor keys;    // [n_blocks, block_size, n_kv_heads, head_dim]
  Tensor values;  // [n_blocks, block_size, n_kv_heads, head_dim]
};

// Where each token of a step writes its key/value and what it may attend to.
// Built by the engine's cache manager; the same plan serves every layer.
struct AttentionPlan {
  int64_t block_size = 0;
  std::vector<int32_t> token_sequence;  // [n_tokens] index into block_tables
  std::vector<int32_t> token_position;  // [n_tokens] position within its sequence
  std::vector<int64_t> token_slot;      // [n_tokens] cache slot the token's K/V go to
  std::vector<std::vector<int32_t>> block_tables;  // [n_sequences][blocks] physical block ids
};

// One projection of a shared input (see Backend::linears).
struct LinearOutput {
  Tensor out;                    // [n, out_features]
  const Weight* weight;          // [out_features, in_features]
  const Weight* bias = nullptr;  // [out_features] or null
};

// An always-on expert MLP beside the routed ones: down(silu(gate x) * up x).
struct SharedExpert {
  const Weight* gate;  // [width, hidden]
  const Weight* up;    // [width, hidden]
  const Weight* down;  // [hidden, width]
};

// Device time spent in one kind of op (see Backend::op_profile).
struct OpTime {
  std::string op;             // "linear affine 4-bit g64", "attention", ...
  int64_t calls = 0;
  double device_seconds = 0;  // measured on the device, launch gaps excluded
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  // Scratch tensors live until the next reset_scratch() (the start of a step),
  // so a step allocates nothing once the arena has grown to its peak.
  virtual Tensor scratch(const Shape& shape, DType dtype = DType::F32) = 0;
  virtual void reset_scratch() = 0;
  // A point in the scratch arena. Rewinding to it gives back every scratch
  // tensor taken since, for ops issued afterwards to reuse (a device reuses
  // it in stream order). The model rewinds after each layer, so a step holds
  // one layer's activations rather than every layer's: a 32k-token prompt
  // through 46 layers would otherwise need hundreds of GB.
  struct ScratchMark {
    size_t chunk = 0, used = 0;
  };
  virtual ScratchMark scratch_mark() const { return {}; }
  virtual void scratch_rewind(const ScratchMark&) {}
  // Long-lived memory (the KV cache); zero-filled.
  virtual Tensor allocate(const Shape& shape, DType dtype = DType::F32) = 0;
  virtual void release(Tensor& tensor) = 0;
  virtual void copy_to_host(std::span<float> destination, const Tensor& source) = 0;
  // Waits until every op issued so far has finished (devices run ops
  // asynchronously); for timing, never needed for correctness.
  virtual void synchronize() {}
  // Makes a weight usable by this backend: a device backend uploads it once
  // (returning a descriptor placed on the device), a CPU backend may repack
  // it or return it as it is. placement_summary() says what happened, for `info`.
  virtual Weight place(const Weight& weight) { return weight; }
  // Gives back the pages of stored bytes that place() copied and no kernel
  // reads any more (a bench that touched every page of the checkpoint calls
  // it, so resident memory counts what the kernels use).
  virtual void release_copied_pages() {}
  virtual std::string placement_summary() const { return "nothing (the CPU reference backend reads the mapped files)"; }
  // The yardstick for a device's memory: bytes/s of a large device-to-device
  // copy, reads and writes both counted. 0 for a host backend (the bench
  // measures host read bandwidth itself).
  virtual double measure_copy_bandwidth() { return 0.0; }
  // The yardstick for prompts on a device: FLOP/s of a large dense bf16
  // matrix product (f32 sums) from the vendor library. 0 for a host backend.
  virtual double measure_matmul_rate() { return 0.0; }
  // Per-op timing for benchmarks: while on, a device backend brackets every
  // op with device events; op_profile() waits for the device and returns the
  // totals since the last call (then clears them). A host backend has none.
  virtual void set_op_profiling(bool) {}
  virtual std::vector<OpTime> op_profile() { return {}; }
  // Asynchronous backends, for benchmarks: the host time before each replay
  // of a recorded step during which the device had nothing queued (from the
  // host's last wait for the device to the launch), as a median in
  // microseconds over the replays since reset_host_idle(); -1 when none or
  // not measured (a host backend).
  virtual void reset_host_idle() {}
  virtual double host_idle_median_us() const { return -1.0; }
  // How the backend ran its work so far, for benchmarks and tests (the CUDA
  // backend: graphs captured and replayed); empty when there is nothing to say.
  virtual std::string execution_summary() const { return {}; }

  // ---- ops ----
  // out[t] = table[ids[t]]
  virtual void embedding(Tensor out /*[n, hidden]*/, const Weight& table /*[vocab, hidden]*/,
                         std::span<const int32_t> ids) = 0;
  // out[r] = source[rows[r]]
  virtual void gather_rows(Tensor out /*[m, d]*/, const Tensor& source /*[n, d]*/,
                           std::span<const int32_t> rows) = 0;
  // RMSNorm over the last dimension of x, times gamma. out may alias x.
  virtual void rms_norm(Tensor out /*[rows, d]*/, const Tensor& x /*[rows, d]*/, const Weight& gamma /*[d]*/,
                        float eps) = 0;
  // out = x W^T (+ bias)
  virtual void linear(Tensor out /*[n, out_features]*/, const Tensor& x /*[n, in_features]*/,
                      const Weight& weight /*[out_features, in_features]*/, const Weight* bias /*[out] or null*/) = 0;
  // out = a + b (out may alias a or b)
  virtual void add(Tensor out, const Tensor& a, const Tensor& b) = 0;
  // out = silu(gate) * up
  virtual void swiglu(Tensor out /*[n, width]*/, const Tensor& gate /*[n, width]*/, const Tensor& up /*[n, width]*/) = 0;
  // Rotary embedding in place on the first rotary_dim dims of each head,
  // half-split pairing (dim i with i + rotary_dim/2), frequencies
  // theta^(-2i/rotary_dim); dims past rotary_dim pass through.
  virtual void rotary(Tensor x /*[n, heads, head_dim]*/, std::span<const int32_t> positions /*[n]*/,
                      int64_t rotary_dim, double theta) = 0;
  // Writes k/v of every token to its slot, then causal attention of each
  // query over its sequence's cached positions 0..position. Query head h uses
  // KV head h / (n_heads / n_kv_heads). Softmax in f32.
  // `kv_written`: head_norm_rotary_write_kv has already put k and v in
  // their slots (writing them again would be harmless, only slower).
  virtual void attention(Tensor out /*[n, n_heads, head_dim]*/, const Tensor& q /*[n, n_heads, head_dim]*/,
                         const Tensor& k /*[n, n_kv_heads, head_dim]*/, const Tensor& v /*[n, n_kv_heads, head_dim]*/,
                         KvLayer& cache, const AttentionPlan& plan, float scale, bool kv_written = false) = 0;
  // Copies one cache block to another (copy-on-write after a fork).
  virtual void copy_kv_block(KvLayer& cache, int32_t from_block, int32_t to_block) = 0;
  // Router: logits (f32) -> routing. See RouterParams.
  virtual void route(Routing& out, const Tensor& router_logits /*[n, n_experts]*/,
                     const Weight& correction_bias /*[n_experts]*/, const RouterParams& params) = 0;
  // out = sum_k weights[t,k] * down_e(silu(gate_e x_t) * up_e x_t), e = expert_ids[t,k],
  // over the experts the tables hold (others contribute 0: expert parallelism).
  virtual void moe_experts(Tensor out /*[n, hidden]*/, const Tensor& x /*[n, hidden]*/, const Routing& routing,
                           const ExpertTable& gate /*[E][width, hidden]*/, const ExpertTable& up /*[E][width, hidden]*/,
                           const ExpertTable& down /*[E][hidden, width]*/) = 0;
  // Sums x over the tensor-parallel group; nothing on a single device.
  virtual void all_reduce(Tensor x) = 0;
  // Chooses the next token of each row by the rule of backend/sampling.h
  // (greedy, or temperature, top-k, top-p, min-p and a counter-based draw);
  // only the ids reach the host. Every backend must choose the tokens the
  // reference sample_token chooses from the same logits.
  virtual void sample(std::span<int32_t> tokens /*[rows]*/, const Tensor& logits /*[rows, vocab]*/,
                      std::span<const SamplingRequest> requests /*[rows]*/) = 0;

  // ---- fused ops ----
  // Each equals the plain ops it names (tests/cuda checks a device's version
  // against them); a device backend overrides it to save launches and
  // passes over memory. The defaults call the plain ops.

  // residual += delta, then normed = RMSNorm(residual) * gamma.
  virtual void add_rms_norm(Tensor residual /*[rows, d]*/, Tensor normed /*[rows, d]*/, const Tensor& delta /*[rows, d]*/,
                            const Weight& gamma /*[d]*/, float eps) {
    add(residual, residual, delta);
    rms_norm(normed, residual, gamma, eps);
  }
  // out_i = x W_i^T (+ bias_i) for every output: several projections of one
  // input (q/k/v, gate/up) in one call, so a backend may run them together
  // (the CPU: one parallel region, x quantized once; a GPU: one launch where
  // the weights share a format). Each output is what linear() gives it.
  virtual void linears(const Tensor& x /*[n, in_features]*/, std::span<const LinearOutput> outputs) {
    for (const LinearOutput& output : outputs) linear(output.out, x, *output.weight, output.bias);
  }
  // Per-head RMSNorm of q and of k (each only when its weight is given), then
  // rotary on both (see rotary()).
  virtual void head_norm_rotary(Tensor q /*[n, heads, head_dim]*/, Tensor k /*[n, kv_heads, head_dim]*/,
                                const Weight* q_norm /*[head_dim] or null*/, const Weight* k_norm /*[head_dim] or null*/,
                                float eps, std::span<const int32_t> positions /*[n]*/, int64_t rotary_dim,
                                double theta) {
    if (q_norm) rms_norm(q, q, *q_norm, eps);
    if (k_norm) rms_norm(k, k, *k_norm, eps);
    rotary(q, positions, rotary_dim, theta);
    rotary(k, positions, rotary_dim, theta);
  }
  // head_norm_rotary, then k and v written to their cache slots (plan.token_slot):
  // a device does the three in one kernel, the rotated k going to the cache
  // from where it was just computed. Returns whether it wrote the cache; the
  // default does only head_norm_rotary and leaves the write to attention().
  virtual bool head_norm_rotary_write_kv(Tensor q /*[n, heads, head_dim]*/, Tensor k /*[n, kv_heads, head_dim]*/,
                                         const Tensor& /*v [n, kv_heads, head_dim]*/, const Weight* q_norm,
                                         const Weight* k_norm, float eps, std::span<const int32_t> positions,
                                         int64_t rotary_dim, double theta, KvLayer& /*cache*/,
                                         const AttentionPlan& /*plan*/) {
    head_norm_rotary(q, k, q_norm, k_norm, eps, positions, rotary_dim, theta);
    return false;
  }
  // head_norm_rotary_write_kv at each token's plan.token_position, then
  // attention(): a device may fold the norm, the rotation and the cache write
  // into its decode attention kernel (one launch a layer fewer), leaving q and
  // k unrotated, so after this call they hold nothing to rely on.
  virtual void rotary_attention(Tensor out /*[n, heads, head_dim]*/, Tensor q /*[n, heads, head_dim]*/,
                                Tensor k /*[n, kv_heads, head_dim]*/, const Tensor& v /*[n, kv_heads, head_dim]*/,
                                const Weight* q_norm /*[head_dim] or null*/, const Weight* k_norm /*[head_dim] or null*/,
                                float eps, int64_t rotary_dim, double theta, KvLayer& cache, const AttentionPlan& plan,
                                float scale) {
    const bool kv_written = head_norm_rotary_write_kv(q, k, v, q_norm, k_norm, eps, plan.token_position, rotary_dim,
                                                      theta, cache, plan);
    attention(out, q, k, v, cache, plan, scale, kv_written);
  }
  // moe_experts, then the shared expert's MLP on x added to the result (after
  // the routed sum, as out = routed + shared).
  virtual void moe_experts_and_shared(Tensor out /*[n, hidden]*/, const Tensor& x /*[n, hidden]*/,
                                      const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                                      const ExpertTable& down, const SharedExpert& shared) {
    moe_experts(out, x, routing, gate, up, down);
    const int64_t n = x.dim(0), width = shared.gate->dim(0);
    Tensor gate_out = scratch({n, width});  // [n, width]
    Tensor up_out = scratch({n, width});    // [n, width]
    const LinearOutput projections[] = {{gate_out, shared.gate}, {up_out, shared.up}};
    linears(x, projections);
    swiglu(gate_out, gate_out, up_out);
    Tensor shared_out = scratch(x.shape);  // [n, hidden]
    linear(shared_out, gate_out, *shared.down, nullptr);
    add(out, out, shared_out);
  }
};

// Throws unless `tokens` and `requests` have one entry per row of `logits`
// (Backend::sample's contract).
inline void check_sample_shapes(std::span<const int32_t> tokens, const Tensor& logits,
                                std::span<const SamplingRequest> requests) {
  const int64_t rows = logits.rows();
  GLM_CHECK(static_cast<int64_t>(tokens.size()) == rows && static_cast<int64_t>(requests.size()) == rows,
            "internal error: sample of ", rows, " rows with ", tokens.size(), " tokens and ", requests.size(),
            " requests");
}

// The reference CPU backend (f32 arithmetic, OpenMP threads).
// `communicator` may be null (single device).
std::unique_ptr<Backend> make_cpu_backend(Communicator* communicator = nullptr);

// A backend by name: "cpu", or "cuda" / "cuda:N" when built with CUDA
// (GLM_CUDA); throws naming the device when it is not available.
std::unique_ptr<Backend> make_backend(const std::string& device, Communicator* communicator = nullptr);

}  // namespace glm
