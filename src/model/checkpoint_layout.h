// The tensors a GLM-4 MoE checkpoint holds in the Hugging Face Hub layout,
// listed from a configuration: names, logical shapes and roles. The loader
// (weights.cpp) binds these names; writers of checkpoints (the synthetic
// benchmark models, the quantizer) enumerate them from here, so Hub names
// stay in the loader's two files.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace glm {

struct TensorSpec {
  enum class Role {
    Embedding,        // [vocab, H]
    Norm,             // [H] or [head_dim]: RMSNorm weights, kept in full precision
    Projection,       // [out, in]: attention, dense MLP, shared experts, eh_proj
    Bias,             // [out]: q/k/v bias
    RouterGate,       // [E, H]: the router, kept in full precision
    CorrectionBias,   // [E]: e_score_correction_bias, stored f32
    Expert,           // [out, in]: one routed expert's projection
    Head,             // [vocab, H]: lm_head
  };
  std::string name;
  Shape shape;
  Role role;
  int64_t layer = -1;  // -1 outside decoder layers
  bool mtp = false;    // part of the multi-token-prediction layer
};

// Every tensor, in file order (embedding, layers, norm, head, MTP layer).
std::vector<TensorSpec> checkpoint_tensors(const Glm4MoeConfig& config, bool include_mtp);

}  // namespace glm
