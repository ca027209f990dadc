// Binding of Hugging Face checkpoint tensors to the model's weight structs.
// This file is the only place that knows the checkpoint's tensor names. It
// checks every tensor's dtype and shape against the configuration, slices the
// views for tensor parallelism (still zero-copy), and accepts routed experts
// stored one by one (Hub) or stacked (mlx-lm's switch_mlp).
#include "model/weights.h"

#include <set>
#include <string>

#include "core/error.h"

namespace glm {
namespace {

bool is_supported_float(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

class Binder {
 public:
  Binder(const Checkpoint& checkpoint, TensorParallel parallel) : checkpoint_(checkpoint), parallel_(parallel) {}

  // A tensor that must exist with exactly `expected` shape.
  Weight full(const std::string& name, const Shape& expected) {
    const SafetensorsEntry* entry = checkpoint_.find(name);
    GLM_CHECK(entry, "tensor \"", name, "\" is missing from the checkpoint (expected shape ",
              shape_to_string(expected), ")");
    GLM_CHECK(entry->shape == expected, "tensor \"", name, "\": expected shape ", shape_to_string(expected),
              ", found ", shape_to_string(entry->shape));
    GLM_CHECK(is_supported_float(entry->dtype), "tensor \"", name, "\": dtype ", dtype_name(entry->dtype),
              " is not supported (expected F32, BF16 or F16)");
    Weight weight = float_weight(name, checkpoint_.view(name));
    if (bound_.insert(name).second) bytes_ += weight.nbytes();
    return weight;
  }

  // Output features [rank * rows / world, ...) of a matrix or vector.
  Weight rows(const std::string& name, const Shape& expected) {
    Weight weight = full(name, expected);
    const int64_t extent = expected[0];
    const int64_t part = extent / parallel_.world_size;
    const int64_t begin = parallel_.rank * part;
    if (parallel_.world_size > 1) {
      weight = weight.slice_rows(begin, begin + part);
      weight.shard = {Shard::Kind::Rows, parallel_.rank, parallel_.world_size, begin, begin + part};
    }
    return weight;
  }

  // Input features (columns) [rank * cols / world, ...) of a matrix.
  Weight columns(const std::string& name, const Shape& expected) {
    Weight weight = full(name, expected);
    const int64_t part = expected[1] / parallel_.world_size;
    const int64_t begin = parallel_.rank * part;
    if (parallel_.world_size > 1) {
      weight = weight.slice_columns(begin, begin + part);
      weight.shard = {Shard::Kind::Columns, parallel_.rank, parallel_.world_size, begin, begin + part};
    }
    return weight;
  }

  bool has(const std::string& name) const { return checkpoint_.contains(name); }
  uint64_t bytes() const { return bytes_; }

 private:
  const Checkpoint& checkpoint_;
  TensorParallel parallel_;
  std::set<std::string> bound_;
  uint64_t bytes_ = 0;
};

void check_divisible(const char* what, int64_t value, int world_size) {
  GLM_CHECK(value % world_size == 0, "tensor parallelism over ", world_size, " ranks needs ", what, " (", value,
            ") to be divisible by ", world_size);
}

AttentionWeights bind_attention(Binder& bind, const Glm4MoeConfig& config, const std::string& prefix) {
  const int64_t H = config.hidden_size, D = config.head_dim;
  const int64_t q_width = config.num_attention_heads * D, kv_width = config.num_key_value_heads * D;
  AttentionWeights attention;
  attention.q_proj = bind.rows(prefix + "q_proj.weight", {q_width, H});
  attention.k_proj = bind.rows(prefix + "k_proj.weight", {kv_width, H});
  attention.v_proj = bind.rows(prefix + "v_proj.weight", {kv_width, H});
  if (config.attention_bias) {
    attention.q_bias = bind.rows(prefix + "q_proj.bias", {q_width});
    attention.k_bias = bind.rows(prefix + "k_proj.bias", {kv_width});
    attention.v_bias = bind.rows(prefix + "v_proj.bias", {kv_width});
  }
  if (config.use_qk_norm) {
    attention.q_norm = bind.full(prefix + "q_norm.weight", {D});
    attention.k_norm = bind.full(prefix + "k_norm.weight", {D});
  }
  attention.o_proj = bind.columns(prefix + "o_proj.weight", {H, q_width});
  return attention;
}

MlpWeights bind_mlp(Binder& bind, const std::string& prefix, int64_t hidden, int64_t width) {
  MlpWeights mlp;
  mlp.gate_proj = bind.rows(prefix + "gate_proj.weight", {width, hidden});
  mlp.up_proj = bind.rows(prefix + "up_proj.weight", {width, hidden});
  mlp.down_proj = bind.columns(prefix + "down_proj.weight", {hidden, width});
  return mlp;
}

// Routed experts: views per expert, from per-expert tensors
// (mlp.experts.E.gate_proj.weight) or from stacked ones
// (mlp.switch_mlp.gate_proj.weight [E, F, H]), restricted to this rank's range.
void bind_experts(Binder& bind, const Checkpoint& checkpoint, const Glm4MoeConfig& config, const std::string& prefix,
                  TensorParallel parallel, MoeWeights& moe, std::string& layout) {
  const int64_t E = config.n_routed_experts, H = config.hidden_size, F = config.moe_intermediate_size;
  const int64_t per_rank = E / parallel.world_size;
  const int64_t first = parallel.rank * per_rank;
  struct Projection {
    const char* name;
    ExpertTable* table;
    Shape shape;
  };
  Projection projections[] = {
      {"gate_proj", &moe.gate, {F, H}}, {"up_proj", &moe.up, {F, H}}, {"down_proj", &moe.down, {H, F}}};
  const bool stacked = bind.has(prefix + "switch_mlp.gate_proj.weight");
  layout = stacked ? "stacked" : "per-expert";
  for (auto& projection : projections) {
    ExpertTable& table = *projection.table;
    table.first_expert = first;
    table.experts.clear();
    if (stacked) {
      Shape stacked_shape = projection.shape;
      stacked_shape.insert(stacked_shape.begin(), E);
      Weight all = bind.full(prefix + "switch_mlp." + projection.name + ".weight", stacked_shape);
      for (int64_t e = first; e < first + per_rank; ++e) {
        Weight expert = all.slice_first(e);
        expert.shard = {Shard::Kind::Experts, parallel.rank, parallel.world_size, first, first + per_rank};
        table.experts.push_back(std::move(expert));
      }
    } else {
      for (int64_t e = first; e < first + per_rank; ++e) {
        Weight expert =
            bind.full(prefix + "experts." + std::to_string(e) + "." + projection.name + ".weight", projection.shape);
        expert.shard = {Shard::Kind::Experts, parallel.rank, parallel.world_size, first, first + per_rank};
        table.experts.push_back(std::move(expert));
      }
    }
  }
  (void)checkpoint;
}

LayerWeights bind_layer(Binder& bind, const Checkpoint& checkpoint, const Glm4MoeConfig& config, int64_t index,
                        TensorParallel parallel, std::string& layout) {
  const std::string prefix = "model.layers." + std::to_string(index) + ".";
  const int64_t H = config.hidden_size;
  LayerWeights layer;
  layer.is_moe = config.layer_is_moe(index);
  layer.input_norm = bind.full(prefix + "input_layernorm.weight", {H});
  layer.attention = bind_attention(bind, config, prefix + "self_attn.");
  layer.post_attention_norm = bind.full(prefix + "post_attention_layernorm.weight", {H});
  if (!layer.is_moe) {
    layer.dense = bind_mlp(bind, prefix + "mlp.", H, config.intermediate_size);
    return layer;
  }
  const int64_t E = config.n_routed_experts;
  layer.moe.router = bind.full(prefix + "mlp.gate.weight", {E, H});
  layer.moe.correction_bias = bind.full(prefix + "mlp.gate.e_score_correction_bias", {E});
  bind_experts(bind, checkpoint, config, prefix + "mlp.", parallel, layer.moe, layout);
  layer.moe.shared =
      bind_mlp(bind, prefix + "mlp.shared_experts.", H, config.moe_intermediate_size * config.n_shared_experts);
  return layer;
}

}  // namespace

ModelWeights bind_weights(const Checkpoint& checkpoint, const Glm4MoeConfig& config, TensorParallel parallel) {
  GLM_CHECK(parallel.world_size >= 1 && parallel.rank >= 0 && parallel.rank < parallel.world_size,
            "invalid tensor-parallel rank ", parallel.rank, " of ", parallel.world_size);
  check_divisible("num_attention_heads", config.num_attention_heads, parallel.world_size);
  check_divisible("num_key_value_heads", config.num_key_value_heads, parallel.world_size);
  check_divisible("intermediate_size", config.intermediate_size, parallel.world_size);
  check_divisible("moe_intermediate_size * n_shared_experts", config.moe_intermediate_size * config.n_shared_experts,
                  parallel.world_size);
  check_divisible("n_routed_experts", config.n_routed_experts, parallel.world_size);

  Binder bind(checkpoint, parallel);
  ModelWeights weights;
  weights.parallel = parallel;
  const int64_t H = config.hidden_size, V = config.vocab_size;
  weights.embed_tokens = bind.full("model.embed_tokens.weight", {V, H});
  for (int64_t index = 0; index < config.num_hidden_layers; ++index)
    weights.layers.push_back(bind_layer(bind, checkpoint, config, index, parallel, weights.expert_layout));
  weights.final_norm = bind.full("model.norm.weight", {H});
  if (config.tie_word_embeddings) {
    weights.lm_head = weights.embed_tokens;
  } else {
    weights.lm_head = bind.full("lm_head.weight", {V, H});
  }

  // The MTP layer is optional: mlx-lm conversions drop it, and nothing runs it yet.
  const std::string mtp_prefix = "model.layers." + std::to_string(config.num_hidden_layers) + ".";
  if (config.num_nextn_predict_layers > 0 && bind.has(mtp_prefix + "enorm.weight")) {
    MtpWeights mtp;
    mtp.enorm = bind.full(mtp_prefix + "enorm.weight", {H});
    mtp.hnorm = bind.full(mtp_prefix + "hnorm.weight", {H});
    mtp.eh_proj = bind.full(mtp_prefix + "eh_proj.weight", {H, 2 * H});
    std::string mtp_layout;
    mtp.layer = bind_layer(bind, checkpoint, config, config.num_hidden_layers, parallel, mtp_layout);
    mtp.shared_head_norm = bind.full(mtp_prefix + "shared_head.norm.weight", {H});
    weights.mtp = std::move(mtp);
  }
  weights.bound_bytes = bind.bytes();
  return weights;
}

ParameterCounts count_parameters(const Glm4MoeConfig& config) {
  const int64_t H = config.hidden_size, D = config.head_dim, V = config.vocab_size;
  const int64_t q_width = config.num_attention_heads * D, kv_width = config.num_key_value_heads * D;
  int64_t attention = 2 * H * q_width + 2 * H * kv_width + 2 * H;  // q, o, k, v, two norms
  if (config.attention_bias) attention += q_width + 2 * kv_width;
  if (config.use_qk_norm) attention += 2 * D;
  const int64_t dense = 3 * H * config.intermediate_size;
  const int64_t expert = 3 * H * config.moe_intermediate_size;
  const int64_t router = config.n_routed_experts * H + config.n_routed_experts;
  const int64_t shared = expert * config.n_shared_experts;
  const int64_t moe_total = config.n_routed_experts * expert + router + shared;
  const int64_t moe_active = config.num_experts_per_tok * expert + router + shared;
  const int64_t head = config.tie_word_embeddings ? 0 : V * H;

  ParameterCounts counts;
  counts.total = V * H + head + H;
  counts.active_per_token = V * H + H;  // lm_head (tied or not) is read for every token
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const bool moe = config.layer_is_moe(layer);
    counts.total += attention + (moe ? moe_total : dense);
    counts.active_per_token += attention + (moe ? moe_active : dense);
  }
  counts.mtp = config.num_nextn_predict_layers * (3 * H + 2 * H * H + attention + moe_total);
  return counts;
}

}  // namespace glm
