// Binding of Hugging Face checkpoint tensors to the model's weight structs.
// This file is the only place that knows the checkpoint's tensor names. It
// checks every tensor's dtype and shape against the configuration, slices the
// views for tensor parallelism (still zero-copy), and accepts routed experts
// stored one by one (Hub) or stacked (mlx-lm's switch_mlp). Matrices may be
// stored quantized: mlx-lm affine (`<module>.weight` packed U32 with
// `<module>.scales` / `.biases`) or FP8 (`<module>.weight` F8_E4M3 with
// `<module>.weight_scale`), as config.json's quantization block says; the
// logical shapes checked are the same as for float weights.
#include "model/weights.h"

#include <algorithm>
#include <set>
#include <string>

#include "core/error.h"

namespace glm {
namespace {

bool is_supported_float(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `shape` with its last extent replaced.
Shape with_last(Shape shape, int64_t last) {
  shape.back() = last;
  return shape;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string affine_name(const AffineParams& params) {
  return std::to_string(params.bits) + "-bit g" + std::to_string(params.group_size);
}

class Binder {
 public:
  Binder(const Checkpoint& checkpoint, const QuantizationConfig& quantization, TensorParallel parallel)
      : checkpoint_(checkpoint), quantization_(quantization), parallel_(parallel) {}

  // A tensor that must exist with exactly `expected` logical shape. Matrices
  // (`<module>.weight` of rank >= 2) may be stored quantized, as the
  // configuration and the checkpoint's scale tensors say; everything else
  // (norms, biases, the router's correction bias) is float.
  Weight full(const std::string& name, const Shape& expected, ModuleClass module_class = ModuleClass::Linear) {
    const SafetensorsEntry* entry = checkpoint_.find(name);
    GLM_CHECK(entry, "tensor \"", name, "\" is missing from the checkpoint (expected shape ",
              shape_to_string(expected), ")");
    Weight weight;
    if (expected.size() >= 2 && ends_with(name, ".weight")) {
      const std::string module = name.substr(0, name.size() - std::string(".weight").size());
      switch (quantization_.method) {
        case QuantizationConfig::Method::None: weight = float_tensor(*entry, expected); break;
        case QuantizationConfig::Method::Affine: weight = affine_or_float(*entry, module, expected); break;
        case QuantizationConfig::Method::Fp8: weight = fp8_or_float(*entry, module, expected, module_class); break;
      }
    } else {
      weight = float_tensor(*entry, expected);
    }
    // The weight's own bytes: companion() counted its scales and biases
    // (Weight::nbytes would count them a second time).
    if (bound_.insert(name).second) bytes_ += weight.view.nbytes();
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
  // The MTP layer is bound but not run, and FP8 exporters that never saw it
  // may have left it in BF16 whatever the ignore list says: accept either.
  void set_lenient(bool lenient) { lenient_ = lenient; }

 private:
  Weight float_tensor(const SafetensorsEntry& entry, const Shape& expected) {
    // Checked before the shape: a packed weight's shape is not the logical one.
    if (entry.dtype == DType::U32)
      fail("tensor \"", entry.name, "\": dtype U32 (packed mlx weights) needs a `quantization` block in config.json");
    if (entry.dtype == DType::F8_E4M3)
      fail("tensor \"", entry.name, "\": dtype F8_E4M3 needs an FP8 `quantization_config` in config.json");
    GLM_CHECK(entry.shape == expected, "tensor \"", entry.name, "\": expected shape ", shape_to_string(expected),
              ", found ", shape_to_string(entry.shape));
    GLM_CHECK(is_supported_float(entry.dtype), "tensor \"", entry.name, "\": dtype ", dtype_name(entry.dtype),
              " is not supported (expected F32, BF16 or F16)");
    return float_weight(entry.name, checkpoint_.view(entry.name));
  }

  // A scale/bias companion tensor: present, float, exactly `expected`.
  TensorView companion(const std::string& name, const Shape& expected, const std::string& owner,
                       const std::string& role) {
    const SafetensorsEntry* entry = checkpoint_.find(name);
    GLM_CHECK(entry, "tensor \"", owner, "\" is ", role, " but \"", name, "\" is missing from the checkpoint");
    GLM_CHECK(entry->shape == expected, "tensor \"", name, "\": expected shape ", shape_to_string(expected),
              ", found ", shape_to_string(entry->shape));
    GLM_CHECK(is_supported_float(entry->dtype), "tensor \"", name, "\": dtype ", dtype_name(entry->dtype),
              " is not supported (expected F32, BF16 or F16)");
    if (bound_.insert(name).second) bytes_ += checkpoint_.view(name).nbytes();
    return checkpoint_.view(name);
  }

  // mlx-lm's rule: a module is quantized exactly when `<module>.scales`
  // exists; a per-module entry of the config fixes its bits and group size,
  // otherwise they are the defaults or, where the shapes disagree with
  // those, what the shapes imply (mlx-lm's infer_quant_config).
  Weight affine_or_float(const SafetensorsEntry& entry, const std::string& module, const Shape& expected) {
    const std::optional<AffineParams>* listed = quantization_.affine_override(module);
    const std::string scales_name = module + ".scales";
    const bool has_scales = has(scales_name);
    if (listed && !listed->has_value()) {
      GLM_CHECK(!has_scales, "tensor \"", scales_name, "\" exists but ", quantization_.what, " lists \"", module,
                "\" as not quantized (false)");
      return float_tensor(entry, expected);
    }
    if (!has_scales) {
      GLM_CHECK(!listed, "tensor \"", scales_name, "\" is missing: ", quantization_.what, " quantizes \"", module,
                "\" to ", affine_name(**listed));
      if (entry.dtype == DType::U32)
        fail("tensor \"", entry.name, "\" is packed U32 but \"", scales_name, "\" is missing from the checkpoint");
      return float_tensor(entry, expected);
    }
    const int64_t in = expected.back();
    AffineParams params = listed ? **listed : quantization_.affine;
    const Shape packed_default = with_last(expected, in * params.bits / 32);
    const SafetensorsEntry* scales = checkpoint_.find(scales_name);
    if (!listed && (entry.shape != packed_default || (in % params.group_size) != 0 ||
                    scales->shape != with_last(expected, in / params.group_size))) {
      // Not listed and not the defaults: infer as mlx-lm does, then validate below.
      if (!scales->shape.empty() && scales->shape.back() > 0 && !entry.shape.empty() && in > 0 &&
          in % scales->shape.back() == 0 && (entry.shape.back() * 32) % in == 0) {
        const AffineParams inferred{static_cast<int>(entry.shape.back() * 32 / in), in / scales->shape.back()};
        if (inferred.bits >= 2 && inferred.bits <= 8 &&
            (inferred.group_size == 32 || inferred.group_size == 64 || inferred.group_size == 128))
          params = inferred;
      }
    }
    const Shape packed = with_last(expected, in * params.bits / 32);
    GLM_CHECK(in % params.group_size == 0 && (in * params.bits) % 32 == 0, "tensor \"", entry.name, "\": ",
              in, " input features cannot be ", affine_name(params), " quantized (groups of ", params.group_size,
              " packed into 32-bit words)");
    GLM_CHECK(entry.dtype == DType::U32, "tensor \"", entry.name, "\": expected dtype U32 (packed ",
              affine_name(params), "), found ", dtype_name(entry.dtype));
    GLM_CHECK(entry.shape == packed, "tensor \"", entry.name, "\": expected packed shape ", shape_to_string(packed),
              " (", affine_name(params), " of logical shape ", shape_to_string(expected), "), found ",
              shape_to_string(entry.shape));
    const Shape grouped = with_last(expected, in / params.group_size);
    const std::string role = affine_name(params) + " quantized";
    Weight weight;
    weight.name = entry.name;
    weight.shape = expected;
    weight.view = checkpoint_.view(entry.name);
    weight.format.kind = WeightFormat::Kind::Affine;
    weight.format.dtype = DType::U32;
    weight.format.bits = params.bits;
    weight.format.group_size = params.group_size;
    weight.format.scales = companion(scales_name, grouped, entry.name, role);
    weight.format.biases = companion(module + ".biases", grouped, entry.name, role);
    GLM_CHECK(weight.format.scales.dtype == weight.format.biases.dtype, "tensor \"", module, ".biases\": dtype ",
              dtype_name(weight.format.biases.dtype), " differs from \"", scales_name, "\"'s ",
              dtype_name(weight.format.scales.dtype));
    return weight;
  }

  // FP8: e4m3 values times the scale tensor `<module>.weight_scale` (or
  // `weight_scale_inv`) laid out by the config group's strategy.
  Weight fp8_or_float(const SafetensorsEntry& entry, const std::string& module, const Shape& expected,
                      ModuleClass module_class) {
    const Fp8Group* group = quantization_.fp8_group_for(module, module_class);
    if (entry.dtype != DType::F8_E4M3) {
      if (group && !lenient_ && is_supported_float(entry.dtype))
        fail("tensor \"", entry.name, "\": expected dtype F8_E4M3 (", quantization_.what, " ", group->name,
             " targets \"", module, "\" and it is not ignored), found ", dtype_name(entry.dtype));
      return float_tensor(entry, expected);
    }
    if (!group && lenient_ && quantization_.fp8_groups.size() == 1) group = &quantization_.fp8_groups[0];
    GLM_CHECK(group, "tensor \"", entry.name, "\" is F8_E4M3 but ", quantization_.what,
              " does not quantize \"", module, "\" (ignored or not targeted)");
    GLM_CHECK(entry.shape == expected, "tensor \"", entry.name, "\": expected shape ", shape_to_string(expected),
              ", found ", shape_to_string(entry.shape));
    GLM_CHECK(expected.size() == 2, "tensor \"", entry.name, "\": stacked FP8 weights of shape ",
              shape_to_string(expected), " are not supported (store experts one by one)");
    const std::string scale_name = module + "." + quantization_.fp8_scale_suffix;
    const SafetensorsEntry* scale = checkpoint_.find(scale_name);
    GLM_CHECK(scale, "tensor \"", entry.name, "\" is F8_E4M3 but its scale \"", scale_name,
              "\" is missing from the checkpoint");
    const int64_t out = expected[0], in = expected[1];
    std::vector<Shape> allowed;
    switch (group->scale) {
      case WeightFormat::Fp8Scale::Tensor: allowed = {Shape{}, Shape{1}}; break;
      case WeightFormat::Fp8Scale::Channel: allowed = {Shape{out, 1}, Shape{out}}; break;
      case WeightFormat::Fp8Scale::Block:
        allowed = {Shape{ceil_div(out, group->block_rows), ceil_div(in, group->block_cols)}};
        break;
    }
    const bool shape_ok = std::find(allowed.begin(), allowed.end(), scale->shape) != allowed.end();
    GLM_CHECK(shape_ok, "tensor \"", scale_name, "\": expected shape ", shape_to_string(allowed[0]),
              allowed.size() > 1 ? " or " + shape_to_string(allowed[1]) : std::string(), " (",
              group->scale == WeightFormat::Fp8Scale::Tensor    ? "per-tensor"
              : group->scale == WeightFormat::Fp8Scale::Channel ? "per-channel"
                                                                : "per-block",
              " FP8 scale of ", shape_to_string(expected), "), found ", shape_to_string(scale->shape));
    Weight weight;
    weight.name = entry.name;
    weight.shape = expected;
    weight.view = checkpoint_.view(entry.name);
    weight.format.kind = WeightFormat::Kind::Fp8;
    weight.format.dtype = DType::F8_E4M3;
    weight.format.fp8_scale = group->scale;
    weight.format.block_rows = group->block_rows;
    weight.format.block_cols = group->block_cols;
    weight.format.scales = companion(scale_name, scale->shape, entry.name, "F8_E4M3");
    return weight;
  }

  const Checkpoint& checkpoint_;
  const QuantizationConfig& quantization_;
  TensorParallel parallel_;
  std::set<std::string> bound_;
  uint64_t bytes_ = 0;
  bool lenient_ = false;
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
  layer.moe.router = bind.full(prefix + "mlp.gate.weight", {E, H}, ModuleClass::Other);
  // transformers' Glm4MoeTopkRouter casts both operands to f32: a near tie
  // between experts must not flip because a backend rounded x for speed.
  layer.moe.router.f32_activations = true;
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

  Binder bind(checkpoint, config.quantization, parallel);
  ModelWeights weights;
  weights.parallel = parallel;
  const int64_t H = config.hidden_size, V = config.vocab_size;
  weights.embed_tokens = bind.full("model.embed_tokens.weight", {V, H}, ModuleClass::Embedding);
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
    bind.set_lenient(true);
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
