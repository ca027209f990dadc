// The CUDA backend: one GPU, one stream. Owns device memory (a growing scratch
// arena for activations, pooled chunks for uploaded weights, plain allocations
// for the KV cache), pinned staging for the small host inputs of each op, and
// dispatches every Backend op to its launcher (ops.cuh) after the same shape
// checks as the CPU reference. Activations are f32 on the device; weights are
// uploaded once by place() in their stored format (float, mlx affine or FP8;
// kernels dequantize in registers). Steps that repeat exactly (decoding) are
// replayed from CUDA graphs: see submit() and flush().
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/chunk_arena.h"
#include "backend/cuda/ops.cuh"

namespace glm {

namespace cuda {

Matrix matrix_of(const Weight& weight, int device_index) {
  GLM_CHECK(weight.placement.kind == Placement::Kind::Device && weight.placement.device_index == device_index,
            "weight ", weight.name, " is not on cuda:", device_index, " (weights must go through Backend::place)");
  const TensorView& view = weight.view;
  GLM_CHECK(view.contiguous(), "internal error: placed weight ", weight.name, " is strided");
  const WeightFormat& format = weight.format;
  Matrix matrix;
  matrix.data = view.data;
  matrix.dtype = view.dtype;
  matrix.cols = weight.shape.empty() ? 1 : weight.shape.back();
  matrix.rows = weight.shape.empty() ? 1 : shape_numel(weight.shape) / std::max<int64_t>(matrix.cols, 1);
  matrix.kind = format.kind;
  matrix.f32_activations = weight.f32_activations;
  if (format.quantized()) {
    matrix.scales = format.scales.data;
    matrix.scales_dtype = format.scales.dtype;
    matrix.scales_stride = format.scales.shape.empty() ? 1 : format.scales.shape.back();
  }
  if (format.kind == WeightFormat::Kind::Affine) {  // place() interleaved scales and biases: [rows, groups, 2]
    GLM_CHECK(format.biases.empty() && (matrix.scales_dtype == DType::BF16 || matrix.scales_dtype == DType::F32),
              "internal error: affine weight ", weight.name, " was not placed by the CUDA backend");
    matrix.bits = format.bits;
    matrix.group_size = format.group_size;
    for (int shift = 0; shift < 31; ++shift)
      if (int64_t{1} << shift == format.group_size) matrix.group_shift = shift;
    matrix.scales_stride = weight.dim(-1) / format.group_size;
  } else if (format.kind == WeightFormat::Kind::Fp8) {
    matrix.fp8_scale = format.fp8_scale;
    matrix.block_rows = format.block_rows;
    matrix.block_cols = format.block_cols;
  }
  return matrix;
}

}  // namespace cuda

namespace {

constexpr size_t kAlignment = 256;
constexpr size_t kScratchChunk = size_t{64} << 20;   // device scratch grows by at least this
constexpr size_t kStagingChunk = size_t{1} << 20;    // pinned staging grows by at least this
constexpr size_t kWeightChunk = size_t{256} << 20;   // weights are pooled: few cudaMallocs for many tensors

// The device this thread last selected through select_device (-1: none yet).
thread_local int selected_device = -1;

void select_device(int index) {
  if (selected_device != index) {
    CUDA_CHECK(cudaSetDevice(index));
    selected_device = index;
  }
}

// A count set in the environment variable `name`, or `fallback` when unset;
// anything but a whole number >= 0 is an error that says what the count is
// (`meaning`, e.g. "ops (0: segments are not cut)").
int64_t count_from_env(const char* name, int64_t fallback, const char* meaning) {
  const char* text = std::getenv(name);
  if (!text) return fallback;
  char* end = nullptr;
  const int64_t count = std::strtoll(text, &end, 10);
  GLM_CHECK(end != text && *end == '\0' && count >= 0, name, "=", text, ": expected a count of ", meaning);
  return count;
}

// A switch set in the environment variable `name`: true when unset or "1"
// (`on` says what that does; it is the default), false when "0" (`off`);
// anything else is an error naming both.
bool switch_from_env(const char* name, const char* on, const char* off) {
  const char* text = std::getenv(name);
  GLM_CHECK(!text || std::string(text) == "0" || std::string(text) == "1", name, "=", text,
            " is not a mode: use 1 (", on, "; the default) or 0 (", off, ")");
  return !(text && std::string(text) == "0");
}

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

void check_same_shape(const char* op, const Shape& a, const Shape& b) {
  GLM_CHECK(a == b, "internal error: ", op, " shapes ", shape_to_string(a), " and ", shape_to_string(b), " differ");
}

class CudaBackend final : public Backend, public cuda::Context {
 public:
  CudaBackend(int device_index, Communicator* communicator) : index_(device_index), communicator_(communicator) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess)
      fail("device cuda:", device_index, " is not available: ", cudaGetErrorString(status));
    GLM_CHECK(device_index >= 0 && device_index < count, "device cuda:", device_index, " is not available: ", count,
              " CUDA device(s) found");
    select_device(index_);
    CUDA_CHECK(cudaGetDeviceProperties(&properties_, index_));
    multiprocessors = properties_.multiProcessorCount;
    // A blocking stream: it orders with the legacy default stream, so plain
    // cudaMemcpy calls (tests, tools) see every op queued before them.
    CUDA_CHECK(cudaStreamCreate(&stream));
    CUDA_CHECK(cudaEventCreateWithFlags(&staging_done_, cudaEventDisableTiming));
    CUBLAS_CHECK(cublasCreate(&cublas));
    CUBLAS_CHECK(cublasSetStream(cublas, stream));
    // f32 activations are matched against an f32 reference: no TF32.
    CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_PEDANTIC_MATH));
    const char* graphs = std::getenv("GLM_CUDA_GRAPHS");
    graphs_enabled_ = !(graphs && std::string(graphs) == "0");
    piece_ops_ = count_from_env("GLM_CUDA_GRAPH_PIECE_OPS", piece_ops_, "ops (0: segments are not cut)");
    first_piece_ops_ = count_from_env("GLM_CUDA_GRAPH_FIRST_PIECE_OPS", first_piece_ops_,
                                      "ops (0: the first piece after a wait is as long as the others)");
    piece_limit_ = piece_ops_;
    // Programmatic dependent launch needs sm_90; GLM_CUDA_PDL=0 turns it off.
    const char* pdl = std::getenv("GLM_CUDA_PDL");
    programmatic_launch_ = properties_.major >= 9 && !(pdl && std::string(pdl) == "0");
    const char* activations = std::getenv("GLM_CUDA_ACTIVATIONS");
    // int8 by default: what llama.cpp's quantized GEMVs do too, 1.8x the
    // decode speed of int4 weights for ~1e-2 of logit error; FP8 weights get
    // f16 activations in this mode (1.6x, ~1e-3; docs/cuda.md).
    const std::string activation_mode = activations ? activations : "int8";
    GLM_CHECK(activation_mode == "f32" || activation_mode == "int8", "GLM_CUDA_ACTIVATIONS=", activation_mode,
              " is not a mode: use int8 (4- and 8-bit affine weights on dp4a, FP8 weights on f16; the default) or f32 (exact)");
    int8_activations = activation_mode == "int8";
    const char* prompts = std::getenv("GLM_CUDA_PROMPTS");
    const std::string prompt_mode = prompts ? prompts : "tensor";
    GLM_CHECK(prompt_mode == "tensor" || prompt_mode == "simt", "GLM_CUDA_PROMPTS=", prompt_mode,
              " is not a mode: use tensor (bf16 tensor cores, the default) or simt (f32 activations, exact)");
    tensor_core_prompts = prompt_mode == "tensor";
    const char* wgmma = std::getenv("GLM_CUDA_WGMMA");
    const std::string wgmma_mode = wgmma ? wgmma : "1";
    GLM_CHECK(wgmma_mode == "1" || wgmma_mode == "0", "GLM_CUDA_WGMMA=", wgmma_mode,
              " is not a mode: use 1 (prompt GEMMs on wgmma where the device is sm_90 and the binary has sm_90a "
              "code; the default) or 0 (mma.sync)");
    wgmma_binary_ = properties_.major == 9 && cuda::wgmma_compiled(stream);
    wgmma_prompts = tensor_core_prompts && wgmma_binary_ && wgmma_mode == "1";
    const char* registers = std::getenv("GLM_CUDA_REGISTER_WEIGHTS");
    const std::string registers_mode = registers ? registers : "1";
    GLM_CHECK(registers_mode == "1" || registers_mode == "0", "GLM_CUDA_REGISTER_WEIGHTS=", registers_mode,
              " is not a mode: use 1 (prompt GEMMs on quantized weights widen them into wgmma's registers; the "
              "default) or 0 (into a bf16 tile in shared memory)");
    register_weight_prompts = wgmma_prompts && registers_mode == "1";
    const char* short_contexts = std::getenv("GLM_CUDA_SHORT_ATTENTION");
    short_attention = !(short_contexts && std::string(short_contexts) == "0");
    const char* fold = std::getenv("GLM_CUDA_FOLD_ROTARY");
    fold_rotary = !(fold && std::string(fold) == "0");
    short_slice_min =
        count_from_env("GLM_CUDA_SHORT_SLICE", short_slice_min, "positions (0: short contexts whole)");
    gate_up_prepares = switch_from_env(
        "GLM_CUDA_GATE_UP_PREPARES",
        "at one token the experts' gate/up kernel writes the down kernel's quantized input",
        "a quantize kernel makes it");
    shared_early = switch_from_env("GLM_CUDA_SHARED_EARLY",
                                   "at one token the shared expert's gate/up blocks start while the router runs",
                                   "they wait for the routing like the routed experts' blocks");
    combine_early = switch_from_env(
        "GLM_CUDA_COMBINE_EARLY",
        "the experts' combine ranks each token's experts before waiting for the down kernel", "after");
    if (const char* rows = std::getenv("GLM_CUDA_EXPERT_TILE_ROWS")) {
      const std::string value = rows;
      GLM_CHECK(value == "32" || value == "64" || value == "128", "GLM_CUDA_EXPERT_TILE_ROWS=", value,
                ": expected 32, 64 or 128 (rows of a prompt's expert tiles; unset: chosen per call)");
      expert_tile_rows = std::stoi(value);
    }
  }

  ~CudaBackend() override {
    try {
      select_device(index_);
    } catch (const Error&) {
    }
    cudaStreamSynchronize(stream);
    for (auto& entry : graphs_)
      if (entry.second.exec) cudaGraphExecDestroy(entry.second.exec);
    scratch_.free_all([](void* p) { cudaFree(p); });
    for (auto& slot : prepared_forms_) slot.free_all([](void* p) { cudaFree(p); });
    uploads_.free_all([](void* p) { cudaFree(p); });
    staging_.free_all([](void* p) { cudaFreeHost(p); });
    weights_.free_all([](void* p) { cudaFree(p); });
    for (auto& entry : inverse_frequencies_) cudaFree(entry.second);
    for (cudaEvent_t event : profile_events_) cudaEventDestroy(event);
    for (void* p : allocations_) cudaFree(p);
    cublasDestroy(cublas);
    cudaEventDestroy(staging_done_);
    cudaStreamDestroy(stream);
  }

  std::string name() const override { return "cuda:" + std::to_string(index_); }

  // ---- cuda::Context ----
  void* scratch_bytes(size_t bytes) override {
    return scratch_.take(bytes, [&](size_t need) {
      const size_t size = std::max(need, kScratchChunk);
      return std::make_pair(device_malloc(size, "activation scratch"), size);
    });
  }
  void* prepared_form_bytes(size_t bytes) override {
    // Reset with the scratch, so every step hands out the same addresses
    // (a replayed graph's arguments stay right).
    ChunkArena<kAlignment>& slot = prepared_forms_[prepared_form_count_++ % 2];
    slot.reset();
    return slot.take(bytes, [&](size_t need) {
      const size_t size = std::max(need, kStagingChunk);
      return std::make_pair(device_malloc(size, "prepared activations"), size);
    });
  }
  // Every layer uploads the same small step inputs (positions, slots, block
  // tables): identical bytes uploaded earlier in the step are reused, so a
  // step copies each once instead of once per layer.
  void* upload_bytes(const void* host, size_t bytes) override {
    for (size_t i = 0; i < step_upload_count_; ++i) {
      const StepUpload& earlier = step_uploads_[i];
      if (earlier.bytes.size() == bytes && std::memcmp(earlier.bytes.data(), host, bytes) == 0) return earlier.device;
    }
    // Uploads have their own arena: a layer's scratch is rewound after the
    // layer, but an upload may be reused by every later layer of the step.
    void* device = uploads_.take(bytes, [&](size_t need) {
      const size_t size = std::max(need, kStagingChunk);
      return std::make_pair(device_malloc(size, "step inputs"), size);
    });
    if (bytes == 0) return device;
    void* pinned = staging_.take(bytes, [&](size_t need) {
      const size_t size = std::max(need, kStagingChunk);
      void* chunk = nullptr;
      CUDA_CHECK(cudaMallocHost(&chunk, size));
      return std::make_pair(chunk, size);
    });
    std::memcpy(pinned, host, bytes);
    cuda::copy_async(*this, device, pinned, bytes, cudaMemcpyHostToDevice);
    staging_pending_ = true;
    if (bytes <= kReusedUploadBytes) {  // pooled records: their buffers keep their capacity across steps
      if (step_upload_count_ == step_uploads_.size()) step_uploads_.emplace_back();
      StepUpload& upload = step_uploads_[step_upload_count_++];
      upload.bytes.assign(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
      upload.device = device;
    }
    return device;
  }
  void download_bytes(void* host, const void* device, size_t bytes) override {
    flush();
    CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    host_waited();
  }

  // Stream work runs at once, or, in a segment expected to repeat, is kept
  // until flush() decides between a graph replay, a capture and eager runs.
  void submit(cuda::StreamWork work, uint64_t signature, bool capturable) override {
    cuda::Signature mixed{segment_signature_};
    mixed.add_word(signature);
    segment_signature_ = mixed.value;
    segment_capturable_ = segment_capturable_ && capturable;
    ++segment_ops_;
    ++submitted_ops;
    if (deferring_) {
      pending_.push_back(std::move(work));
    } else {
      work(stream);
      last_wait_.reset();  // the device has work again (host_idle_median_us)
    }
    // A recorded segment's pieces of piece_ops_ ops are launched as they are
    // complete, so the device runs one piece while the host records the next
    // (a decode step's recording is otherwise device idle time). After a
    // wait the pieces start short and double (piece_limit_), so the device
    // starts sooner and each piece it runs outlasts the next one's recording.
    if (piece_ops_ > 0 && segment_ops_ >= piece_limit_) flush();
  }
  // The host has just waited for the device (a download, a synchronisation):
  // what the host records next is device idle time until its first launch.
  void host_waited() {
    last_wait_ = std::chrono::steady_clock::now();
    piece_limit_ = first_piece_ops_ > 0 ? std::min(first_piece_ops_, piece_ops_) : piece_ops_;
  }

  bool programmatic_launch() const override { return programmatic_launch_; }

  const cuda::Matrix* expert_matrices(const ExpertTable& table, const Weight* appended) override {
    return expert_table(table, appended).device;
  }
  const std::vector<cuda::Matrix>& expert_matrices_host(const ExpertTable& table) override {
    return expert_table(table).host;
  }

  // ---- memory ----
  Tensor scratch(const Shape& shape, DType dtype) override {
    select_device(index_);  // allocating writes nothing: prepared activations stay
    Tensor out;
    out.data = scratch_bytes(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
    out.dtype = dtype;
    out.shape = shape;
    return out;
  }
  ScratchMark scratch_mark() const override { return scratch_.mark(); }
  void scratch_rewind(const ScratchMark& mark) override {
    // A prepared form whose source is handed out again would describe a
    // tensor that no longer exists; forms made from older tensors stay.
    std::erase_if(prepared_activations, [&](const Prepared& p) { return scratch_.taken_since(mark, p.source); });
    scratch_.rewind(mark);
  }
  void reset_scratch() override {
    select();
    flush();
    // Device scratch is reused in stream order; pinned staging is reused by
    // the host, so the copies out of it must have finished.
    if (staging_pending_) {
      CUDA_CHECK(cudaEventRecord(staging_done_, stream));
      CUDA_CHECK(cudaEventSynchronize(staging_done_));
    }
    staging_pending_ = false;
    scratch_.reset();
    prepared_form_count_ = 0;
    uploads_.reset();
    staging_.reset();
    step_upload_count_ = 0;
  }
  Tensor allocate(const Shape& shape, DType dtype) override {
    select_device(index_);  // allocating writes nothing: prepared activations stay
    flush();
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    Tensor out;
    out.data = device_malloc(std::max<size_t>(bytes, 1), "the KV cache");
    CUDA_CHECK(cudaMemsetAsync(out.data, 0, bytes, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    out.dtype = dtype;
    out.shape = shape;
    allocations_.push_back(out.data);
    return out;
  }
  void release(Tensor& tensor) override {
    select();
    flush();
    auto found = std::find(allocations_.begin(), allocations_.end(), tensor.data);
    GLM_CHECK(found != allocations_.end() || tensor.data == nullptr,
              "internal error: release of memory cuda:", index_, " did not allocate");
    if (found != allocations_.end()) {
      CUDA_CHECK(cudaFree(tensor.data));
      allocations_.erase(found);
    }
    tensor.data = nullptr;
  }
  void synchronize() override {
    select_device(index_);
    flush();
    CUDA_CHECK(cudaStreamSynchronize(stream));
    host_waited();
  }
  void reset_host_idle() override { host_idle_us_.clear(); }
  double host_idle_median_us() const override {
    if (host_idle_us_.empty()) return -1.0;
    std::vector<double> gaps = host_idle_us_;
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    return gaps[gaps.size() / 2];
  }
  void copy_to_host(std::span<float> destination, const Tensor& source) override {
    select_device(index_);
    GLM_CHECK(destination.size() == static_cast<size_t>(source.numel()), "internal error: copy_to_host size");
    download_bytes(destination.data(), source.f32(), destination.size_bytes());
  }

  // Uploads a weight once, in its stored format (float values, affine words
  // with their scales and biases, FP8 bytes with their scales), packing
  // strided views (tensor-parallel column slices) into dense rows.
  Weight place(const Weight& weight) override {
    select();
    flush();
    if (weight.placement.kind == Placement::Kind::Device) {
      GLM_CHECK(weight.placement.device_index == index_, "weight ", weight.name, " is on cuda:",
                weight.placement.device_index, ", not on ", name());
      return weight;
    }
    const WeightFormat& format = weight.format;
    const DType stored = weight.view.dtype;
    switch (format.kind) {
      case WeightFormat::Kind::Float:
        GLM_CHECK(stored == DType::F32 || stored == DType::BF16 || stored == DType::F16, "weight ", weight.name,
                  ": dtype ", dtype_name(stored), " is not supported on CUDA");
        break;
      case WeightFormat::Kind::Affine:
        GLM_CHECK(stored == DType::U32 && format.bits >= 2 && format.bits <= 8 && format.group_size > 0 &&
                      weight.dim(-1) % format.group_size == 0,
                  "weight ", weight.name, ": ", format.describe(), " stored as ", dtype_name(stored),
                  " is not supported on CUDA");
        break;
      case WeightFormat::Kind::Fp8:
        GLM_CHECK(stored == DType::F8_E4M3, "weight ", weight.name, ": FP8 stored as ", dtype_name(stored),
                  " is not supported on CUDA");
        break;
    }
    Weight placed = weight;
    placed.view = upload_view(weight.view, weight.name);
    if (format.kind == WeightFormat::Kind::Affine) {
      placed.format.scales = upload_scale_bias_pairs(format, weight.name);
      placed.format.biases = TensorView();
    } else if (format.quantized()) {
      placed.format.scales = upload_view(format.scales, weight.name + " scales");
    }
    placed.placement = Placement{Placement::Kind::Device, index_};
    ++uploaded_count_;
    return placed;
  }
  void set_op_profiling(bool on) override {
    select();
    flush();
    profiling_ = on;
    deferring_ = false;
  }
  std::vector<OpTime> op_profile() override {
    select();
    flush();
    CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<OpTime> totals;
    for (const TimedOp& timed : timed_ops_) {
      float milliseconds = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&milliseconds, profile_events_[timed.start], profile_events_[timed.start + 1]));
      auto found = std::find_if(totals.begin(), totals.end(), [&](const OpTime& t) { return t.op == timed.op; });
      if (found == totals.end()) found = totals.insert(totals.end(), OpTime{timed.op, 0, 0.0});
      ++found->calls;
      found->device_seconds += milliseconds * 1e-3;
    }
    timed_ops_.clear();
    return totals;
  }

  double measure_matmul_rate() override {
    select();
    flush();
    // 8192^3 bf16 products in cuBLAS's default math (tensor cores), on random
    // bits (zeros run faster than real data), best of 5 after a warm-up.
    constexpr int kSize = 8192, kRuns = 5;
    const size_t count = size_t{kSize} * kSize;
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (free_bytes < count * 8 + (size_t{256} << 20)) return 0.0;
    auto* a = static_cast<__nv_bfloat16*>(device_malloc(count * 2, "the matmul-rate yardstick"));
    auto* b = static_cast<__nv_bfloat16*>(device_malloc(count * 2, "the matmul-rate yardstick"));
    auto* c = static_cast<float*>(device_malloc(count * 4, "the matmul-rate yardstick"));
    std::vector<uint16_t> host(count);
    uint64_t state = 0x9e3779b97f4a7c15ull;
    for (uint16_t& value : host) {  // bf16 in [-1, 1): sign, exponent 119-126, random mantissa
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const uint32_t bits = static_cast<uint32_t>(state >> 33);
      value = static_cast<uint16_t>(((bits & 1u) << 15) | ((119u + (bits >> 1) % 8u) << 7) | ((bits >> 4) & 0x7fu));
    }
    CUDA_CHECK(cudaMemcpy(a, host.data(), count * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(b, host.data(), count * 2, cudaMemcpyHostToDevice));
    CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    const float one = 1.0f, zero = 0.0f;
    float best = 0.0f;
    for (int run = 0; run <= kRuns; ++run) {
      CUDA_CHECK(cudaEventRecord(start, stream));
      CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, kSize, kSize, kSize, &one, a, CUDA_R_16BF, kSize, b,
                                CUDA_R_16BF, kSize, &zero, c, CUDA_R_32F, kSize, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float milliseconds = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
      if (run > 0 && (best == 0.0f || milliseconds < best)) best = milliseconds;
    }
    CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_PEDANTIC_MATH));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return 2.0 * kSize * static_cast<double>(kSize) * kSize / (best * 1e-3);
  }

  double measure_copy_bandwidth() override {
    select();
    flush();
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    // 1 GiB each way, far past the 50 MB L2; less when memory is short.
    const size_t bytes = std::min<size_t>(size_t{1} << 30, free_bytes / 4) & ~size_t{255};
    if (bytes == 0) return 0.0;
    void* source = device_malloc(bytes, "the copy-bandwidth yardstick");
    void* destination = try_malloc(bytes);
    if (!destination) {
      cudaFree(source);
      out_of_memory(bytes, "the copy-bandwidth yardstick");
    }
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    CUDA_CHECK(cudaMemsetAsync(source, 1, bytes, stream));
    CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, stream));  // warm-up
    constexpr int kCopies = 10;
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int i = 0; i < kCopies; ++i)
      CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, stream));
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float milliseconds = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaFree(source);
    cudaFree(destination);
    return 2.0 * static_cast<double>(bytes) * kCopies / (milliseconds * 1e-3);
  }
  std::string execution_summary() const override {
    std::ostringstream out;
    out << "programmatic dependent launch " << (programmatic_launch_ ? "on" : "off") << "; CUDA graphs "
        << (graphs_enabled_ ? "on" : "off (GLM_CUDA_GRAPHS=0)") << ": " << graphs_captured_
        << " captured, " << graph_replays_ << " replays, " << eager_segments_ << " segments run op by op; "
        << (int8_activations ? "int8 activations for 4/8-bit affine weights and f16 for FP8 (GLM_CUDA_ACTIVATIONS=int8)"
                             : "f32 activations (GLM_CUDA_ACTIVATIONS=f32)")
        << "; quantized activations written by their producer for " << prepared_uses << " GEMV launches"
        << " (the experts' gate/up kernel wrote it for the down kernel " << gate_up_preparing_launches << " times)"
        << "; the shared expert started beside the router " << shared_early_launches << " times"
        << "; prompts on "
        << (!tensor_core_prompts ? "SIMT kernels, f32 (GLM_CUDA_PROMPTS=simt)"
            : register_weight_prompts
                ? "tensor cores (wgmma), bf16 operands, quantized weights widened into registers"
            : wgmma_prompts ? "tensor cores (wgmma), bf16 operands"
            : properties_.major == 9 && !wgmma_binary_
                ? "tensor cores (mma.sync: this binary has no sm_90a code for wgmma), bf16 operands"
                : "tensor cores (mma.sync), bf16 operands");
    return out.str();
  }
  std::string placement_summary() const override {
    std::ostringstream out;
    out << "uploaded " << gib(uploaded_bytes_) << " in " << uploaded_count_ << " weights to " << name() << " ("
        << properties_.name << ", " << gib(properties_.totalGlobalMem) << ")";
    return out.str();
  }

  // ---- ops ----
  void embedding(Tensor out, const Weight& table, std::span<const int32_t> ids) override {
    select();
    ProfileScope scope(*this, "embedding");
    const cuda::Matrix matrix = cuda::matrix_of(table, index_);
    const int64_t vocab = matrix.rows, hidden = matrix.cols;
    GLM_CHECK(out.dim(0) == static_cast<int64_t>(ids.size()) && out.dim(1) == hidden, "internal error: embedding");
    for (int32_t id : ids) GLM_CHECK(id >= 0 && id < vocab, "token id ", id, " is outside the vocabulary of ", vocab);
    if (ids.empty()) return;
    cuda::embedding(*this, out.f32(), matrix, upload(ids), static_cast<int64_t>(ids.size()));
  }
  void gather_rows(Tensor out, const Tensor& source, std::span<const int32_t> rows) override {
    select();
    ProfileScope scope(*this, "gather_rows");
    const int64_t width = source.dim(-1), available = source.rows();
    GLM_CHECK(out.dim(-1) == width && out.rows() == static_cast<int64_t>(rows.size()),
              "internal error: gather_rows shapes");
    for (int32_t row : rows) GLM_CHECK(row >= 0 && row < available, "internal error: gather_rows row ", row);
    if (rows.empty()) return;
    cuda::gather_rows(*this, out.f32(), source.f32(), upload(rows), static_cast<int64_t>(rows.size()), width);
  }
  void rms_norm(Tensor out, const Tensor& x, const Weight& gamma, float eps) override {
    select();
    ProfileScope scope(*this, "rms_norm");
    check_same_shape("rms_norm", out.shape, x.shape);
    GLM_CHECK(shape_numel(gamma.shape) == x.dim(-1), "internal error: rms_norm weight ", shape_to_string(gamma.shape),
              " for rows of ", x.dim(-1));
    cuda::rms_norm(*this, out.f32(), x.f32(), cuda::matrix_of(gamma, index_), x.rows(), x.dim(-1), eps);
  }
  void linear(Tensor out, const Tensor& x, const Weight& weight, const Weight* bias) override {
    select_for_gemv({&out});
    ProfileScope scope(*this, x.rows() <= 8 ? "linear (n <= 8)" : "linear (n > 8)", &weight);
    cuda::Matrix bias_matrix;
    const cuda::LinearTarget target = linear_target(x, {out, &weight, bias}, bias_matrix);
    cuda::linear(*this, target.out, x.f32(), x.rows(), target.weight, target.bias);
  }
  void add(Tensor out, const Tensor& a, const Tensor& b) override {
    select();
    ProfileScope scope(*this, "add");
    check_same_shape("add", a.shape, b.shape);
    check_same_shape("add", out.shape, a.shape);
    cuda::add(*this, out.f32(), a.f32(), b.f32(), out.numel());
  }
  void swiglu(Tensor out, const Tensor& gate, const Tensor& up) override {
    select();
    ProfileScope scope(*this, "swiglu");
    check_same_shape("swiglu", gate.shape, up.shape);
    check_same_shape("swiglu", out.shape, gate.shape);
    cuda::swiglu(*this, out.f32(), gate.f32(), up.f32(), out.numel());
  }
  void rotary(Tensor x, std::span<const int32_t> positions, int64_t rotary_dim, double theta) override {
    select();
    ProfileScope scope(*this, "rotary");
    GLM_CHECK(x.shape.size() == 3 && x.dim(0) == static_cast<int64_t>(positions.size()) && rotary_dim % 2 == 0 &&
                  rotary_dim <= x.dim(2),
              "internal error: rotary on ", shape_to_string(x.shape));
    if (positions.empty() || rotary_dim == 0) return;
    cuda::rotary(*this, x.f32(), upload(positions), inverse_frequency(rotary_dim, theta), x.dim(0), x.dim(1), x.dim(2),
                 rotary_dim);
  }
  void attention(Tensor out, const Tensor& q, const Tensor& k, const Tensor& v, KvLayer& cache,
                 const AttentionPlan& plan, float scale, bool kv_written) override {
    select();
    ProfileScope scope(*this, "attention");
    check_same_shape("attention", out.shape, q.shape);
    check_same_shape("attention", k.shape, v.shape);
    GLM_CHECK(q.dim(1) % k.dim(1) == 0 && static_cast<int64_t>(plan.token_slot.size()) == q.dim(0),
              "internal error: attention shapes ", shape_to_string(q.shape), " ", shape_to_string(k.shape));
    cuda::attention(*this, out.f32(), q.f32(), k.f32(), v.f32(), q.dim(0), q.dim(1), k.dim(1), q.dim(2), cache, plan,
                    scale, kv_written);
  }
  void copy_kv_block(KvLayer& cache, int32_t from_block, int32_t to_block) override {
    select();
    cuda::copy_kv_block(*this, cache, from_block, to_block);
  }
  void route(Routing& out, const Tensor& router_logits, const Weight& correction_bias,
             const RouterParams& params) override {
    select_for_gemv({&out.expert_ids, &out.weights});
    ProfileScope scope(*this, "route");
    const int64_t n_tokens = router_logits.dim(0), n_experts = router_logits.dim(1);
    GLM_CHECK(shape_numel(correction_bias.shape) == n_experts && out.expert_ids.dim(0) == n_tokens &&
                  out.expert_ids.dim(1) == params.top_k && out.weights.dim(0) == n_tokens &&
                  out.weights.dim(1) == params.top_k,
              "internal error: route shapes");
    GLM_CHECK(params.n_group >= 1 && n_experts % params.n_group == 0 && params.top_k >= 1 &&
                  params.top_k <= n_experts && params.topk_group >= 1 && params.topk_group <= params.n_group,
              "router parameters (n_group ", params.n_group, ", topk_group ", params.topk_group, ", top_k ",
              params.top_k, ") do not fit ", n_experts, " experts");
    if (n_tokens == 0) return;
    cuda::route(*this, out.expert_ids.i32(), out.weights.f32(), router_logits.f32(),
                cuda::matrix_of(correction_bias, index_), n_tokens, n_experts, params);
  }
  // Sampling on the device (sampling.cu): only the chosen ids are downloaded.
  void sample(std::span<int32_t> tokens, const Tensor& logits, std::span<const SamplingRequest> requests) override {
    select();
    ProfileScope scope(*this, "sample");
    check_sample_shapes(tokens, logits, requests);
    const int64_t rows = logits.rows(), vocab = logits.dim(-1);
    int32_t* device_tokens = static_cast<int32_t*>(scratch_bytes(tokens.size_bytes() + sizeof(int32_t)));
    cuda::sample(*this, device_tokens, logits.f32(), rows, vocab, requests);
    if (rows > 0) download_bytes(tokens.data(), device_tokens, tokens.size_bytes());
  }
  void moe_experts(Tensor out, const Tensor& x, const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                   const ExpertTable& down) override {
    select_for_gemv({&out});
    ProfileScope scope(*this, "moe_experts", gate.experts.empty() ? nullptr : &gate.experts.front());
    check_same_shape("moe_experts", out.shape, x.shape);
    GLM_CHECK(routing.expert_ids.dim(0) == x.dim(0) && routing.weights.shape == routing.expert_ids.shape,
              "internal error: moe_experts routing shapes");
    cuda::moe_experts(*this, out.f32(), x.f32(), x.dim(0), x.dim(1), routing, gate, up, down);
  }
  // ---- fused ops ----
  void moe_experts_and_shared(Tensor out, const Tensor& x, const Routing& routing, const ExpertTable& gate,
                              const ExpertTable& up, const ExpertTable& down, const SharedExpert& shared) override {
    select_for_gemv({&out});
    {
      ProfileScope scope(*this, "moe_experts + shared", gate.experts.empty() ? nullptr : &gate.experts.front());
      check_same_shape("moe_experts", out.shape, x.shape);
      GLM_CHECK(routing.expert_ids.dim(0) == x.dim(0) && routing.weights.shape == routing.expert_ids.shape,
                "internal error: moe_experts routing shapes");
      if (cuda::moe_experts_and_shared(*this, out.f32(), x.f32(), x.dim(0), x.dim(1), routing, gate, up, down,
                                       shared))
        return;
    }
    Backend::moe_experts_and_shared(out, x, routing, gate, up, down, shared);
  }
  void add_rms_norm(Tensor residual, Tensor normed, const Tensor& delta, const Weight& gamma, float eps) override {
    select();
    ProfileScope scope(*this, "add_rms_norm");
    check_same_shape("add_rms_norm", residual.shape, delta.shape);
    check_same_shape("add_rms_norm", normed.shape, residual.shape);
    GLM_CHECK(shape_numel(gamma.shape) == residual.dim(-1), "internal error: add_rms_norm weight ",
              shape_to_string(gamma.shape), " for rows of ", residual.dim(-1));
    cuda::add_rms_norm(*this, residual.f32(), normed.f32(), delta.f32(), cuda::matrix_of(gamma, index_),
                       residual.rows(), residual.dim(-1), eps);
  }
  void linears(const Tensor& x, std::span<const LinearOutput> outputs) override {
    select_for_gemv({});
    for (const LinearOutput& output : outputs) select_for_gemv({&output.out});
    ProfileScope scope(*this, x.rows() <= 8 ? "linears (n <= 8)" : "linears (n > 8)",
                       outputs.empty() ? nullptr : outputs.front().weight);
    GLM_CHECK(outputs.size() <= 8, "internal error: linears of ", outputs.size(), " outputs");
    cuda::LinearTarget targets[8];
    cuda::Matrix biases[8];
    for (size_t i = 0; i < outputs.size(); ++i) targets[i] = linear_target(x, outputs[i], biases[i]);
    cuda::linears(*this, x.f32(), x.rows(), std::span<const cuda::LinearTarget>(targets, outputs.size()));
  }
  void head_norm_rotary(Tensor q, Tensor k, const Weight* q_norm, const Weight* k_norm, float eps,
                        std::span<const int32_t> positions, int64_t rotary_dim, double theta) override {
    select();
    ProfileScope scope(*this, "head_norm_rotary");
    head_norm_rotary_on_device(q, k, q_norm, k_norm, eps, positions, rotary_dim, theta, {});
  }
  bool head_norm_rotary_write_kv(Tensor q, Tensor k, const Tensor& v, const Weight* q_norm, const Weight* k_norm,
                                 float eps, std::span<const int32_t> positions, int64_t rotary_dim, double theta,
                                 KvLayer& cache, const AttentionPlan& plan) override {
    select();
    ProfileScope scope(*this, "head_norm_rotary + KV write");
    check_same_shape("head_norm_rotary_write_kv", k.shape, v.shape);
    GLM_CHECK(cache.keys.shape.size() == 4 && cache.keys.dim(2) == k.dim(1) && cache.keys.dim(3) == k.dim(2) &&
                  cache.values.shape == cache.keys.shape && cache.keys.dtype == DType::F32 &&
                  static_cast<int64_t>(plan.token_slot.size()) == k.dim(0),
              "internal error: KV cache ", shape_to_string(cache.keys.shape), " for k ", shape_to_string(k.shape));
    const int64_t total_slots = cache.keys.dim(0) * cache.keys.dim(1);
    for (int64_t slot : plan.token_slot)
      GLM_CHECK(slot >= 0 && slot < total_slots, "internal error: KV slot ", slot, " outside the cache");
    cuda::KvWrite kv;
    kv.keys = cache.keys.f32();
    kv.values = cache.values.f32();
    kv.v = v.f32();
    kv.slots = upload(std::span<const int64_t>(plan.token_slot));
    head_norm_rotary_on_device(q, k, q_norm, k_norm, eps, positions, rotary_dim, theta, kv);
    return true;
  }
  // attention() takes the head norm, rotary and KV write along
  // (cuda::RotaryFold): its decode kernel folds them in where it can.
  void rotary_attention(Tensor out, Tensor q, Tensor k, const Tensor& v, const Weight* q_norm, const Weight* k_norm,
                        float eps, int64_t rotary_dim, double theta, KvLayer& cache, const AttentionPlan& plan,
                        float scale) override {
    select();
    ProfileScope scope(*this, "head_norm_rotary + attention");
    check_same_shape("rotary_attention", out.shape, q.shape);
    check_same_shape("rotary_attention", k.shape, v.shape);
    GLM_CHECK(static_cast<int64_t>(plan.token_slot.size()) == q.dim(0) && q.dim(1) % k.dim(1) == 0 &&
                  cache.keys.dtype == DType::F32,
              "internal error: rotary_attention on ", shape_to_string(q.shape), " and ", shape_to_string(k.shape));
    const cuda::RotaryFold fold = head_rotation("rotary_attention", q, k, q_norm, k_norm, eps, rotary_dim, theta);
    cuda::attention(*this, out.f32(), q.f32(), k.f32(), v.f32(), q.dim(0), q.dim(1), k.dim(1), q.dim(2), cache, plan,
                    scale, /*kv_written=*/false, &fold);
  }
  // What rotating q [n, heads, D] and k [n, kv_heads, D] takes on the device
  // (the head norms' gammas, the inverse frequencies), after checking the
  // shapes: for head_norm_rotary's kernel and for attention's fold of it.
  cuda::RotaryFold head_rotation(const char* op, const Tensor& q, const Tensor& k, const Weight* q_norm,
                                 const Weight* k_norm, float eps, int64_t rotary_dim, double theta) {
    GLM_CHECK(q.shape.size() == 3 && k.shape.size() == 3 && k.dim(0) == q.dim(0) && k.dim(2) == q.dim(2) &&
                  rotary_dim % 2 == 0 && rotary_dim <= q.dim(2),
              "internal error: ", op, " on ", shape_to_string(q.shape), " and ", shape_to_string(k.shape));
    for (const Weight* gamma : {q_norm, k_norm})
      GLM_CHECK(!gamma || shape_numel(gamma->shape) == q.dim(2), "internal error: head norm weight ",
                shape_to_string(gamma->shape), " for heads of ", q.dim(2));
    cuda::RotaryFold rotation;
    if (q_norm) rotation.q_gamma = cuda::matrix_of(*q_norm, index_);
    if (k_norm) rotation.k_gamma = cuda::matrix_of(*k_norm, index_);
    rotation.eps = eps;
    rotation.inverse_frequency = rotary_dim > 0 ? inverse_frequency(rotary_dim, theta) : nullptr;
    rotation.rotary_dim = rotary_dim;
    return rotation;
  }
  void head_norm_rotary_on_device(Tensor q, Tensor k, const Weight* q_norm, const Weight* k_norm, float eps,
                                  std::span<const int32_t> positions, int64_t rotary_dim, double theta,
                                  const cuda::KvWrite& kv) {
    const cuda::RotaryFold rotation = head_rotation("head_norm_rotary", q, k, q_norm, k_norm, eps, rotary_dim, theta);
    GLM_CHECK(q.dim(0) == static_cast<int64_t>(positions.size()), "internal error: head_norm_rotary on ",
              q.dim(0), " tokens with ", positions.size(), " positions");
    if (positions.empty()) return;
    cuda::head_norm_rotary(*this, q.f32(), k.f32(), rotation.q_gamma, rotation.k_gamma, eps, upload(positions),
                           rotation.inverse_frequency, q.dim(0), q.dim(1), k.dim(1), q.dim(2), rotary_dim, kv);
  }

  // One GPU: nothing to do. Several ranks without NCCL yet: through the host.
  void all_reduce(Tensor x) override {
    if (!communicator_ || communicator_->world_size() <= 1) return;
    select();
    std::vector<float> host(static_cast<size_t>(x.numel()));
    download_bytes(host.data(), x.f32(), host.size() * sizeof(float));
    communicator_->all_reduce_sum(host.data(), host.size());
    CUDA_CHECK(cudaMemcpyAsync(x.f32(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies with this call
  }

 private:
  // Ranks of a tensor-parallel group may drive their GPUs from threads of one
  // process; the current device is per thread, so every entry point sets it.
  // Brackets one op with a pair of events while profiling is on.
  class ProfileScope {
   public:
    ProfileScope(CudaBackend& backend, const char* op, const Weight* weight = nullptr) : backend_(backend) {
      if (!backend_.profiling_) return;
      select_device(backend_.index_);
      index_ = backend_.next_event_pair();
      backend_.timed_ops_.push_back({weight ? std::string(op) + " " + weight->format.describe() : op, index_});
      CUDA_CHECK(cudaEventRecord(backend_.profile_events_[index_], backend_.stream));
    }
    ~ProfileScope() {
      if (index_ >= 0) cudaEventRecord(backend_.profile_events_[index_ + 1], backend_.stream);
    }
    ProfileScope(const ProfileScope&) = delete;
    ProfileScope& operator=(const ProfileScope&) = delete;

   private:
    CudaBackend& backend_;
    int index_ = -1;
  };
  struct TimedOp {
    std::string op;
    int start;  // events start and start + 1
  };
  // The first of two events for the next timed op; events are reused once op_profile() has read them.
  int next_event_pair() {
    const size_t index = timed_ops_.size() * 2;
    while (profile_events_.size() < index + 2) {
      cudaEvent_t event;
      CUDA_CHECK(cudaEventCreate(&event));
      profile_events_.push_back(event);
    }
    return static_cast<int>(index);
  }

  // A segment signature's history and, once it repeated, its graph.
  struct GraphEntry {
    int64_t seen = 0;                // segments flushed with this signature
    cudaGraphExec_t exec = nullptr;  // captured on the first repeat
    uint64_t last_used = 0;
  };
  // Ends the current segment of stream work (everything submitted since the
  // last flush; a segment ends wherever the host needs the device's results,
  // and after piece_ops_ ops, so a decode step is a few pieces of ~2 layers
  // each, launched as they are recorded). A segment whose signature was seen
  // before was recorded rather than run (deferring_): the first repeat is
  // captured into a CUDA graph, later ones replay it with one launch. The
  // pinned upload buffers the graph copies from were refilled while the
  // segment was recorded, at the same addresses (they are in the signature).
  // Segments that never repeat (prompts) run as they are submitted.
  void flush() {
    if (segment_ops_ == 0) return;
    GraphEntry& entry = graphs_[segment_signature_];
    const bool seen_before = entry.seen > 0;
    ++entry.seen;
    entry.last_used = ++use_clock_;
    if (deferring_) {
      const bool replay = entry.exec != nullptr;  // captured before (not just now)
      if (!entry.exec && seen_before && segment_capturable_) capture(entry);
      // If the device has had nothing queued since the host last waited for
      // it (a decode step: the download of the sampled ids), the recording
      // of this segment was device idle time; counted for replays only.
      if (replay && last_wait_ && host_idle_us_.size() < kMaxIdleSamples)
        host_idle_us_.push_back(
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - *last_wait_).count());
      last_wait_.reset();
      if (entry.exec) {
        CUDA_CHECK(cudaGraphLaunch(entry.exec, stream));
        ++graph_replays_;
      } else {
        for (cuda::StreamWork& work : pending_) work(stream);
        ++eager_segments_;
      }
    } else {
      ++eager_segments_;
    }
    pending_.clear();
    segment_signature_ = cuda::Signature{}.value;
    segment_ops_ = 0;
    piece_limit_ = std::min(piece_ops_, 2 * piece_limit_);
    segment_capturable_ = true;
    deferring_ = graphs_enabled_ && !profiling_ && seen_before;
    if (graphs_.size() > kMaxSignatures) forget_unused_signatures();
  }
  // Records the pending work into a graph (nothing runs during capture).
  void capture(GraphEntry& entry) {
    if (graph_count_ >= kMaxGraphs) evict_least_recent_graph();
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      for (cuda::StreamWork& work : pending_) work(stream);
    } catch (...) {
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    const cudaError_t status = cudaGraphInstantiate(&entry.exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(status);
    ++graph_count_;
    ++graphs_captured_;
  }
  void evict_least_recent_graph() {
    auto oldest = graphs_.end();
    for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
      if (it->second.exec && (oldest == graphs_.end() || it->second.last_used < oldest->second.last_used)) oldest = it;
    if (oldest == graphs_.end()) return;
    CUDA_CHECK(cudaGraphExecDestroy(oldest->second.exec));
    oldest->second.exec = nullptr;
    --graph_count_;
  }
  // Signatures seen once and never repeated (prompt segments) are dropped.
  void forget_unused_signatures() {
    for (auto it = graphs_.begin(); it != graphs_.end();) {
      if (!it->second.exec && it->second.seen <= 1) it = graphs_.erase(it);
      else ++it;
    }
  }

  // The device view of one projection of x, after the shape checks; the
  // bias (if any) is described in `bias_storage`, which must outlive the target.
  cuda::LinearTarget linear_target(const Tensor& x, const LinearOutput& output, cuda::Matrix& bias_storage) const {
    const Weight& weight = *output.weight;
    GLM_CHECK(x.dim(-1) == weight.dim(1) && output.out.dim(-1) == weight.dim(0) && output.out.rows() == x.rows(),
              "internal error: linear ", weight.name, " ", shape_to_string(weight.shape), " on ",
              shape_to_string(x.shape), " into ", shape_to_string(output.out.shape));
    cuda::LinearTarget target{output.out.f32(), cuda::matrix_of(weight, index_), nullptr};
    if (output.bias) {
      bias_storage = cuda::matrix_of(*output.bias, index_);
      GLM_CHECK(bias_storage.rows * bias_storage.cols == weight.dim(0), "internal error: bias of ", weight.name);
      target.bias = &bias_storage;
    }
    return target;
  }

  // cudaSetDevice only when this thread last selected another device: a
  // decode step issues hundreds of ops, and the call is not free. Every op
  // but the GEMV and expert ops starts here, and forgets the activations a
  // producer prepared (ops.cuh, Context::prepared_activations): any op may
  // write the tensor they were made from.
  void select() {
    select_device(index_);
    forget_prepared_activations();
  }
  // The ops that read prepared activations (linear, linears, route, the
  // experts): they keep them, except those made from the tensors they write.
  void select_for_gemv(std::initializer_list<const Tensor*> written) {
    select_device(index_);
    for (const Tensor* tensor : written)
      if (tensor->data) forget_prepared_activations(tensor->data, tensor->numel() * dtype_size(tensor->dtype));
  }

  template <typename T>
  const T* upload(std::span<const T> values) {
    return static_cast<const T*>(upload_bytes(values.data(), values.size_bytes()));
  }

  struct ExpertTableEntry {
    std::vector<cuda::Matrix> host;
    cuda::Matrix* device = nullptr;
  };
  // Tables are identified by their first expert's placed bytes, their
  // length and the weight appended after them (a shared expert run as one
  // more expert): the same layer's table, whichever ExpertTable carries it.
  ExpertTableEntry& expert_table(const ExpertTable& table, const Weight* appended = nullptr) {
    GLM_CHECK(!table.experts.empty(), "internal error: an empty expert table");
    const auto key = std::make_tuple(table.experts.front().view.data, table.experts.size(),
                                     appended ? appended->view.data : nullptr);
    auto found = expert_tables_.find(key);
    if (found != expert_tables_.end()) return found->second;
    ExpertTableEntry entry;
    std::vector<const Weight*> members;
    for (const Weight& expert : table.experts) members.push_back(&expert);
    if (appended) members.push_back(appended);
    for (const Weight* member : members) {
      const Weight& expert = *member;
      entry.host.push_back(cuda::matrix_of(expert, index_));
      const cuda::Matrix &first = entry.host.front(), &last = entry.host.back();
      GLM_CHECK(last.kind == first.kind && last.dtype == first.dtype && last.bits == first.bits &&
                    last.rows == first.rows && last.cols == first.cols,
                "expert ", expert.name, " differs in format or shape from ", table.experts.front().name,
                "; the CUDA experts kernels need one format and shape per table");
    }
    const size_t bytes = entry.host.size() * sizeof(cuda::Matrix);
    entry.device = static_cast<cuda::Matrix*>(device_malloc(bytes, "expert descriptors"));
    allocations_.push_back(entry.device);
    CUDA_CHECK(cudaMemcpyAsync(entry.device, entry.host.data(), bytes, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // once per table: entry.host may move
    return expert_tables_.emplace(key, std::move(entry)).first->second;
  }

  // An affine weight's scale and bias of each group side by side, [rows,
  // groups, 2], so a kernel fetches both with one load: in bf16 when both
  // are bf16 (mlx's usual model dtype), else widened exactly to f32.
  TensorView upload_scale_bias_pairs(const WeightFormat& format, const std::string& name) {
    const TensorView &scales = format.scales, &biases = format.biases;
    GLM_CHECK(scales.rank() == 2 && biases.shape == scales.shape, "weight ", name, ": scales ",
              shape_to_string(scales.shape), " and biases ", shape_to_string(biases.shape), " do not pair up");
    const int64_t rows = scales.dim(0), groups = scales.dim(1);
    const bool bf16 = scales.dtype == DType::BF16 && biases.dtype == DType::BF16;
    const DType pair_dtype = bf16 ? DType::BF16 : DType::F32;
    std::vector<uint16_t> halves;
    std::vector<float> floats;
    if (bf16) halves.resize(static_cast<size_t>(rows * groups * 2));
    else floats.resize(static_cast<size_t>(rows * groups * 2));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        const size_t at = static_cast<size_t>((r * groups + g) * 2);
        if (bf16) {
          halves[at] = static_cast<const uint16_t*>(scales.row(r))[g];
          halves[at + 1] = static_cast<const uint16_t*>(biases.row(r))[g];
        } else {
          floats[at] = load_as_f32(scales.row(r), scales.dtype, static_cast<size_t>(g));
          floats[at + 1] = load_as_f32(biases.row(r), biases.dtype, static_cast<size_t>(g));
        }
      }
    const void* data = bf16 ? static_cast<const void*>(halves.data()) : static_cast<const void*>(floats.data());
    return upload_view(TensorView(data, pair_dtype, {rows, groups * 2}), name + " scales and biases");
  }

  // A dense device copy of a host view (row by row for strided views).
  TensorView upload_view(const TensorView& view, const std::string& what) {
    const int64_t cols = view.shape.empty() ? 1 : view.shape.back();
    const int64_t rows = view.shape.empty() ? 1 : view.numel() / std::max<int64_t>(cols, 1);
    const size_t element = dtype_size(view.dtype);
    const size_t bytes = static_cast<size_t>(rows * cols) * element;
    void* device = weights_.take(bytes, [&](size_t need) {
      size_t size = std::max(need, kWeightChunk);
      void* chunk = try_malloc(size);
      if (!chunk && size > need) chunk = try_malloc(size = need);  // the last weights may fit where a chunk does not
      if (!chunk) out_of_memory(need, "weight " + what);
      return std::make_pair(chunk, size);
    });
    if (bytes > 0) {
      const size_t pitch = static_cast<size_t>(view.shape.size() < 2 ? cols : view.row_stride) * element;
      CUDA_CHECK(cudaMemcpy2DAsync(device, static_cast<size_t>(cols) * element, view.data, pitch,
                                   static_cast<size_t>(cols) * element, static_cast<size_t>(rows),
                                   cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));  // the source may be a mapping the caller drops
    }
    uploaded_bytes_ += bytes;
    return TensorView(device, view.dtype, view.shape);
  }

  void* try_malloc(size_t bytes) {
    void* pointer = nullptr;
    if (cudaMalloc(&pointer, bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error state of the failed allocation
      return nullptr;
    }
    return pointer;
  }
  void* device_malloc(size_t bytes, const std::string& what) {
    void* pointer = try_malloc(bytes);
    if (!pointer) out_of_memory(bytes, what);
    return pointer;
  }
  [[noreturn]] void out_of_memory(size_t bytes, const std::string& what) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail("out of GPU memory on ", name(), " (", properties_.name, "): ", what, " needs ", gib(bytes), ", ",
         gib(free_bytes), " of ", gib(total_bytes), " are free (", gib(uploaded_bytes_),
         " of weights uploaded so far); the model does not fit on this GPU: use more GPUs or a smaller or "
         "quantized checkpoint, or a shorter --max-context");
  }

  // theta^(-2i/rotary_dim) computed on the host exactly as the CPU reference
  // does, uploaded once per (rotary_dim, theta).
  const float* inverse_frequency(int64_t rotary_dim, double theta) {
    const auto key = std::make_pair(rotary_dim, theta);
    auto found = inverse_frequencies_.find(key);
    if (found != inverse_frequencies_.end()) return found->second;
    const int64_t half = rotary_dim / 2;
    std::vector<float> values(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      values[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / rotary_dim));
    float* device = static_cast<float*>(device_malloc(values.size() * sizeof(float), "rotary frequencies"));
    CUDA_CHECK(cudaMemcpyAsync(device, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // once per shape: `values` dies here
    inverse_frequencies_[key] = device;
    return device;
  }

  int index_;
  Communicator* communicator_;
  cudaDeviceProp properties_{};
  cudaEvent_t staging_done_ = nullptr;
  bool staging_pending_ = false;
  ChunkArena<kAlignment> scratch_, uploads_, staging_, weights_;
  ChunkArena<kAlignment> prepared_forms_[2];  // prepared_form_bytes' ring
  size_t prepared_form_count_ = 0;           // prepares since the last reset_scratch
  bool programmatic_launch_ = false;
  std::vector<void*> allocations_;
  std::map<std::pair<int64_t, double>, float*> inverse_frequencies_;
  std::map<std::tuple<const void*, size_t, const void*>, ExpertTableEntry> expert_tables_;
  struct StepUpload {
    std::vector<char> bytes;  // what was uploaded
    void* device = nullptr;   // where it is, until reset_scratch()
  };
  static constexpr size_t kReusedUploadBytes = 64 * 1024;  // larger uploads are not compared
  std::vector<StepUpload> step_uploads_;
  size_t step_upload_count_ = 0;
  bool profiling_ = false;
  bool wgmma_binary_ = false;  // an sm_90 device and sm_90a code in this binary (wgmma_compiled)
  // Step graphs (flush()): GLM_CUDA_GRAPHS=0 turns them off.
  // One per (batch size, context bucket) in use; a run that synchronises
  // inside steps (bench's per-component split) has one per segment.
  // A decode step at full depth is ~23 pieces, each a graph: room for ~90
  // step shapes (context buckets x batch sizes) before the least recently
  // used are recaptured.
  static constexpr size_t kMaxGraphs = 2048;
  static constexpr size_t kMaxSignatures = 16384;
  bool graphs_enabled_ = true;
  // GLM_CUDA_GRAPH_PIECE_OPS: segments are cut every this many ops (0:
  // never). 48 (about 2 layers) took the device idle time of a full-depth
  // int4 decode step from ~142 to 14-49 us: +2.5% (docs/cuda.md).
  int64_t piece_ops_ = 48;
  // GLM_CUDA_GRAPH_FIRST_PIECE_OPS: the first piece after the host waited
  // for the device (a decode step's first) is cut after this many ops, the
  // next after twice as many, and so on up to piece_ops_ (0: no ramp).
  int64_t first_piece_ops_ = 8;
  int64_t piece_limit_ = 0;  // where submit() cuts the current segment (set from piece_ops_)
  bool deferring_ = false;                         // recording the current segment into pending_
  std::vector<cuda::StreamWork> pending_;
  uint64_t segment_signature_ = cuda::Signature{}.value;
  int64_t segment_ops_ = 0;
  bool segment_capturable_ = true;
  std::map<uint64_t, GraphEntry> graphs_;
  size_t graph_count_ = 0;  // graphs held now
  int64_t graphs_captured_ = 0, graph_replays_ = 0, eager_segments_ = 0;
  // reset_host_idle / host_idle_median_us: when the host last waited for the
  // device, and the idle gaps before replays since the reset.
  static constexpr size_t kMaxIdleSamples = 1 << 16;
  std::optional<std::chrono::steady_clock::time_point> last_wait_;
  std::vector<double> host_idle_us_;
  uint64_t use_clock_ = 0;
  std::vector<cudaEvent_t> profile_events_;
  std::vector<TimedOp> timed_ops_;
  size_t uploaded_bytes_ = 0;
  int64_t uploaded_count_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device_index, Communicator* communicator) {
  return std::make_unique<CudaBackend>(device_index, communicator);
}

}  // namespace glm
