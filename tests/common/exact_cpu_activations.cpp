// Linked into every test program (CMakeLists.txt): the CPU kernels' default,
// int8 activations for affine weights (backend/cpu/kernels/kernels.h), misses
// the 1e-5 (mlx-lm) and 1e-4 (transformers) bounds the fixture tests hold
// the CPU to, and the CUDA tests compare with the CPU as a reference. So
// every test program starts with GLM_CPU_ACTIVATIONS=exact, before the
// options are first read; the tests of the other modes set them per test
// (KernelScope, ActivationsScope), and the glm4moe processes tests start
// inherit it.
#include <cstdlib>

namespace {
const bool kExactCpuActivations = setenv("GLM_CPU_ACTIVATIONS", "exact", 1) == 0;
}  // namespace
