// The GLM-4 MoE weights as the forward pass sees them: one struct per layer
// part, every field a Weight descriptor with its shape in a comment. Binding
// (weights.cpp) is the only code that knows Hugging Face tensor names.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/weight.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace glm {

// Which slice of the model this process computes. Attention is split by heads,
// the dense and shared MLPs by intermediate width, the routed experts by
// expert range; norms, router, embedding and lm_head are replicated. The two
// all-reduces per layer sum the partial outputs.
struct TensorParallel {
  int rank = 0;
  int world_size = 1;
};

// Shapes below use H = hidden_size, D = head_dim, Nq/Nkv = the heads this rank
// holds, I = intermediate_size / world, F = moe_intermediate_size,
// S = F * n_shared_experts / world, E = n_routed_experts.
struct AttentionWeights {
  Weight q_proj;  // [Nq * D, H]
  Weight k_proj;  // [Nkv * D, H]
  Weight v_proj;  // [Nkv * D, H]
  Weight q_bias;  // [Nq * D]   (attention_bias)
  Weight k_bias;  // [Nkv * D]  (attention_bias)
  Weight v_bias;  // [Nkv * D]  (attention_bias)
  Weight q_norm;  // [D]        (use_qk_norm)
  Weight k_norm;  // [D]        (use_qk_norm)
  Weight o_proj;  // [H, Nq * D]
};

struct MlpWeights {  // SwiGLU: down(silu(gate x) * up x)
  Weight gate_proj;  // [width, H]
  Weight up_proj;    // [width, H]
  Weight down_proj;  // [H, width]
};

struct MoeWeights {
  Weight router;           // [E, H]
  Weight correction_bias;  // [E] e_score_correction_bias (f32 in the released files)
  ExpertTable gate;        // [E_local][F, H]
  ExpertTable up;          // [E_local][F, H]
  ExpertTable down;        // [E_local][H, F]
  MlpWeights shared;       // width S
};

struct LayerWeights {
  bool is_moe = false;
  Weight input_norm;           // [H]
  AttentionWeights attention;
  Weight post_attention_norm;  // [H]
  MlpWeights dense;            // width I (when !is_moe)
  MoeWeights moe;              // (when is_moe)
};

// The multi-token-prediction layer stored after the trunk (docs/model.md#mtp).
struct MtpWeights {
  Weight enorm;             // [H] normalises the embedding of the next token
  Weight hnorm;             // [H] normalises the trunk's final hidden state
  Weight eh_proj;           // [H, 2H] projects their concatenation
  LayerWeights layer;       // a full decoder layer
  Weight shared_head_norm;  // [H]
};

struct ModelWeights {
  TensorParallel parallel;
  Weight embed_tokens;  // [vocab, H]
  std::vector<LayerWeights> layers;
  Weight final_norm;  // [H]
  Weight lm_head;     // [vocab, H] (the embedding when tie_word_embeddings)
  std::optional<MtpWeights> mtp;
  // Where the routed experts came from: "per-expert" (Hub) or "stacked" (mlx-lm switch_mlp).
  std::string expert_layout;
  uint64_t bound_bytes = 0;  // bytes of every distinct bound tensor of this rank
};

// Binds every expected tensor of `checkpoint` for `parallel`'s slice, checking
// name, dtype and shape; a missing or mis-shaped tensor is reported by name
// with expected vs found.
ModelWeights bind_weights(const Checkpoint& checkpoint, const Glm4MoeConfig& config,
                          TensorParallel parallel = {});

// Hands every weight to `backend.place` (a GPU backend uploads them once),
// replacing the descriptors with the placed ones.
class Backend;
void place_weights(ModelWeights& weights, Backend& backend);

// Parameter counts from the configuration: all trunk parameters, the MTP
// layers', and those read per token (attention, dense layers, top-k routed +
// shared experts, routers, norms, lm_head; the embedding row is not counted).
struct ParameterCounts {
  int64_t total = 0;
  int64_t mtp = 0;
  int64_t active_per_token = 0;
};
ParameterCounts count_parameters(const Glm4MoeConfig& config);

}  // namespace glm
