// The CUDA tests compare the GPU with f32 references at 1e-5 (ops) and 1e-4
// (end to end), which bf16 tensor-core prompts cannot meet: every test of
// this program starts with GLM_CUDA_PROMPTS=simt (f32 activations), and the
// tensor-core tests switch to "tensor" only for the backends they make
// (cuda_parity.h's Backends("tensor"), TensorCorePrompts in test_cuda_model.cpp).
#include <cstdlib>

namespace {
const bool kExactPrompts = [] { return setenv("GLM_CUDA_PROMPTS", "simt", 1) == 0; }();
}  // namespace
