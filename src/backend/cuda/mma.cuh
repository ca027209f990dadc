// PTX wrappers the tensor-core kernels share (gemm_tensor.cu,
// attention_prefill.cu): bf16 packing, shared-memory addresses, ldmatrix,
// mma.sync m16n8k16 with bf16 operands and f32 sums, and cp.async copies
// (all sm_80 and later); Hopper's warpgroup MMA (wgmma, sm_90a only), with
// both operands in shared memory or the first in registers.
#pragma once

#include "backend/cuda/common.cuh"

namespace glm::cuda {

// Two floats rounded to bf16 in one 32-bit word, `low` in bits 0..15 (the lower k of an mma operand).
__device__ __forceinline__ uint32_t pack_bf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
// The same, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// c[16x8] += a[16x16] b[16x8]: a row-major, b column-major, bf16; c f32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm(  // no memory access: free to schedule
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared, asynchronously (cp.async.cg: through L2 only);
// `valid` false writes zeros instead of reading.
__device__ __forceinline__ void cp_async_16(uint32_t shared, const void* global, bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared), "l"(global), "r"(valid ? 16 : 0));
}
// 4 or 8 bytes (cp.async.ca: through L1), zeros when not `valid`.
template <int kBytes>
__device__ __forceinline__ void cp_async_small(uint32_t shared, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(shared), "l"(global), "n"(kBytes),
               "r"(valid ? kBytes : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// ---- Hopper's warpgroup MMA (wgmma, sm_90a only) ----
// A warpgroup (4 warps, 128 threads) multiplies operands it reads straight
// from shared memory, asynchronously: no ldmatrix, and the threads go on
// (widening the next stage) while the tensor cores work. Compiled only for
// sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere these are never reached
// (wgmma_compiled() tells the host).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLM_WGMMA 1
#endif

// A shared-memory operand's descriptor for K-major tiles whose rows are
// 64 bf16 (128 bytes), 16-byte chunk c of row r stored at chunk c ^ (r % 8)
// (the 128-byte swizzle; the tile starts on 1024 bytes): start address / 16,
// leading offset 1 (unused with this swizzle), 1024 bytes between groups of
// 8 rows, swizzle mode 1 (128 bytes). Moving `address` by 32 bytes steps 16
// deeper into the rows: the swizzle applies to the computed addresses.
__device__ __forceinline__ uint64_t wgmma_descriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3ffff) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in such a tile.
__device__ __forceinline__ int swizzled_128(int row, int chunk) { return row * 128 + ((chunk ^ (row % 8)) << 4); }

// Orders this thread's earlier writes to shared memory (st.shared, landed
// cp.async) before later reads by the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef GLM_WGMMA
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef GLM_WGMMA
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef GLM_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Waits until at most kPending committed groups of this warpgroup are in flight.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#ifdef GLM_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#endif
}
// Keeps the compiler from moving reads or writes of the accumulators across
// this point (they belong to the tensor cores between issue and wait).
template <int N>
__device__ __forceinline__ void wgmma_hold(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The same for registers an in-flight wgmma reads (its `a` operand): the
// compiler must not reuse them before the wgmma_wait that covers it.
template <int N>
__device__ __forceinline__ void wgmma_hold_registers(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// d[64 x 128] += a[64 x 16] b[16 x 128]^T, both bf16 K-major tiles in shared
// memory (descriptors above), d f32. Thread t of the warpgroup holds rows
// 16 (t / 32) + (t % 32) / 4 (+ 8) and, of each 8-column block j, columns
// 8 j + 2 (t % 4) (+ 1): d[4 j + i] is (row + 8 (i / 2), column + i % 2),
// the mma.sync accumulator layout per 8 columns.
__device__ __forceinline__ void wgmma_m64n128k16_bf16(float (&d)[64], uint64_t a, uint64_t b) {
#ifdef GLM_WGMMA
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b));
#else
  (void)d, (void)a, (void)b;
  __trap();
#endif
}

// d[64 x 128] += a[64 x 16] b[16 x 128]^T with a in registers (bf16 pairs,
// the mma.sync m16n8k16 A layout per warp: a[0] row g, columns 2c, 2c + 1;
// a[1] row g + 8; a[2] row g, columns 2c + 8, 2c + 9; a[3] row g + 8 there,
// where g = lane / 4, c = lane % 4 and warp w of the warpgroup holds rows
// 16 w..) and b a K-major bf16 tile in shared memory (descriptor above).
// d as in wgmma_m64n128k16_bf16; `accumulate` false overwrites d instead
// (a first product: zeroing d with other instructions would make ptxas
// serialize the wgmma pipeline). The tensor cores read `a` after the
// instruction issues: its registers must hold still until a wgmma_wait
// covers it (wgmma_hold_registers).
__device__ __forceinline__ void wgmma_m64n128k16_bf16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b,
                                                          bool accumulate) {
#ifdef GLM_WGMMA
  asm volatile(
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, accumulate, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)b, (void)accumulate;
  __trap();
#endif
}

// d[64 x 64] += a[64 x 16] b[16 x 64]^T with a in registers (bf16 pairs,
// the mma.sync m16n8k16 A layout per warp: a[0] row g, columns 2c, 2c + 1;
// a[1] row g + 8; a[2] row g, columns 2c + 8, 2c + 9; a[3] row g + 8 there,
// where g = lane / 4, c = lane % 4 and warp w of the warpgroup holds rows
// 16 w..) and b a K-major bf16 tile in shared memory (descriptor above).
// d as in wgmma_m64n128k16_bf16; `accumulate` false overwrites d instead
// (a first product: zeroing d with other instructions would make ptxas
// serialize the wgmma pipeline). The tensor cores read `a` after the
// instruction issues: its registers must hold still until a wgmma_wait
// covers it (wgmma_hold_registers).
__device__ __forceinline__ void wgmma_m64n64k16_bf16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b,
                                                          bool accumulate) {
#ifdef GLM_WGMMA
  asm volatile(
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, accumulate, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)b, (void)accumulate;
  __trap();
#endif
}

// d[64 x 32] += a[64 x 16] b[16 x 32]^T with a in registers (bf16 pairs,
// the mma.sync m16n8k16 A layout per warp: a[0] row g, columns 2c, 2c + 1;
// a[1] row g + 8; a[2] row g, columns 2c + 8, 2c + 9; a[3] row g + 8 there,
// where g = lane / 4, c = lane % 4 and warp w of the warpgroup holds rows
// 16 w..) and b a K-major bf16 tile in shared memory (descriptor above).
// d as in wgmma_m64n128k16_bf16; `accumulate` false overwrites d instead
// (a first product: zeroing d with other instructions would make ptxas
// serialize the wgmma pipeline). The tensor cores read `a` after the
// instruction issues: its registers must hold still until a wgmma_wait
// covers it (wgmma_hold_registers).
__device__ __forceinline__ void wgmma_m64n32k16_bf16_rs(float (&d)[16], const uint32_t (&a)[4], uint64_t b,
                                                          bool accumulate) {
#ifdef GLM_WGMMA
  asm volatile(
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, accumulate, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)b, (void)accumulate;
  __trap();
#endif
}

}  // namespace glm::cuda
