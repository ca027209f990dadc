// Parsing of config.json's quantization settings (mlx-lm affine, compressed-
// tensors FP8, DeepSeek-style block FP8) and the per-module questions binding
// asks of them; plus the format summary `glm4moe info` prints.
#include "model/quantization.h"

#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "io/json_util.h"
#include "model/weights.h"

namespace glm {

// "re:" patterns compiled once at parse time: binding asks about every module
// of the model, and GLM's ignore lists name one router per layer.
struct QuantizationConfig::CompiledPatterns {
  std::map<std::string, std::regex> regexes;  // pattern text (without "re:") -> compiled
};

namespace {

using nlohmann::json;

std::string quoted(const std::string& text) { return "\"" + text + "\""; }

int64_t read_int(const json& value, const std::string& what, const std::string& field) {
  int64_t out = 0;
  if (!json_integral_int64(value, &out))
    fail(what, ": ", field, " must be an integer, found ", json_excerpt(value), " (", json_type_name(value), ")");
  return out;
}

std::string read_string(const json& value, const std::string& what, const std::string& field) {
  if (!value.is_string())
    fail(what, ": ", field, " must be a string, found ", json_excerpt(value), " (", json_type_name(value), ")");
  return value.get<std::string>();
}

// mlx writes modes affine, mxfp4, nvfp4 and mxfp8; only affine keeps a scale
// and a bias per group in the model dtype, which is what the kernels implement.
void check_mode(const json& value, const std::string& what, const std::string& field) {
  const std::string mode = read_string(value, what, field);
  if (mode != "affine")
    fail(what, ": ", field, " ", quoted(mode),
         " is not supported (only \"affine\"; mxfp4, nvfp4 and mxfp8 checkpoints cannot be loaded)");
}

void check_affine(const AffineParams& params, const std::string& what, const std::string& prefix) {
  if (params.bits < 2 || params.bits > 8)
    fail(what, ": ", prefix, "bits must be 2 to 8, found ", params.bits);
  // The sizes mlx quantizes with; each is a whole number of 32-bit words at
  // any width, so every group starts on a word and column shards stay views.
  if (params.group_size != 32 && params.group_size != 64 && params.group_size != 128)
    fail(what, ": ", prefix, "group_size ", params.group_size, " is not supported (mlx uses 32, 64 or 128)");
}

// One {"group_size", "bits", "mode"} object; absent fields keep `defaults`.
AffineParams read_affine_params(const json& object, const AffineParams& defaults, const std::string& what,
                                const std::string& prefix) {
  AffineParams params = defaults;
  for (const auto& [key, value] : object.items()) {
    if (key == "group_size") params.group_size = read_int(value, what, prefix + key);
    else if (key == "bits") params.bits = static_cast<int>(read_int(value, what, prefix + key));
    else if (key == "mode") check_mode(value, what, prefix + key);
    else fail(what, ": ", prefix, key, " is not an mlx quantization parameter (expected group_size, bits, mode)");
  }
  check_affine(params, what, prefix);
  return params;
}

// mlx-lm's block: the defaults plus one entry per module that differs from
// them (nn.quantize's class_predicate returns these entries verbatim).
void parse_affine(const json& block, const std::string& key, const std::string& what, QuantizationConfig& config) {
  if (!block.is_object())
    fail(what, ": ", key, " must be an object, found ", json_excerpt(block), " (", json_type_name(block), ")");
  config.method = QuantizationConfig::Method::Affine;
  config.what = what + ": " + key;
  // mlx's nn.quantize defaults, for a block that leaves a field out.
  AffineParams defaults{4, 64};
  for (const auto& [field, value] : block.items()) {
    if (field == "group_size") defaults.group_size = read_int(value, what, key + ".group_size");
    else if (field == "bits") defaults.bits = static_cast<int>(read_int(value, what, key + ".bits"));
    else if (field == "mode") check_mode(value, what, key + ".mode");
  }
  check_affine(defaults, what, key + ".");
  config.affine = defaults;
  for (const auto& [field, value] : block.items()) {
    if (field == "group_size" || field == "bits" || field == "mode") continue;
    const std::string prefix = key + "." + field + ".";
    if (value.is_boolean()) {
      config.affine_overrides[field] = value.get<bool>() ? std::optional<AffineParams>(defaults) : std::nullopt;
    } else if (value.is_object()) {
      config.affine_overrides[field] = read_affine_params(value, defaults, what, prefix);
    } else {
      fail(what, ": ", key, ".", field, " must be false, true or {\"group_size\", \"bits\"} (a per-module override), found ",
           json_excerpt(value), " (", json_type_name(value), ")");
    }
  }
}

// [rows, cols] (current compressed-tensors and weight_block_size) or "RxC"
// (older compressed-tensors).
void read_block_shape(const json& value, const std::string& what, const std::string& field, int64_t* rows,
                      int64_t* cols) {
  bool ok = false;
  if (value.is_array() && value.size() == 2) {
    ok = json_integral_int64(value[0], rows) && json_integral_int64(value[1], cols);
  } else if (value.is_string()) {
    const std::string text = value.get<std::string>();
    const auto x = text.find('x');
    try {
      size_t used_rows = 0, used_cols = 0;
      if (x != std::string::npos) {
        *rows = std::stoll(text.substr(0, x), &used_rows);
        *cols = std::stoll(text.substr(x + 1), &used_cols);
        ok = used_rows == x && used_cols == text.size() - x - 1;
      }
    } catch (const std::exception&) {
      ok = false;
    }
  }
  if (!ok || *rows <= 0 || *cols <= 0)
    fail(what, ": ", field, " must be [rows, cols] of positive integers, found ", json_excerpt(value));
}

void compile_patterns(const std::vector<std::string>& patterns, const std::string& what, const std::string& field,
                      QuantizationConfig::CompiledPatterns& compiled) {
  for (const std::string& pattern : patterns) {
    if (pattern.rfind("re:", 0) != 0) continue;
    const std::string body = pattern.substr(3);
    try {
      compiled.regexes.emplace(body, std::regex(body, std::regex::ECMAScript | std::regex::optimize));
    } catch (const std::regex_error& error) {
      fail(what, ": ", field, " pattern ", quoted(pattern), " is not a valid regular expression: ", error.what());
    }
  }
}

std::vector<std::string> read_string_list(const json& value, const std::string& what, const std::string& field) {
  std::vector<std::string> out;
  if (value.is_null()) return out;
  if (!value.is_array()) fail(what, ": ", field, " must be a list of strings, found ", json_excerpt(value));
  for (const json& element : value) {
    if (!element.is_string()) fail(what, ": ", field, " must be a list of strings, found ", json_excerpt(value));
    out.push_back(element.get<std::string>());
  }
  return out;
}

// compressed-tensors "float-quantized": e4m3 weights with a scale per tensor,
// per output channel or per 2-D block. Activations are quantized on the fly by
// GPU runtimes; here they stay f32, so the input_activations scheme (dynamic
// per-token or static) does not change what is read.
void parse_compressed_tensors(const json& qc, const std::string& what, QuantizationConfig& config) {
  const std::string key = "quantization_config";
  config.method = QuantizationConfig::Method::Fp8;
  config.fp8_method = "compressed-tensors";
  config.fp8_scale_suffix = "weight_scale";
  config.what = what + ": " + key;
  auto check_format = [&](const json& value, const std::string& field) {
    const std::string format = read_string(value, what, field);
    if (format != "float-quantized")
      fail(what, ": ", field, " ", quoted(format),
           " is not supported (only \"float-quantized\", i.e. FP8 e4m3 weights)");
  };
  if (qc.contains("format") && !qc["format"].is_null()) check_format(qc["format"], key + ".format");

  const auto groups = qc.find("config_groups");
  if (groups == qc.end() || !groups->is_object() || groups->empty())
    fail(what, ": ", key, ".config_groups must be a non-empty object");
  for (const auto& [name, group] : groups->items()) {
    const std::string prefix = key + ".config_groups." + name + ".";
    if (!group.is_object()) fail(what, ": ", prefix.substr(0, prefix.size() - 1), " must be an object");
    if (group.contains("format") && !group["format"].is_null()) check_format(group["format"], prefix + "format");
    Fp8Group parsed;
    parsed.name = name;
    parsed.targets = read_string_list(group.value("targets", json()), what, prefix + "targets");
    if (parsed.targets.empty()) fail(what, ": ", prefix, "targets must list at least one module");
    const auto weights = group.find("weights");
    if (weights == group.end() || !weights->is_object()) fail(what, ": ", prefix, "weights must be an object");
    const std::string type = weights->contains("type") ? read_string((*weights)["type"], what, prefix + "weights.type")
                                                       : std::string("int");
    const int64_t bits = weights->contains("num_bits") ? read_int((*weights)["num_bits"], what, prefix + "weights.num_bits")
                                                       : 8;
    if (type != "float" || bits != 8)
      fail(what, ": ", prefix, "weights are ", bits, "-bit ", type, " (only 8-bit float, FP8 e4m3, is supported)");
    std::string strategy = "tensor";  // compressed-tensors' default without group_size
    if (weights->contains("strategy") && !(*weights)["strategy"].is_null())
      strategy = read_string((*weights)["strategy"], what, prefix + "weights.strategy");
    if (strategy == "tensor") {
      parsed.scale = WeightFormat::Fp8Scale::Tensor;
    } else if (strategy == "channel") {
      parsed.scale = WeightFormat::Fp8Scale::Channel;
    } else if (strategy == "block") {
      parsed.scale = WeightFormat::Fp8Scale::Block;
      const auto block = weights->find("block_structure");
      if (block == weights->end() || block->is_null())
        fail(what, ": ", prefix, "weights.strategy \"block\" needs weights.block_structure");
      read_block_shape(*block, what, prefix + "weights.block_structure", &parsed.block_rows, &parsed.block_cols);
    } else {
      fail(what, ": ", prefix, "weights.strategy ", quoted(strategy),
           " is not supported (only \"tensor\", \"channel\" or \"block\")");
    }
    config.fp8_groups.push_back(std::move(parsed));
  }
  config.fp8_ignore = read_string_list(qc.value("ignore", json()), what, key + ".ignore");
}

std::string regex_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// DeepSeek-V3 / Qwen3-FP8 style: {"quant_method": "fp8", "fmt": "e4m3",
// "weight_block_size": [128, 128]} with `<module>.weight_scale_inv` (which,
// despite its name, multiplies). Without weight_block_size the scale is per
// tensor, in `<module>.weight_scale`.
void parse_block_fp8(const json& qc, const std::string& what, QuantizationConfig& config) {
  const std::string key = "quantization_config";
  config.method = QuantizationConfig::Method::Fp8;
  config.fp8_method = "fp8";
  config.what = what + ": " + key;
  if (qc.contains("fmt") && !qc["fmt"].is_null()) {
    const std::string fmt = read_string(qc["fmt"], what, key + ".fmt");
    if (fmt != "e4m3") fail(what, ": ", key, ".fmt ", quoted(fmt), " is not supported (only \"e4m3\")");
  }
  Fp8Group group;
  group.name = "fp8";
  group.targets = {"Linear"};
  if (qc.contains("weight_block_size") && !qc["weight_block_size"].is_null()) {
    group.scale = WeightFormat::Fp8Scale::Block;
    read_block_shape(qc["weight_block_size"], what, key + ".weight_block_size", &group.block_rows, &group.block_cols);
    config.fp8_scale_suffix = "weight_scale_inv";
  } else {
    group.scale = WeightFormat::Fp8Scale::Tensor;
    config.fp8_scale_suffix = "weight_scale";
  }
  config.fp8_groups.push_back(group);
  // transformers skips a module when any listed name is a substring of its path.
  for (const char* field : {"modules_to_not_convert", "ignored_layers"})
    for (const std::string& name : read_string_list(qc.value(field, json()), what, key + "." + field))
      config.fp8_ignore.push_back("re:.*" + regex_escape(name));
}

}  // namespace

QuantizationConfig parse_quantization(const json& root, const std::string& what) {
  QuantizationConfig config;
  const auto quantization = root.find("quantization");
  const auto legacy = root.find("quantization_config");
  if (quantization != root.end() && !quantization->is_null()) {
    // mlx-lm reads `quantization` and ignores the duplicate it also writes.
    parse_affine(*quantization, "quantization", what, config);
  } else if (legacy != root.end() && !legacy->is_null()) {
    if (!legacy->is_object())
      fail(what, ": quantization_config must be an object, found ", json_excerpt(*legacy), " (",
           json_type_name(*legacy), ")");
    const auto method = legacy->find("quant_method");
    if (method == legacy->end() || method->is_null()) {
      // mlx-lm's duplicate on its own (some tools keep only this one).
      parse_affine(*legacy, "quantization_config", what, config);
    } else {
      const std::string name = read_string(*method, what, "quantization_config.quant_method");
      if (name == "compressed-tensors") parse_compressed_tensors(*legacy, what, config);
      else if (name == "fp8") parse_block_fp8(*legacy, what, config);
      else
        fail(what, ": quantization_config.quant_method ", quoted(name),
             " is not supported (supported: mlx affine `quantization`, \"compressed-tensors\" float-quantized FP8, "
             "\"fp8\")");
    }
  }
  if (config.method == QuantizationConfig::Method::Fp8) {
    auto compiled = std::make_shared<QuantizationConfig::CompiledPatterns>();
    for (const Fp8Group& group : config.fp8_groups)
      compile_patterns(group.targets, what, "quantization_config.config_groups." + group.name + ".targets", *compiled);
    compile_patterns(config.fp8_ignore, what, "quantization_config.ignore", *compiled);
    config.patterns = std::move(compiled);
  }
  return config;
}

const std::optional<AffineParams>* QuantizationConfig::affine_override(const std::string& module) const {
  const auto found = affine_overrides.find(module);
  return found == affine_overrides.end() ? nullptr : &found->second;
}

namespace {

// compressed-tensors' matching: "re:" patterns with Python's re.match
// (anchored at the start only), class names, or exact module names.
bool matches(const std::string& pattern, const std::string& module, ModuleClass module_class,
             const QuantizationConfig::CompiledPatterns* compiled) {
  if (pattern.rfind("re:", 0) == 0) {
    const auto found = compiled->regexes.find(pattern.substr(3));
    return found != compiled->regexes.end() &&
           std::regex_search(module, found->second, std::regex_constants::match_continuous);
  }
  if (pattern == "Linear") return module_class == ModuleClass::Linear;
  if (pattern == "Embedding") return module_class == ModuleClass::Embedding;
  return pattern == module;
}

}  // namespace

const Fp8Group* QuantizationConfig::fp8_group_for(const std::string& module, ModuleClass module_class) const {
  if (method != Method::Fp8) return nullptr;
  for (const std::string& pattern : fp8_ignore)
    if (matches(pattern, module, module_class, patterns.get())) return nullptr;
  for (const Fp8Group& group : fp8_groups)
    for (const std::string& target : group.targets)
      if (matches(target, module, module_class, patterns.get())) return &group;
  return nullptr;
}

std::string QuantizationConfig::describe() const {
  std::ostringstream out;
  switch (method) {
    case Method::None: out << "none"; break;
    case Method::Affine:
      out << "MLX affine " << affine.bits << "-bit g" << affine.group_size;
      if (!affine_overrides.empty()) out << " + " << affine_overrides.size() << " per-module overrides";
      break;
    case Method::Fp8: {
      out << "FP8 e4m3 ";
      for (size_t i = 0; i < fp8_groups.size(); ++i) {
        const Fp8Group& group = fp8_groups[i];
        if (i) out << ", ";
        out << (group.scale == WeightFormat::Fp8Scale::Tensor    ? "per-tensor"
                : group.scale == WeightFormat::Fp8Scale::Channel ? "per-channel"
                                                                 : "per-block");
        if (group.scale == WeightFormat::Fp8Scale::Block) out << " " << group.block_rows << "x" << group.block_cols;
      }
      out << " (" << fp8_method << ")";
      break;
    }
  }
  return out.str();
}

namespace {

void count(std::map<std::string, int64_t>& counts, const Weight& weight) {
  if (weight.present()) ++counts[weight.format.describe()];
}

void count_table(std::map<std::string, int64_t>& counts, const ExpertTable& table) {
  for (const Weight& expert : table.experts) count(counts, expert);
}

void count_layer(std::map<std::string, std::map<std::string, int64_t>>& by_class, const LayerWeights& layer,
                 const std::string& prefix) {
  auto& norms = by_class[prefix + "norms"];
  count(norms, layer.input_norm);
  count(norms, layer.post_attention_norm);
  count(norms, layer.attention.q_norm);
  count(norms, layer.attention.k_norm);
  auto& attention = by_class[prefix + "attention"];
  for (const Weight* weight : {&layer.attention.q_proj, &layer.attention.k_proj, &layer.attention.v_proj,
                               &layer.attention.o_proj, &layer.attention.q_bias, &layer.attention.k_bias,
                               &layer.attention.v_bias})
    count(attention, *weight);
  if (!layer.is_moe) {
    auto& dense = by_class[prefix + "dense mlp"];
    for (const Weight* weight : {&layer.dense.gate_proj, &layer.dense.up_proj, &layer.dense.down_proj})
      count(dense, *weight);
    return;
  }
  auto& router = by_class[prefix + "router"];
  count(router, layer.moe.router);
  count(router, layer.moe.correction_bias);
  auto& routed = by_class[prefix + "routed experts"];
  count_table(routed, layer.moe.gate);
  count_table(routed, layer.moe.up);
  count_table(routed, layer.moe.down);
  auto& shared = by_class[prefix + "shared experts"];
  for (const Weight* weight : {&layer.moe.shared.gate_proj, &layer.moe.shared.up_proj, &layer.moe.shared.down_proj})
    count(shared, *weight);
}

}  // namespace

std::map<std::string, std::map<std::string, int64_t>> describe_formats_by_class(const ModelWeights& weights) {
  std::map<std::string, std::map<std::string, int64_t>> by_class;
  count(by_class["embedding"], weights.embed_tokens);
  for (const LayerWeights& layer : weights.layers) count_layer(by_class, layer, "");
  count(by_class["norms"], weights.final_norm);
  // A tied head is the embedding again; count it once.
  if (weights.lm_head.view.data != weights.embed_tokens.view.data) count(by_class["lm_head"], weights.lm_head);
  if (weights.mtp) {
    std::map<std::string, std::map<std::string, int64_t>> mtp_parts;
    count_layer(mtp_parts, weights.mtp->layer, "");
    auto& mtp = by_class["mtp"];
    for (const auto& [part, counts] : mtp_parts)
      for (const auto& [format, n] : counts) mtp[format] += n;
    for (const Weight* weight : {&weights.mtp->enorm, &weights.mtp->hnorm, &weights.mtp->eh_proj,
                                 &weights.mtp->shared_head_norm})
      count(mtp, *weight);
  }
  // Drop classes this model does not have (no dense layers, no MTP...).
  for (auto it = by_class.begin(); it != by_class.end();) it = it->second.empty() ? by_class.erase(it) : std::next(it);
  return by_class;
}

std::map<std::string, int64_t> describe_formats(const ModelWeights& weights) {
  std::map<std::string, int64_t> totals;
  for (const auto& [part, counts] : describe_formats_by_class(weights))
    for (const auto& [format, n] : counts) totals[format] += n;
  return totals;
}

}  // namespace glm
