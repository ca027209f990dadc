// Every piece of work the CUDA backend puts on its stream (kernel launches,
// memsets, copies, cuBLAS calls) goes through Context::submit, with a
// signature that identifies it exactly: the kernel, its grid, and the bytes
// of every argument (device pointers included). The backend may then run the
// work at once, or defer a step's pieces (segments of up to 48 ops) and
// replay each from a CUDA graph captured the last time the same signature
// was seen (cuda_backend.cu, flush()). A decode step issues ~27 small ops per
// layer; a graph launch per piece removes the per-launch gaps between them.
//
// Why an exact signature and not a "step kind" key: whether two steps issue
// the same work depends on host decisions inside the ops (attention splits,
// upload sizes, scratch addresses). Comparing what would be launched makes a
// replay correct by construction; a changed decision only costs a new capture.
#pragma once

#include <bit>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "backend/cuda/common.cuh"

namespace glm::cuda {

using StreamWork = std::function<void(cudaStream_t)>;

// A 64-bit running hash of the words that describe a piece of work.
struct Signature {
  uint64_t value = 0x9e3779b97f4a7c15ull;

  void add_word(uint64_t word) {
    value = (value ^ word) * 0xff51afd7ed558ccdull;
    value ^= value >> 32;
  }
  // Scalars, enums and pointers; structs passed to kernels provide
  // append_signature(Signature&, const T&) hashing their fields (raw struct
  // bytes would include padding, which is not guaranteed to be equal).
  template <typename T>
  void add(const T& item) {
    if constexpr (std::is_pointer_v<T>) {
      add_word(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(item)));
    } else if constexpr (std::is_enum_v<T>) {
      add_word(static_cast<uint64_t>(static_cast<int64_t>(item)));
    } else if constexpr (std::is_same_v<T, float>) {
      add_word(std::bit_cast<uint32_t>(item));
    } else if constexpr (std::is_same_v<T, double>) {
      add_word(std::bit_cast<uint64_t>(item));
    } else if constexpr (std::is_integral_v<T>) {
      add_word(static_cast<uint64_t>(item));
    } else {
      append_signature(*this, item);
    }
  }
  template <typename... T>
  void add_all(const T&... items) {
    (add(items), ...);
  }
};

inline void append_signature(Signature& signature, const dim3& d) { signature.add_all(d.x, d.y, d.z); }

// The stream work interface the launchers see (implemented by CudaBackend).
class Submitter {
 public:
  virtual ~Submitter() = default;
  // Runs `work` on the stream now or later, in submission order. Work that
  // cannot be captured in a graph (cuBLAS, whose workspace use under capture
  // we do not rely on) says so, and its step always runs eagerly.
  virtual void submit(StreamWork work, uint64_t signature, bool capturable = true) = 0;
  // Whether kernels are launched with programmatic stream serialization (each
  // kernel begins with wait_for_previous_kernel(), common.cuh).
  virtual bool programmatic_launch() const { return false; }
};

// kernel<<<grid, block, shared_bytes>>>(args...) through submit(). The
// arguments are converted to the kernel's parameter types and kept by value
// until the launch. With programmatic_launch() the kernel may be scheduled
// while the previous one finishes (every kernel waits for it first:
// wait_for_previous_kernel in common.cuh).
template <typename... Params, typename... Args>
void launch(Submitter& submitter, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch: wrong number of kernel arguments");
  std::tuple<std::decay_t<Params>...> values(std::forward<Args>(args)...);
  const bool programmatic = submitter.programmatic_launch();
  Signature signature;
  signature.add_all(kernel, grid, block, shared_bytes, programmatic);
  std::apply([&](const auto&... value) { signature.add_all(value...); }, values);
  submitter.submit(
      [kernel, grid, block, shared_bytes, values, programmatic](cudaStream_t stream) mutable {
        std::apply(
            [&](auto&... value) {
              void* pointers[] = {static_cast<void*>(&value)...};
              cudaLaunchAttribute attribute{};
              attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
              attribute.val.programmaticStreamSerializationAllowed = 1;
              cudaLaunchConfig_t config{};
              config.gridDim = grid;
              config.blockDim = block;
              config.dynamicSmemBytes = shared_bytes;
              config.stream = stream;
              config.attrs = programmatic ? &attribute : nullptr;
              config.numAttrs = programmatic ? 1 : 0;
              CUDA_CHECK(cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel), pointers));
            },
            values);
      },
      signature.value);
}

// cudaMemsetAsync through submit().
inline void memset_async(Submitter& submitter, void* device, int value, size_t bytes) {
  if (bytes == 0) return;
  Signature signature;
  signature.add_all(uint64_t{1}, device, value, bytes);
  submitter.submit([=](cudaStream_t stream) { CUDA_CHECK(cudaMemsetAsync(device, value, bytes, stream)); },
                   signature.value);
}

// cudaMemcpyAsync through submit(). A host source must be pinned and keep its
// bytes until the copy has run (the backend's staging does).
inline void copy_async(Submitter& submitter, void* destination, const void* source, size_t bytes,
                       cudaMemcpyKind kind) {
  if (bytes == 0) return;
  Signature signature;
  signature.add_all(uint64_t{2}, destination, source, bytes, kind);
  submitter.submit(
      [=](cudaStream_t stream) { CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, kind, stream)); },
      signature.value);
}

}  // namespace glm::cuda
