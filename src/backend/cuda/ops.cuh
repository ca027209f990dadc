// The CUDA backend's internal interface: the execution context every op runs
// in (stream, cuBLAS handle, device scratch and host->device staging, owned by
// CudaBackend in cuda_backend.cu) and the launcher of each op family, one .cu
// file per family. Launchers take device pointers and do the host-side checks
// and uploads of their host inputs; they never synchronise with the host
// (except moe_experts, which reads the routing back to group tokens).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "backend/backend.h"
#include "backend/cuda/common.cuh"

namespace glm::cuda {

class Context {
 public:
  virtual ~Context() = default;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;

  // Device memory valid until the backend's next reset_scratch(); 256-byte aligned.
  virtual void* scratch_bytes(size_t bytes) = 0;
  // Copies host bytes into fresh device scratch on the stream (through pinned
  // staging, so the caller's buffer may change as soon as this returns).
  virtual void* upload_bytes(const void* host, size_t bytes) = 0;
  // Device -> host; waits for the stream (everything queued before it).
  virtual void download_bytes(void* host, const void* device, size_t bytes) = 0;

  template <typename T>
  T* scratch(int64_t count) {
    return static_cast<T*>(scratch_bytes(sizeof(T) * static_cast<size_t>(count > 0 ? count : 1)));
  }
  template <typename T>
  const T* upload(std::span<const T> values) {
    return static_cast<const T*>(upload_bytes(values.data(), values.size_bytes()));
  }
};

// A dense float matrix in device memory, as place() left a weight: [rows, cols]
// (a 1-D weight is one row). dtype is F32, BF16 or F16.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// The device matrix of a weight placed by this backend; throws a clear error
// for host weights and formats the CUDA kernels do not read yet.
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

// embedding.cu: out[t] = table[ids[t]] widened to f32. ids on the device.
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

// linear.cu: out = x W^T (+ bias). A warp per output feature for a few tokens,
// cuBLAS SGEMM (f32 weights) or a tiled GEMM widening 16-bit weights for more.
void linear(Context& ctx, float* out /*[n, rows]*/, const float* x /*[n, cols]*/, int64_t n, const Matrix& weight,
            const Matrix* bias /*[rows] or null*/);

// rotary.cu: in place on the first rotary_dim dims of each head. positions
// and inverse_frequency ([rotary_dim / 2]) on the device.
void rotary(Context& ctx, float* x /*[n, heads, head_dim]*/, const int32_t* positions, const float* inverse_frequency,
            int64_t n, int64_t heads, int64_t head_dim, int64_t rotary_dim);

// attention.cu: writes k/v to their slots, then paged causal attention.
void attention(Context& ctx, float* out /*[n, heads, head_dim]*/, const float* q, const float* k, const float* v,
               int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim, KvLayer& cache, const AttentionPlan& plan,
               float scale);

// kv_copy.cu: block `to` of keys and values becomes a copy of block `from`.
void copy_kv_block(Context& ctx, KvLayer& cache, int32_t from_block, int32_t to_block);

// router.cu: one warp per token; expert ids and weights stay on the device.
void route(Context& ctx, int32_t* expert_ids /*[n, top_k]*/, float* weights /*[n, top_k]*/,
           const float* logits /*[n, n_experts]*/, const Matrix& correction_bias, int64_t n, int64_t n_experts,
           const RouterParams& params);

// moe.cu: the routed expert MLPs, grouped by expert.
void moe_experts(Context& ctx, int device_index, float* out /*[n, hidden]*/, const float* x /*[n, hidden]*/, int64_t n,
                 int64_t hidden, const Routing& routing, const ExpertTable& gate, const ExpertTable& up,
                 const ExpertTable& down);

}  // namespace glm::cuda
