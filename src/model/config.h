// The GLM-4 MoE configuration: every config.json field the model uses, with
// transformers' defaults for absent fields, plus what generation_config.json
// adds (eos ids, sampling defaults). docs/model.md explains what each field
// changes in the computation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/quantization.h"

namespace glm {

struct Glm4MoeConfig {
  std::string model_type = "glm4_moe";

  // Sizes.
  int64_t vocab_size = 151552;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 10944;      // dense SwiGLU MLP width (layers < first_k_dense_replace)
  int64_t moe_intermediate_size = 1408;   // width of one routed expert (and of one shared expert)
  int64_t num_hidden_layers = 46;         // decoder layers of the trunk (MTP layers come after)
  int64_t first_k_dense_replace = 1;      // layers [0, k) use the dense MLP, the rest MoE
  int64_t max_position_embeddings = 131072;

  // Attention.
  int64_t num_attention_heads = 96;
  int64_t num_key_value_heads = 8;        // grouped-query: heads share KV in groups of heads / kv_heads
  int64_t head_dim = 128;                 // not tied to hidden_size / num_attention_heads
  bool attention_bias = false;            // bias on q/k/v (never on o_proj)
  bool use_qk_norm = false;               // per-head RMSNorm on q and k before rotary
  double partial_rotary_factor = 0.5;     // rotary on the first head_dim * factor dims
  double rope_theta = 10000.0;
  std::string rope_type = "default";      // only "default" (no scaling) is implemented
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-5;

  // Mixture of experts.
  int64_t n_routed_experts = 128;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 8;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  std::string scoring_func = "sigmoid";
  std::string topk_method = "noaux_tc";

  // Multi-token prediction layers stored after the trunk (bound, not run).
  int64_t num_nextn_predict_layers = 0;

  bool tie_word_embeddings = false;

  // Quantized weights: mlx-lm affine (`quantization`) or FP8
  // (`quantization_config`); Method::None for a float checkpoint.
  QuantizationConfig quantization;

  // Special tokens. eos may be a list in config.json and generation_config.json.
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;

  // Derived.
  int64_t rotary_dim() const;  // head_dim * partial_rotary_factor, even
  bool layer_is_moe(int64_t layer) const { return layer >= first_k_dense_replace; }
  int64_t experts_per_group() const { return n_routed_experts / n_group; }
};

// Sampling defaults from generation_config.json (absent fields stay unset).
struct GenerationDefaults {
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> min_p;
  std::optional<int64_t> max_new_tokens;
  std::vector<int64_t> eos_token_ids;
};

// Parses config.json text. `what` names the source in messages. Rejects what
// is not implemented (another model_type, hidden_act other than silu,
// topk_method other than noaux_tc, scoring_func other than sigmoid, rope
// scaling other than none/default, n_routed_experts % n_group != 0,
// topk_group > n_group, num_experts_per_tok > topk_group * experts per group,
// non-positive sizes, num_attention_heads % num_key_value_heads != 0, odd
// rotary dim) with one message naming the field and the value. Accepts rope
// settings either at the top level (rope_theta, partial_rotary_factor,
// rope_scaling) or under `rope_parameters` (rope_theta, partial_rotary_factor,
// rope_type).
Glm4MoeConfig parse_config_json(const std::string& json_text, const std::string& what = "config.json");
GenerationDefaults parse_generation_config_json(const std::string& json_text,
                                                const std::string& what = "generation_config.json");

// Reads DIR/config.json and, when present, DIR/generation_config.json (its eos
// ids replace config.json's when given). Throws naming a missing directory/file.
Glm4MoeConfig load_config(const std::string& directory, GenerationDefaults* generation = nullptr);

}  // namespace glm
