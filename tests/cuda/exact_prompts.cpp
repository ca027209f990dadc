// The CUDA tests compare the GPU with f32 references at 1e-5 (ops) and 1e-4
// (end to end), which neither bf16 tensor-core prompts nor int8 decode
// activations (both the defaults) can meet: every test of this program
// starts with GLM_CUDA_PROMPTS=simt and GLM_CUDA_ACTIVATIONS=f32, and the
// tests of the fast modes switch only for the backends they make
// (cuda_parity.h's Backends("tensor"), the int8 and tensor-core tests).
#include <cstdlib>

namespace {
const bool kExactModes = [] {
  return setenv("GLM_CUDA_PROMPTS", "simt", 1) == 0 && setenv("GLM_CUDA_ACTIVATIONS", "f32", 1) == 0;
}();
}  // namespace
