// What config.json says about quantized weights, parsed once at load:
//   * mlx-lm's affine quantization: the `quantization` block (and its
//     `quantization_config` duplicate) with default bits/group_size and
//     per-module overrides (a module path mapped to false or to its own
//     {"group_size", "bits"});
//   * compressed-tensors "float-quantized" FP8 checkpoints (GLM-4.5-FP8 and
//     kin): `quantization_config` with config_groups (targets, weight
//     strategy tensor/channel/block) and an `ignore` list of names and "re:"
//     patterns;
//   * DeepSeek-style block FP8 (`quant_method` "fp8", `weight_block_size`,
//     `<module>.weight_scale_inv`).
// Binding (weights.cpp) asks this struct which format each module should
// have; the checkpoint's tensors are then checked against the answer.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/weight.h"

namespace glm {

struct ModelWeights;

// mlx-lm affine parameters of one module.
struct AffineParams {
  int bits = 4;             // 2..8 (mlx writes 2, 3, 4, 5, 6, 8)
  int64_t group_size = 64;  // columns sharing one scale and bias
  bool operator==(const AffineParams&) const = default;
};

// One compressed-tensors config group: the modules it targets and how their
// FP8 weights are scaled.
struct Fp8Group {
  std::string name;                  // "group_0", for messages
  std::vector<std::string> targets;  // class names ("Linear"), module names, "re:" patterns
  WeightFormat::Fp8Scale scale = WeightFormat::Fp8Scale::Channel;
  int64_t block_rows = 0;  // Block: output rows per scale
  int64_t block_cols = 0;  // Block: input columns per scale
};

// What kind of module a weight belongs to, in transformers' terms: FP8
// config groups target modules by class name ("Linear"), and the router
// (Glm4MoeTopkRouter) and the embedding are not Linear.
enum class ModuleClass { Linear, Embedding, Other };

struct QuantizationConfig {
  enum class Method { None, Affine, Fp8 } method = Method::None;
  std::string what;  // where it was read from, e.g. "model/config.json: quantization", for messages

  // ---- Affine (mlx-lm) ----
  AffineParams affine;  // the defaults
  // Module path ("model.layers.0.mlp.gate") -> its params, or nullopt when the
  // module is kept in full precision (mlx-lm writes `false`).
  std::map<std::string, std::optional<AffineParams>> affine_overrides;

  // ---- FP8 ----
  std::string fp8_method;                     // "compressed-tensors" or "fp8"
  std::string fp8_scale_suffix = "weight_scale";  // tensor `<module>.<suffix>`; "weight_scale_inv" for "fp8"
  std::vector<Fp8Group> fp8_groups;
  std::vector<std::string> fp8_ignore;  // names, class names and "re:" patterns

  bool quantized() const { return method != Method::None; }

  // Affine: whether `module` is listed in the overrides, and with what.
  // Returns nullptr when not listed; otherwise points at nullopt (kept in
  // full precision) or at its params.
  const std::optional<AffineParams>* affine_override(const std::string& module) const;

  // FP8: the config group whose targets match `module` when it is not
  // ignored, else nullptr (the module stays in full precision).
  const Fp8Group* fp8_group_for(const std::string& module, ModuleClass module_class) const;

  // "MLX affine 4-bit g64", "MLX affine 4-bit g64 + 3 per-module overrides",
  // "FP8 e4m3 per-channel (compressed-tensors)", "none".
  std::string describe() const;

  // Compiled "re:" patterns of targets and ignore (shared so copies stay cheap).
  struct CompiledPatterns;
  std::shared_ptr<const CompiledPatterns> patterns;
};

// Reads the quantization settings from a parsed config.json object. `what`
// names the file in messages. Precedence as in mlx-lm: `quantization` wins
// over `quantization_config`; without either the result is Method::None.
// Rejects, naming the field and the value: a mode other than "affine"
// (mxfp4, nvfp4, mxfp8), bits outside 2..8, a group size other than 32,
// 64 or 128, a quant_method other
// than compressed-tensors / fp8 (awq, gptq, bitnet, ...), a compressed-tensors
// format other than float-quantized, weights that are not 8-bit float, a
// strategy other than tensor/channel/block, and malformed block shapes or
// "re:" patterns.
QuantizationConfig parse_quantization(const nlohmann::json& root, const std::string& what);

// Formats of the bound weights: description -> number of weight descriptors
// (each routed expert's matrix counts once), e.g. {"affine 4-bit g64": 230,
// "BF16": 41, "F32": 4}. For `glm4moe info`.
std::map<std::string, int64_t> describe_formats(const ModelWeights& weights);

// The same, split by tensor class: "embedding", "attention", "dense mlp",
// "router", "routed experts", "shared experts", "norms", "lm_head", "mtp"
// -> description -> count.
std::map<std::string, std::map<std::string, int64_t>> describe_formats_by_class(const ModelWeights& weights);

}  // namespace glm
