// The CPU backend: memory (a growing scratch arena and plain allocations) and
// dispatch of each op to its implementation in this folder (a SIMD path when
// one applies, else the reference loop), with shape checks at the boundary.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/chunk_arena.h"
#include "backend/cpu/cpu_ops.h"

namespace glm {
namespace {

void check_same_shape(const char* op, const Shape& a, const Shape& b) {
  GLM_CHECK(a == b, "internal error: ", op, " shapes ", shape_to_string(a), " and ", shape_to_string(b), " differ");
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(Communicator* communicator) : communicator_(communicator) {}
  ~CpuBackend() override {
    scratch_.free_all([](void* chunk) { std::free(chunk); });
    for (void* pairs : scale_pairs_) std::free(pairs);
  }

  std::string name() const override { return "cpu"; }

  // Which kernels the projections take (bench prints it beside its numbers).
  std::string execution_summary() const override {
    const cpu::kernels::Options& o = cpu::kernels::options();
    return std::string("kernels ") + cpu::kernels::isa_name(o.isa) + ", activations " +
           cpu::kernels::activations_name(o.activations) + " (GLM_CPU_ACTIVATIONS)";
  }

  // Weights stay in the mapped file. When the int8 decode kernel will read
  // an affine projection (GLM_CPU_ACTIVATIONS=fast, the default, or int8; AVX512_VNNI or AVX2),
  // its scales and biases are also laid out per block of 16 rows
  // (kernels::fill_block_scale_pairs): 1/9 of the weight's bytes at 4 bits
  // and group 64, in memory this backend owns, so decoding skips a
  // transpose per block. Not for the embedding, which no projection reads.
  Weight place(const Weight& weight) override {
    const int64_t count = weight.name.find("embed_tokens") == std::string::npos
                              ? cpu::kernels::block_scale_pairs_count(weight) : 0;
    if (count == 0) return weight;
    const size_t bytes = (static_cast<size_t>(count) * sizeof(uint32_t) + 63) & ~size_t{63};
    auto* pairs = static_cast<uint32_t*>(std::aligned_alloc(64, bytes));
    GLM_CHECK(pairs, "out of memory allocating ", bytes, " bytes of scale pairs for ", weight.name);
    scale_pairs_.push_back(pairs);
    scale_pair_bytes_ += bytes;
    cpu::kernels::fill_block_scale_pairs(weight, pairs);
    Weight placed = weight;
    placed.format.block_scale_pairs = TensorView(pairs, DType::U32, {count});
    // The kernels read the pairs from now on (the prompt path widens them
    // too), so the weight's own scales and biases, 1/9 of a 4-bit file, need
    // not stay resident as well.
    for (const TensorView* view : {&weight.format.scales, &weight.format.biases}) {
      copied_ranges_.emplace_back(view->data, view->nbytes());
      release_range(copied_ranges_.back());
    }
    return placed;
  }
  void release_copied_pages() override {
    for (const auto& range : copied_ranges_) release_range(range);
  }
  std::string placement_summary() const override {
    if (scale_pairs_.empty()) return "nothing (the CPU reference backend reads the mapped files)";
    return "scales and biases of " + std::to_string(scale_pairs_.size()) +
           " affine projections laid out for the int8 decode kernel (" +
           std::to_string(scale_pair_bytes_ >> 20) + " MiB); weights read from the mapped files";
  }

  // Scratch: chunks of at least 16 MiB kept across steps (ChunkArena), so a
  // steady-state step reuses the same memory and allocates nothing.
  Tensor scratch(const Shape& shape, DType dtype) override {
    Tensor out;
    out.data = scratch_.take(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), [](size_t need) {
      const size_t size = std::max<size_t>(need, size_t{16} << 20);
      void* chunk = std::aligned_alloc(64, size);
      GLM_CHECK(chunk, "out of memory allocating ", size, " bytes of scratch");
      return std::make_pair(chunk, size);
    });
    out.dtype = dtype;
    out.shape = shape;
    return out;
  }
  void reset_scratch() override { scratch_.reset(); }
  ScratchMark scratch_mark() const override { return scratch_.mark(); }
  void scratch_rewind(const ScratchMark& mark) override { scratch_.rewind(mark); }
  Tensor allocate(const Shape& shape, DType dtype) override {
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    Tensor out;
    out.data = std::calloc(std::max<size_t>(bytes, 1), 1);
    GLM_CHECK(out.data, "out of memory allocating ", bytes, " bytes");
    out.dtype = dtype;
    out.shape = shape;
    return out;
  }
  void release(Tensor& tensor) override {
    std::free(tensor.data);
    tensor.data = nullptr;
  }
  void copy_to_host(std::span<float> destination, const Tensor& source) override {
    GLM_CHECK(destination.size() == static_cast<size_t>(source.numel()), "internal error: copy_to_host size");
    std::memcpy(destination.data(), source.f32(), destination.size_bytes());
  }

  void embedding(Tensor out, const Weight& table, std::span<const int32_t> ids) override {
    const int64_t vocab = table.dim(0), hidden = table.dim(1);
    GLM_CHECK(out.dim(0) == static_cast<int64_t>(ids.size()) && out.dim(1) == hidden, "internal error: embedding");
    for (size_t t = 0; t < ids.size(); ++t) {
      GLM_CHECK(ids[t] >= 0 && ids[t] < vocab, "token id ", ids[t], " is outside the vocabulary of ", vocab);
      cpu::dequantize_row(table, ids[t], out.f32() + t * hidden);
    }
  }
  void gather_rows(Tensor out, const Tensor& source, std::span<const int32_t> rows) override {
    const int64_t width = source.dim(-1);
    for (size_t r = 0; r < rows.size(); ++r)
      std::memcpy(out.f32() + r * width, source.f32() + rows[r] * width, sizeof(float) * width);
  }
  void rms_norm(Tensor out, const Tensor& x, const Weight& gamma, float eps) override {
    check_same_shape("rms_norm", out.shape, x.shape);
    GLM_CHECK(shape_numel(gamma.shape) == x.dim(-1), "internal error: rms_norm weight ", shape_to_string(gamma.shape),
              " for rows of ", x.dim(-1));
    cpu::rms_norm(out.f32(), x.f32(), gamma, x.rows(), x.dim(-1), eps);
  }
  void linear(Tensor out, const Tensor& x, const Weight& weight, const Weight* bias) override {
    GLM_CHECK(x.dim(-1) == weight.dim(1) && out.dim(-1) == weight.dim(0) && out.rows() == x.rows(),
              "internal error: linear ", weight.name, " ", shape_to_string(weight.shape), " on ",
              shape_to_string(x.shape), " into ", shape_to_string(out.shape));
    const cpu::SerialBelowMinMacs small(x.rows() * weight.dim(0) * weight.dim(1));
    cpu::linear(out.f32(), x.f32(), x.rows(), weight, bias);
  }
  void add(Tensor out, const Tensor& a, const Tensor& b) override {
    check_same_shape("add", a.shape, b.shape);
    check_same_shape("add", out.shape, a.shape);
    cpu::add(out.f32(), a.f32(), b.f32(), out.numel());
  }
  void swiglu(Tensor out, const Tensor& gate, const Tensor& up) override {
    check_same_shape("swiglu", gate.shape, up.shape);
    check_same_shape("swiglu", out.shape, gate.shape);
    cpu::swiglu(out.f32(), gate.f32(), up.f32(), out.numel());
  }
  void rotary(Tensor x, std::span<const int32_t> positions, int64_t rotary_dim, double theta) override {
    GLM_CHECK(x.shape.size() == 3 && x.dim(0) == static_cast<int64_t>(positions.size()) && rotary_dim % 2 == 0 &&
                  rotary_dim <= x.dim(2),
              "internal error: rotary on ", shape_to_string(x.shape));
    cpu::rotary(x.f32(), x.dim(0), x.dim(1), x.dim(2), positions, rotary_dim, theta);
  }
  void attention(Tensor out, const Tensor& q, const Tensor& k, const Tensor& v, KvLayer& cache,
                 const AttentionPlan& plan, float scale, bool /*kv_written: rewriting is harmless*/) override {
    check_same_shape("attention", out.shape, q.shape);
    check_same_shape("attention", k.shape, v.shape);
    GLM_CHECK(q.dim(1) % k.dim(1) == 0 && static_cast<int64_t>(plan.token_slot.size()) == q.dim(0),
              "internal error: attention shapes ", shape_to_string(q.shape), " ", shape_to_string(k.shape));
    cpu::attention(out.f32(), q.f32(), k.f32(), v.f32(), q.dim(0), q.dim(1), k.dim(1), q.dim(2), cache, plan, scale);
  }
  void copy_kv_block(KvLayer& cache, int32_t from_block, int32_t to_block) override {
    const int64_t block_elements = cache.keys.numel() / cache.keys.dim(0);
    for (Tensor* part : {&cache.keys, &cache.values})
      std::memcpy(part->f32() + to_block * block_elements, part->f32() + from_block * block_elements,
                  sizeof(float) * block_elements);
  }
  void route(Routing& out, const Tensor& router_logits, const Weight& correction_bias,
             const RouterParams& params) override {
    const int64_t n_tokens = router_logits.dim(0), n_experts = router_logits.dim(1);
    GLM_CHECK(shape_numel(correction_bias.shape) == n_experts && out.expert_ids.dim(0) == n_tokens &&
                  out.expert_ids.dim(1) == params.top_k,
              "internal error: route shapes");
    cpu::route(out.expert_ids.i32(), out.weights.f32(), router_logits.f32(), n_tokens, correction_bias, n_experts,
               params);
  }
  void linears(const Tensor& x, std::span<const LinearOutput> outputs) override {
    thread_local std::vector<cpu::kernels::LinearJob> jobs;
    jobs.clear();
    for (const LinearOutput& output : outputs) {
      const Weight& weight = *output.weight;
      GLM_CHECK(x.dim(-1) == weight.dim(1) && output.out.dim(-1) == weight.dim(0) && output.out.rows() == x.rows(),
                "internal error: linear ", weight.name, " ", shape_to_string(weight.shape), " on ",
                shape_to_string(x.shape), " into ", shape_to_string(output.out.shape));
      jobs.push_back({output.out.f32(), x.f32(), x.rows(), &weight, output.bias});
    }
    cpu::linear_many(jobs.data(), static_cast<int64_t>(jobs.size()));
  }
  void moe_experts(Tensor out, const Tensor& x, const Routing& routing, const ExpertTable& gate,
                   const ExpertTable& up, const ExpertTable& down) override {
    check_same_shape("moe_experts", out.shape, x.shape);
    cpu::moe_experts(out.f32(), x.f32(), x.dim(0), x.dim(1), routing, gate, up, down);
  }
  void all_reduce(Tensor x) override {
    if (communicator_ && communicator_->world_size() > 1)
      communicator_->all_reduce_sum(x.f32(), static_cast<size_t>(x.numel()));
  }
  // The reference sampler on the logits where they lie; rows in parallel
  // (each thread keeps its own sort buffers).
  void sample(std::span<int32_t> tokens, const Tensor& logits, std::span<const SamplingRequest> requests) override {
    check_sample_shapes(tokens, logits, requests);
    const int64_t rows = logits.rows(), vocab = logits.dim(-1);
    for (const SamplingRequest& request : requests) check_sampling_request(request, vocab);  // not inside a thread
    const float* values = logits.f32();
#pragma omp parallel for schedule(dynamic) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r)
      tokens[r] = sample_token(std::span<const float>(values + r * vocab, static_cast<size_t>(vocab)), requests[r]);
  }

 private:
  Communicator* communicator_;
  ChunkArena<64> scratch_;
  std::vector<void*> scale_pairs_;  // block_scale_pairs of placed weights
  std::vector<std::pair<const void*, size_t>> copied_ranges_;  // stored bytes those pairs replace

  // The whole pages inside [data, data + bytes) leave this process's memory.
  // MADV_PAGEOUT keeps the contents: a mapped file's pages are read again
  // if touched, heap memory (tests' weights) is swapped or simply kept.
  static void release_range(const std::pair<const void*, size_t>& range) {
#ifdef MADV_PAGEOUT
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(range.first) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(range.first) + range.second) & ~(page - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);  // advice: failure is harmless
#else
    (void)range;
#endif
  }
  size_t scale_pair_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(Communicator* communicator) {
  return std::make_unique<CpuBackend>(communicator);
}

}  // namespace glm
