// Copy-on-write of a KV cache block on the GPU: two device-to-device copies
// (keys, values) queued on the backend's stream.
#include "backend/cuda/ops.cuh"

namespace glm::cuda {

void copy_kv_block(Context& ctx, KvLayer& cache, int32_t from_block, int32_t to_block) {
  const int64_t n_blocks = cache.keys.dim(0);
  GLM_CHECK(from_block >= 0 && from_block < n_blocks && to_block >= 0 && to_block < n_blocks,
            "internal error: copy_kv_block ", from_block, " -> ", to_block, " of ", n_blocks, " blocks");
  if (from_block == to_block) return;
  const size_t block_bytes = static_cast<size_t>(cache.keys.numel() / n_blocks) * dtype_size(cache.keys.dtype);
  for (Tensor* part : {&cache.keys, &cache.values}) {
    char* base = static_cast<char*>(part->data);
    copy_async(ctx, base + to_block * block_bytes, base + from_block * block_bytes, block_bytes,
               cudaMemcpyDeviceToDevice);
  }
}

}  // namespace glm::cuda
