// Random-weight checkpoints of the real GLM-4 MoE shapes. Values are uniform
// with the variance of a 1/sqrt(fan_in) initialisation so activations stay in
// a realistic range through many layers, routers spread tokens over experts,
// and the files look exactly like Hub (or mlx-lm affine) checkpoints.
#include "model/synthetic.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "io/safetensors_writer.h"
#include "model/checkpoint_layout.h"

namespace glm {
namespace {

namespace fs = std::filesystem;

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills `count` values of `dtype` uniform in [-bound, bound], deterministic
// in (seed, index) so the threads can split the work any way.
void fill_uniform(std::vector<uint8_t>& bytes, DType dtype, int64_t count, float bound, float center, uint64_t seed) {
  bytes.resize(static_cast<size_t>(count) * dtype_size(dtype));
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < (count + 1023) / 1024; ++block) {
    uint64_t state = mix(seed ^ mix(static_cast<uint64_t>(block)));
    for (int64_t i = block * 1024; i < std::min(count, (block + 1) * 1024); ++i) {
      state = mix(state);
      const float unit = static_cast<float>(state >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      const float value = center + bound * (2.0f * unit - 1.0f);
      switch (dtype) {
        case DType::F8_E4M3: {  // random e4m3 bits below 2 in magnitude (exponent <= 7): no NaN
          const uint8_t bits = static_cast<uint8_t>(state >> 32);
          bytes[i] = static_cast<uint8_t>((bits & 0x87) | ((bits & 0x78) % 0x40));
          break;
        }
        case DType::F32: reinterpret_cast<float*>(bytes.data())[i] = value; break;
        case DType::BF16: reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_bf16(value); break;
        case DType::F16: reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_f16(value); break;
        case DType::U32: reinterpret_cast<uint32_t*>(bytes.data())[i] = static_cast<uint32_t>(state); break;
        default: fail("internal error: synthetic dtype ", dtype_name(dtype));
      }
    }
  }
}

nlohmann::ordered_json hub_config(const Glm4MoeConfig& c, const std::string& dtype, int64_t group_size) {
  nlohmann::ordered_json j;
  j["architectures"] = {"Glm4MoeForCausalLM"};
  j["model_type"] = "glm4_moe";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["partial_rotary_factor"] = c.partial_rotary_factor;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["use_qk_norm"] = c.use_qk_norm;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["num_nextn_predict_layers"] = 0;
  j["tie_word_embeddings"] = false;
  j["eos_token_id"] = c.eos_token_ids;
  j["pad_token_id"] = 151329;
  j["torch_dtype"] = dtype == "f32" ? "float32" : dtype == "f16" ? "float16" : "bfloat16";
  if (dtype == "int8" || dtype == "int4") {
    const nlohmann::ordered_json quantization = {
        {"group_size", group_size}, {"bits", dtype == "int8" ? 8 : 4}, {"mode", "affine"}};
    j["quantization"] = quantization;
    j["quantization_config"] = quantization;
  }
  if (dtype == "fp8") {  // as the official GLM-4.5-FP8 checkpoints: compressed-tensors, per-channel scales
    const nlohmann::ordered_json weights = {{"num_bits", 8}, {"type", "float"}, {"strategy", "channel"},
                                            {"symmetric", true}, {"dynamic", false}, {"group_size", nullptr}};
    const nlohmann::ordered_json activations = {{"num_bits", 8}, {"type", "float"}, {"strategy", "token"},
                                                {"symmetric", true}, {"dynamic", true}, {"group_size", nullptr}};
    j["quantization_config"] = {
        {"quant_method", "compressed-tensors"},
        {"format", "float-quantized"},
        {"quantization_status", "compressed"},
        {"ignore", {"lm_head", "re:.*mlp\\.gate$"}},
        {"config_groups",
         {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", activations}}}}}};
  }
  return j;
}

}  // namespace

Glm4MoeConfig synthetic_config(const std::string& shape, int64_t layers) {
  Glm4MoeConfig c;
  c.eos_token_ids = {151329, 151336, 151338};
  if (shape == "glm-4.5-air") {
    c.hidden_size = 4096; c.num_hidden_layers = 46; c.num_attention_heads = 96; c.num_key_value_heads = 8;
    c.head_dim = 128; c.intermediate_size = 10944; c.moe_intermediate_size = 1408; c.n_routed_experts = 128;
    c.num_experts_per_tok = 8; c.n_shared_experts = 1; c.first_k_dense_replace = 1; c.routed_scaling_factor = 1.0;
    c.use_qk_norm = false; c.attention_bias = true; c.partial_rotary_factor = 0.5; c.rope_theta = 1e6;
    c.vocab_size = 151552; c.max_position_embeddings = 131072;
  } else if (shape == "glm-4.5") {
    c.hidden_size = 5120; c.num_hidden_layers = 92; c.num_attention_heads = 96; c.num_key_value_heads = 8;
    c.head_dim = 128; c.intermediate_size = 12288; c.moe_intermediate_size = 1536; c.n_routed_experts = 160;
    c.num_experts_per_tok = 8; c.n_shared_experts = 1; c.first_k_dense_replace = 3; c.routed_scaling_factor = 2.5;
    c.use_qk_norm = true; c.attention_bias = true; c.partial_rotary_factor = 0.5; c.rope_theta = 1e6;
    c.vocab_size = 151552; c.max_position_embeddings = 131072;
  } else if (shape == "tiny") {  // for tests of the generator itself
    c.hidden_size = 64; c.num_hidden_layers = 3; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 32; c.intermediate_size = 128; c.moe_intermediate_size = 32; c.n_routed_experts = 8;
    c.num_experts_per_tok = 2; c.n_shared_experts = 1; c.first_k_dense_replace = 1; c.use_qk_norm = true;
    c.attention_bias = true; c.vocab_size = 512; c.max_position_embeddings = 4096;
    c.eos_token_ids = {511};
  } else {
    fail("unknown synthetic shape \"", shape, "\" (known: glm-4.5-air, glm-4.5, tiny)");
  }
  if (layers > 0) c.num_hidden_layers = layers;
  c.first_k_dense_replace = std::min(c.first_k_dense_replace, c.num_hidden_layers);
  return c;
}

namespace {

// How a synthetic checkpoint of options.dtype stores each tensor, and its bytes.
struct SyntheticFormat {
  explicit SyntheticFormat(const SyntheticOptions& options)
      : affine(options.dtype == "int8" || options.dtype == "int4"),
        fp8(options.dtype == "fp8"),
        bits(options.dtype == "int8" ? 8 : 4),
        float_dtype(options.dtype == "f32" ? DType::F32 : options.dtype == "f16" ? DType::F16 : DType::BF16),
        group_size(options.group_size) {}
  bool affine, fp8;
  int bits;
  DType float_dtype;
  int64_t group_size;

  // FP8 as compressed-tensors quantizes it: the Linear layers but the router
  // gates and lm_head (its ignore list); the embedding is no Linear.
  bool stored_as_fp8(const TensorSpec& spec) const {
    using Role = TensorSpec::Role;
    return fp8 && spec.shape.size() == 2 && spec.role != Role::RouterGate && spec.role != Role::Head &&
           spec.role != Role::Embedding;
  }
  bool stored_as_affine(const TensorSpec& spec) const {
    return affine && spec.shape.size() == 2 && spec.role != TensorSpec::Role::RouterGate;
  }
  // The bytes of every tensor a spec becomes (the weight, and its scales and biases).
  uint64_t written_bytes(const TensorSpec& spec) const {
    const uint64_t count = static_cast<uint64_t>(shape_numel(spec.shape));
    const uint64_t float_size = dtype_size(float_dtype);
    if (stored_as_fp8(spec)) return count + static_cast<uint64_t>(spec.shape[0]) * float_size;
    if (stored_as_affine(spec))
      return count * static_cast<uint64_t>(bits) / 8 + 2 * (count / static_cast<uint64_t>(group_size)) * float_size;
    return count * (spec.role == TensorSpec::Role::CorrectionBias ? 4 : float_size);
  }
};

}  // namespace

uint64_t synthetic_checkpoint_bytes(const SyntheticOptions& options) {
  const SyntheticFormat format(options);
  uint64_t total = 0;
  for (const TensorSpec& spec : checkpoint_tensors(synthetic_config(options.shape, options.layers), false))
    total += format.written_bytes(spec);
  return total;
}

std::string make_synthetic_checkpoint(const SyntheticOptions& options) {
  GLM_CHECK(options.dtype == "bf16" || options.dtype == "f16" || options.dtype == "f32" || options.dtype == "int8" ||
                options.dtype == "int4" || options.dtype == "fp8",
            "synthetic dtype \"", options.dtype, "\" is not one of bf16, f16, f32, int8, int4, fp8");
  const Glm4MoeConfig config = synthetic_config(options.shape, options.layers);
  const fs::path directory = options.directory.empty()
                                 ? fs::temp_directory_path() / ("glm4moe-synthetic-" + options.shape + "-" +
                                                                std::to_string(config.num_hidden_layers) + "L-" +
                                                                options.dtype)
                                 : fs::path(options.directory);
  const nlohmann::ordered_json request = {{"shape", options.shape}, {"layers", config.num_hidden_layers},
                                          {"dtype", options.dtype},  {"group_size", options.group_size},
                                          {"seed", options.seed},    {"format_version", 1}};
  const fs::path marker = directory / "synthetic.json";
  if (fs::exists(marker)) {
    std::ifstream in(marker);
    if (nlohmann::ordered_json::parse(in, nullptr, false) == request) return directory.string();
  }
  fs::create_directories(directory);
  for (const auto& entry : fs::directory_iterator(directory))
    if (entry.path().extension() == ".safetensors") fs::remove(entry.path());

  const SyntheticFormat format(options);
  const std::vector<TensorSpec> specs = checkpoint_tensors(config, false);
  const bool affine = format.affine, fp8 = format.fp8;
  const int bits = format.bits;
  const DType float_dtype = format.float_dtype;
  using Role = TensorSpec::Role;
  // A full-depth checkpoint is 50-700 GB: say so before writing any of it
  // when the disk (or the tmpfs of --synthetic-dir) cannot take it.
  const uint64_t shard_limit = uint64_t{5} << 30;
  require_room_for_checkpoint(directory.string(), synthetic_checkpoint_bytes(options), shard_limit,
                              "the synthetic " + options.shape + " checkpoint (" +
                                  std::to_string(config.num_hidden_layers) + " layers, " + options.dtype + ")",
                              "choose another --synthetic-dir, fewer --layers or a smaller --dtype");

  // Shards of at most ~5 GB, as the Hub splits them.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_bytes = 0;
  auto spec_bytes = [&](const TensorSpec& spec) {
    return static_cast<uint64_t>(shape_numel(spec.shape)) * (affine || fp8 ? 1 : dtype_size(float_dtype));
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    if (shard_bytes > 0 && shard_bytes + spec_bytes(specs[i]) > shard_limit) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += spec_bytes(specs[i]);
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total = 0;
  std::vector<uint8_t> values, scales, biases;
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    SafetensorsWriter writer((directory / name).string());
    for (size_t index : shards[s]) {
      const TensorSpec& spec = specs[index];
      const uint64_t seed = mix(options.seed ^ mix(index));
      const int64_t count = shape_numel(spec.shape);
      const int64_t fan_in = spec.shape.back();
      const float bound = std::sqrt(3.0f / static_cast<float>(fan_in));  // std 1/sqrt(fan_in)
      auto add = [&](const std::string& tensor, DType dtype, const Shape& shape, const std::vector<uint8_t>& bytes) {
        writer.add(tensor, dtype, shape, bytes);
        weight_map[tensor] = name;
        total += bytes.size();
      };
      switch (spec.role) {
        case Role::Norm: fill_uniform(values, float_dtype, count, 0.05f, 1.0f, seed); break;
        case Role::Bias: fill_uniform(values, float_dtype, count, 0.02f, 0.0f, seed); break;
        case Role::CorrectionBias: fill_uniform(values, DType::F32, count, 0.01f, 0.0f, seed); break;
        case Role::Embedding: fill_uniform(values, float_dtype, count, 1.0f, 0.0f, seed); break;
        default: fill_uniform(values, float_dtype, count, bound, 0.0f, seed);
      }
      if (format.stored_as_fp8(spec)) {
        const std::string module = spec.name.substr(0, spec.name.size() - std::string(".weight").size());
        fill_uniform(values, DType::F8_E4M3, count, 0.0f, 0.0f, seed);
        add(spec.name, DType::F8_E4M3, spec.shape, values);
        fill_uniform(scales, float_dtype, spec.shape[0], bound * 0.05f, bound * 0.5f, seed + 1);  // |e4m3| < 2
        add(module + ".weight_scale", float_dtype, {spec.shape[0], 1}, scales);
        continue;
      }
      if (!format.stored_as_affine(spec)) {
        add(spec.name, spec.role == Role::CorrectionBias ? DType::F32 : float_dtype, spec.shape, values);
        continue;
      }
      // mlx affine: random packed integers; scale and bias per group give the
      // same uniform range as the float weights (value = scale * q + bias).
      const int64_t rows = spec.shape[0], columns = spec.shape[1];
      GLM_CHECK(columns % options.group_size == 0, spec.name, ": ", columns, " columns are not a multiple of group ",
                options.group_size);
      const float range = spec.role == Role::Embedding || spec.role == Role::Head ? 1.0f : bound;
      const float scale = 2.0f * range / static_cast<float>((1 << bits) - 1);
      fill_uniform(values, DType::U32, rows * columns * bits / 32, 0.0f, 0.0f, seed);
      const std::string module = spec.name.substr(0, spec.name.size() - std::string(".weight").size());
      add(spec.name, DType::U32, {rows, columns * bits / 32}, values);
      fill_uniform(scales, float_dtype, rows * columns / options.group_size, scale * 0.1f, scale, seed + 1);
      add(module + ".scales", float_dtype, {rows, columns / options.group_size}, scales);
      fill_uniform(biases, float_dtype, rows * columns / options.group_size, range * 0.05f, -range, seed + 2);
      add(module + ".biases", float_dtype, {rows, columns / options.group_size}, biases);
    }
    writer.finish({{"format", "pt"}}, /*drop_from_cache=*/true);  // bench maps it next: in 2 MiB pages
    std::fprintf(stderr, "synthetic %s: wrote %s (%zu of %zu)\n", options.shape.c_str(), name, s + 1, shards.size());
  }
  std::ofstream(directory / "model.safetensors.index.json")
      << nlohmann::ordered_json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2);
  std::ofstream(directory / "config.json") << hub_config(config, options.dtype, options.group_size).dump(2);
  std::ofstream(directory / "generation_config.json")
      << nlohmann::ordered_json{{"eos_token_id", config.eos_token_ids}, {"do_sample", false}}.dump(2);
  std::ofstream(marker) << request.dump();
  return directory.string();
}

}  // namespace glm
