// Parsing of config.json's quantization settings: mlx-lm's `quantization`
// block with per-module overrides and its `quantization_config` duplicate,
// compressed-tensors FP8 (strategies, block shapes, ignore patterns) and
// DeepSeek-style block FP8; everything unsupported rejected by name.
#include "helpers.h"
#include "model/config.h"

namespace glm {
namespace {

using namespace quant_test;

// A valid glm4_moe config.json (the sharded fixture's) with `extra` merged in.
std::string config_with(const nlohmann::json& extra) {
  nlohmann::json config = read_json(fixture("grouped_bf16_sharded") / "config.json");
  config.update(extra);
  return config.dump();
}

QuantizationConfig parse(const nlohmann::json& extra) {
  return parse_config_json(config_with(extra), "test/config.json").quantization;
}

void expect_rejected(const nlohmann::json& extra, const std::vector<std::string>& needles) {
  expect_error([&] { parse(extra); }, needles);
}

nlohmann::json fp8_block(const nlohmann::json& weights, const nlohmann::json& ignore = {"lm_head"}) {
  return {{"quantization_config",
           {{"quant_method", "compressed-tensors"},
            {"format", "float-quantized"},
            {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}}}}},
            {"ignore", ignore}}}};
}

TEST(QuantConfig, FloatCheckpointHasNone) {
  EXPECT_EQ(parse(nlohmann::json::object()).method, QuantizationConfig::Method::None);
  EXPECT_EQ(parse({{"quantization_config", nullptr}}).method, QuantizationConfig::Method::None);
}

TEST(QuantConfig, MlxBlockWithPerModuleOverrides) {
  const nlohmann::json block = {{"group_size", 64},
                                {"bits", 4},
                                {"mode", "affine"},
                                {"model.layers.0.mlp.gate", false},
                                {"model.layers.1.self_attn.v_proj", {{"group_size", 32}, {"bits", 6}}},
                                {"lm_head", {{"bits", 8}}},
                                {"model.embed_tokens", true}};
  // mlx-lm writes both; `quantization` wins, as in mlx-lm.
  const QuantizationConfig q = parse({{"quantization", block}, {"quantization_config", {{"bits", 2}}}});
  ASSERT_EQ(q.method, QuantizationConfig::Method::Affine);
  EXPECT_EQ(q.affine, (AffineParams{4, 64}));
  EXPECT_EQ(q.affine_override("model.layers.2.self_attn.q_proj"), nullptr);
  ASSERT_NE(q.affine_override("model.layers.0.mlp.gate"), nullptr);
  EXPECT_FALSE(q.affine_override("model.layers.0.mlp.gate")->has_value());
  EXPECT_EQ(**q.affine_override("model.layers.1.self_attn.v_proj"), (AffineParams{6, 32}));
  EXPECT_EQ(**q.affine_override("lm_head"), (AffineParams{8, 64}));  // group from the defaults
  EXPECT_EQ(**q.affine_override("model.embed_tokens"), (AffineParams{4, 64}));
  EXPECT_EQ(q.describe(), "MLX affine 4-bit g64 + 4 per-module overrides");

  // The duplicate alone (no quant_method) is read the same way.
  const QuantizationConfig legacy = parse({{"quantization_config", {{"group_size", 32}, {"bits", 8}}}});
  EXPECT_EQ(legacy.method, QuantizationConfig::Method::Affine);
  EXPECT_EQ(legacy.affine, (AffineParams{8, 32}));
}

TEST(QuantConfig, UnsupportedMlxSettingsAreRejectedByName) {
  expect_rejected({{"quantization", {{"group_size", 32}, {"bits", 4}, {"mode", "mxfp4"}}}},
                  {"quantization.mode", "\"mxfp4\"", "affine"});
  expect_rejected({{"quantization", {{"group_size", 16}, {"bits", 4}, {"mode", "nvfp4"}}}}, {"\"nvfp4\""});
  expect_rejected({{"quantization", {{"group_size", 64}, {"bits", 4}, {"lm_head", {{"mode", "mxfp8"}}}}}},
                  {"quantization.lm_head.mode", "\"mxfp8\""});
  expect_rejected({{"quantization", {{"group_size", 64}, {"bits", 9}}}}, {"quantization.bits", "2 to 8", "found 9"});
  expect_rejected({{"quantization", {{"group_size", 64}, {"bits", 1}}}}, {"quantization.bits", "found 1"});
  expect_rejected({{"quantization", {{"group_size", 24}, {"bits", 4}}}}, {"quantization.group_size 24", "32, 64 or 128"});
  expect_rejected({{"quantization", {{"group_size", 64}, {"bits", 4}, {"lm_head", {{"group_size", 256}}}}}},
                  {"quantization.lm_head.group_size 256"});
  expect_rejected({{"quantization", {{"group_size", 64}, {"bits", 4}, {"model.layers.0.mlp", 3}}}},
                  {"quantization.model.layers.0.mlp", "per-module override"});
  expect_rejected({{"quantization_config", {{"quant_method", "awq"}, {"bits", 4}}}},
                  {"quantization_config.quant_method", "\"awq\""});
}

TEST(QuantConfig, CompressedTensorsFp8Strategies) {
  const QuantizationConfig channel = parse(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "channel"}},
                                                     {"lm_head", "re:.*mlp\\.gate$"}));
  ASSERT_EQ(channel.method, QuantizationConfig::Method::Fp8);
  EXPECT_EQ(channel.fp8_scale_suffix, "weight_scale");
  EXPECT_EQ(channel.describe(), "FP8 e4m3 per-channel (compressed-tensors)");
  const Fp8Group* group = channel.fp8_group_for("model.layers.3.mlp.experts.7.up_proj", ModuleClass::Linear);
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->scale, WeightFormat::Fp8Scale::Channel);
  EXPECT_EQ(channel.fp8_group_for("lm_head", ModuleClass::Linear), nullptr);                 // plain name
  EXPECT_EQ(channel.fp8_group_for("model.layers.3.mlp.gate", ModuleClass::Linear), nullptr);  // re: pattern
  EXPECT_NE(channel.fp8_group_for("model.layers.3.mlp.gate_proj", ModuleClass::Linear), nullptr);
  EXPECT_EQ(channel.fp8_group_for("model.embed_tokens", ModuleClass::Embedding), nullptr);  // not a Linear

  for (const nlohmann::json& structure : {nlohmann::json{128, 64}, nlohmann::json("128x64")}) {
    const QuantizationConfig block =
        parse(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "block"}, {"block_structure", structure}}));
    const Fp8Group* g = block.fp8_group_for("model.layers.0.self_attn.o_proj", ModuleClass::Linear);
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->scale, WeightFormat::Fp8Scale::Block);
    EXPECT_EQ(g->block_rows, 128);
    EXPECT_EQ(g->block_cols, 64);
  }
  const QuantizationConfig tensor = parse(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "tensor"}}));
  EXPECT_EQ(tensor.fp8_groups.at(0).scale, WeightFormat::Fp8Scale::Tensor);
}

TEST(QuantConfig, UnsupportedFp8SettingsAreRejectedByName) {
  nlohmann::json packed = fp8_block({{"num_bits", 4}, {"type", "int"}, {"strategy", "group"}, {"group_size", 128}});
  packed["quantization_config"]["format"] = "pack-quantized";
  expect_rejected(packed, {"quantization_config.format", "\"pack-quantized\""});
  expect_rejected(fp8_block({{"num_bits", 8}, {"type", "int"}, {"strategy", "channel"}}),
                  {"group_0.weights", "8-bit int"});
  expect_rejected(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "group"}, {"group_size", 128}}),
                  {"weights.strategy", "\"group\""});
  expect_rejected(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "block"}}), {"block_structure"});
  expect_rejected(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "block"}, {"block_structure", {0, 8}}}),
                  {"block_structure", "positive"});
  expect_rejected(fp8_block({{"num_bits", 8}, {"type", "float"}, {"strategy", "channel"}}, {"re:(unclosed"}),
                  {"quantization_config.ignore", "re:(unclosed"});
}

TEST(QuantConfig, DeepSeekStyleBlockFp8) {
  const QuantizationConfig q = parse({{"quantization_config",
                                       {{"quant_method", "fp8"},
                                        {"fmt", "e4m3"},
                                        {"activation_scheme", "dynamic"},
                                        {"weight_block_size", {128, 128}},
                                        {"modules_to_not_convert", {"lm_head", "mlp.gate"}}}}});
  ASSERT_EQ(q.method, QuantizationConfig::Method::Fp8);
  EXPECT_EQ(q.fp8_scale_suffix, "weight_scale_inv");
  EXPECT_EQ(q.fp8_group_for("lm_head", ModuleClass::Linear), nullptr);
  // transformers' substring rule: "mlp.gate" also keeps mlp.gate_proj unquantized.
  EXPECT_EQ(q.fp8_group_for("model.layers.2.mlp.gate", ModuleClass::Linear), nullptr);
  EXPECT_NE(q.fp8_group_for("model.layers.2.self_attn.q_proj", ModuleClass::Linear), nullptr);
  expect_rejected({{"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e5m2"}}}}, {"fmt", "\"e5m2\""});
}

}  // namespace
}  // namespace glm
