// Hub tensor names of a GLM-4 MoE checkpoint, from its configuration.
#include "model/checkpoint_layout.h"

namespace glm {
namespace {

void add_layer(std::vector<TensorSpec>& out, const Glm4MoeConfig& config, int64_t layer, bool mtp) {
  using Role = TensorSpec::Role;
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  const int64_t H = config.hidden_size, D = config.head_dim;
  const int64_t q_width = config.num_attention_heads * D, kv_width = config.num_key_value_heads * D;
  auto add = [&](const std::string& name, Shape shape, Role role) {
    out.push_back({prefix + name, std::move(shape), role, layer, mtp});
  };
  if (mtp) {
    add("enorm.weight", {H}, Role::Norm);
    add("hnorm.weight", {H}, Role::Norm);
    add("eh_proj.weight", {H, 2 * H}, Role::Projection);
  }
  add("input_layernorm.weight", {H}, Role::Norm);
  add("self_attn.q_proj.weight", {q_width, H}, Role::Projection);
  add("self_attn.k_proj.weight", {kv_width, H}, Role::Projection);
  add("self_attn.v_proj.weight", {kv_width, H}, Role::Projection);
  if (config.attention_bias) {
    add("self_attn.q_proj.bias", {q_width}, Role::Bias);
    add("self_attn.k_proj.bias", {kv_width}, Role::Bias);
    add("self_attn.v_proj.bias", {kv_width}, Role::Bias);
  }
  if (config.use_qk_norm) {
    add("self_attn.q_norm.weight", {D}, Role::Norm);
    add("self_attn.k_norm.weight", {D}, Role::Norm);
  }
  add("self_attn.o_proj.weight", {H, q_width}, Role::Projection);
  add("post_attention_layernorm.weight", {H}, Role::Norm);
  if (!config.layer_is_moe(layer)) {
    const int64_t I = config.intermediate_size;
    add("mlp.gate_proj.weight", {I, H}, Role::Projection);
    add("mlp.up_proj.weight", {I, H}, Role::Projection);
    add("mlp.down_proj.weight", {H, I}, Role::Projection);
  } else {
    const int64_t E = config.n_routed_experts, F = config.moe_intermediate_size;
    const int64_t S = F * config.n_shared_experts;
    add("mlp.gate.weight", {E, H}, Role::RouterGate);
    add("mlp.gate.e_score_correction_bias", {E}, Role::CorrectionBias);
    for (int64_t e = 0; e < E; ++e) {
      const std::string expert = "mlp.experts." + std::to_string(e) + ".";
      add(expert + "gate_proj.weight", {F, H}, Role::Expert);
      add(expert + "up_proj.weight", {F, H}, Role::Expert);
      add(expert + "down_proj.weight", {H, F}, Role::Expert);
    }
    add("mlp.shared_experts.gate_proj.weight", {S, H}, Role::Projection);
    add("mlp.shared_experts.up_proj.weight", {S, H}, Role::Projection);
    add("mlp.shared_experts.down_proj.weight", {H, S}, Role::Projection);
  }
  if (mtp) add("shared_head.norm.weight", {H}, Role::Norm);
}

}  // namespace

std::vector<TensorSpec> checkpoint_tensors(const Glm4MoeConfig& config, bool include_mtp) {
  using Role = TensorSpec::Role;
  std::vector<TensorSpec> out;
  const int64_t H = config.hidden_size, V = config.vocab_size;
  out.push_back({"model.embed_tokens.weight", {V, H}, Role::Embedding});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) add_layer(out, config, layer, false);
  out.push_back({"model.norm.weight", {H}, Role::Norm});
  if (!config.tie_word_embeddings) out.push_back({"lm_head.weight", {V, H}, Role::Head});
  if (include_mtp)
    for (int64_t i = 0; i < config.num_nextn_predict_layers; ++i)
      add_layer(out, config, config.num_hidden_layers + i, true);
  return out;
}

}  // namespace glm
