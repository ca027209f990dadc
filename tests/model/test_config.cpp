// Tests of config.json / generation_config.json parsing: the real GLM-4.5-Air
// and GLM-4.5 shapes, transformers' defaults for absent fields, both rope
// layouts, and one rejection per unsupported or malformed setting, each
// checked for a message that names the field and the value.
#include <gtest/gtest.h>

#include "../common/errors.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"

namespace {

using glm::testing_fixtures::error_of;

namespace fs = std::filesystem;
using nlohmann::json;

// zai-org/GLM-4.5-Air's config.json (with the Hub file's incidental fields).
json air_config() {
  return json::parse(R"({
    "architectures": ["Glm4MoeForCausalLM"],
    "attention_bias": true,
    "attention_dropout": 0.0,
    "pad_token_id": 151329,
    "eos_token_id": [151329, 151336, 151338],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "partial_rotary_factor": 0.5,
    "initializer_range": 0.02,
    "intermediate_size": 10944,
    "max_position_embeddings": 131072,
    "model_type": "glm4_moe",
    "moe_intermediate_size": 1408,
    "norm_topk_prob": true,
    "num_attention_heads": 96,
    "n_group": 1,
    "topk_group": 1,
    "n_routed_experts": 128,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.0,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 46,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": null,
    "rope_theta": 1000000,
    "num_nextn_predict_layers": 1,
    "tie_word_embeddings": false,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0",
    "use_cache": true,
    "use_qk_norm": false,
    "vocab_size": 151552
  })");
}

// zai-org/GLM-4.5: the same family at 355B scale.
json glm45_config() {
  json config = air_config();
  config["hidden_size"] = 5120;
  config["num_hidden_layers"] = 92;
  config["intermediate_size"] = 12288;
  config["moe_intermediate_size"] = 1536;
  config["n_routed_experts"] = 160;
  config["routed_scaling_factor"] = 2.5;
  config["use_qk_norm"] = true;
  config["first_k_dense_replace"] = 3;
  return config;
}


void expect_contains(const std::string& message, std::initializer_list<std::string> pieces) {
  for (const auto& piece : pieces)
    EXPECT_NE(message.find(piece), std::string::npos) << "\"" << piece << "\" not in: " << message;
}

glm::Glm4MoeConfig parse(const json& config) { return glm::parse_config_json(config.dump()); }

// The message from parsing the Air config with `changes` merged over it (null removes nothing; it sets null).
std::string rejection(const json& changes) {
  json config = air_config();
  for (const auto& [key, value] : changes.items()) config[key] = value;
  return error_of([&] { parse(config); });
}

TEST(Config, Glm45Air) {
  const glm::Glm4MoeConfig config = parse(air_config());
  EXPECT_EQ(config.model_type, "glm4_moe");
  EXPECT_EQ(config.vocab_size, 151552);
  EXPECT_EQ(config.hidden_size, 4096);
  EXPECT_EQ(config.intermediate_size, 10944);
  EXPECT_EQ(config.moe_intermediate_size, 1408);
  EXPECT_EQ(config.num_hidden_layers, 46);
  EXPECT_EQ(config.first_k_dense_replace, 1);
  EXPECT_EQ(config.max_position_embeddings, 131072);
  EXPECT_EQ(config.num_attention_heads, 96);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_TRUE(config.attention_bias);
  EXPECT_FALSE(config.use_qk_norm);
  EXPECT_DOUBLE_EQ(config.partial_rotary_factor, 0.5);
  EXPECT_DOUBLE_EQ(config.rope_theta, 1000000.0);
  EXPECT_EQ(config.rope_type, "default");
  EXPECT_EQ(config.rotary_dim(), 64);
  EXPECT_EQ(config.hidden_act, "silu");
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_EQ(config.n_routed_experts, 128);
  EXPECT_EQ(config.n_shared_experts, 1);
  EXPECT_EQ(config.num_experts_per_tok, 8);
  EXPECT_EQ(config.n_group, 1);
  EXPECT_EQ(config.topk_group, 1);
  EXPECT_EQ(config.experts_per_group(), 128);
  EXPECT_DOUBLE_EQ(config.routed_scaling_factor, 1.0);
  EXPECT_TRUE(config.norm_topk_prob);
  EXPECT_EQ(config.num_nextn_predict_layers, 1);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_FALSE(config.bos_token_id.has_value());
  EXPECT_EQ(config.eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));
  EXPECT_EQ(config.pad_token_id, 151329);
  EXPECT_FALSE(config.layer_is_moe(0));
  EXPECT_TRUE(config.layer_is_moe(1));
  EXPECT_TRUE(config.layer_is_moe(45));
}

TEST(Config, Glm45) {
  const glm::Glm4MoeConfig config = parse(glm45_config());
  EXPECT_EQ(config.hidden_size, 5120);
  EXPECT_EQ(config.num_hidden_layers, 92);
  EXPECT_EQ(config.num_attention_heads, 96);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.head_dim, 128);  // not hidden_size / heads (53.3): head_dim is independent
  EXPECT_EQ(config.intermediate_size, 12288);
  EXPECT_EQ(config.moe_intermediate_size, 1536);
  EXPECT_EQ(config.n_routed_experts, 160);
  EXPECT_EQ(config.num_experts_per_tok, 8);
  EXPECT_DOUBLE_EQ(config.routed_scaling_factor, 2.5);
  EXPECT_TRUE(config.use_qk_norm);
  EXPECT_EQ(config.first_k_dense_replace, 3);
  EXPECT_EQ(config.max_position_embeddings, 131072);
  EXPECT_FALSE(config.layer_is_moe(2));
  EXPECT_TRUE(config.layer_is_moe(3));
}

TEST(Config, AbsentFieldsTakeTransformersDefaults) {
  // head_dim is given because its default is derived (4096 / 96 = 42, an odd rotary dim of 21).
  const glm::Glm4MoeConfig config = parse(json{{"model_type", "glm4_moe"}, {"head_dim", 128}});
  const glm::Glm4MoeConfig initial;
  // transformers 5.x Glm4MoeConfig defaults.
  EXPECT_EQ(config.vocab_size, 151552);
  EXPECT_EQ(config.hidden_size, 4096);
  EXPECT_EQ(config.intermediate_size, 10944);
  EXPECT_EQ(config.num_hidden_layers, 46);
  EXPECT_EQ(config.num_attention_heads, 96);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_FALSE(config.attention_bias);
  EXPECT_EQ(config.moe_intermediate_size, 1408);
  EXPECT_EQ(config.num_experts_per_tok, 8);
  EXPECT_EQ(config.n_shared_experts, 1);
  EXPECT_EQ(config.n_routed_experts, 128);
  EXPECT_DOUBLE_EQ(config.routed_scaling_factor, 1.0);
  EXPECT_EQ(config.n_group, 1);
  EXPECT_EQ(config.topk_group, 1);
  EXPECT_EQ(config.first_k_dense_replace, 1);
  EXPECT_TRUE(config.norm_topk_prob);
  EXPECT_FALSE(config.use_qk_norm);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(config.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(config.partial_rotary_factor, 0.5);
  EXPECT_EQ(config.scoring_func, "sigmoid");
  EXPECT_EQ(config.topk_method, "noaux_tc");
  EXPECT_EQ(config.num_nextn_predict_layers, 0);
  EXPECT_TRUE(config.eos_token_ids.empty());
  EXPECT_FALSE(config.pad_token_id.has_value());
  // Parsing an empty-ish file must give exactly the struct's initializers.
  EXPECT_EQ(config.vocab_size, initial.vocab_size);
  EXPECT_EQ(config.rope_theta, initial.rope_theta);
  EXPECT_EQ(config.num_nextn_predict_layers, initial.num_nextn_predict_layers);
}

TEST(Config, AbsentHeadDimIsHiddenSizeOverHeads) {
  const glm::Glm4MoeConfig config =
      parse(json{{"hidden_size", 4096}, {"num_attention_heads", 32}, {"num_key_value_heads", 8}});
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.rotary_dim(), 64);
  // Transformers' own default (4096 // 96 = 42) gives 21 rotary dims: refused, not silently misrun.
  expect_contains(error_of([] { parse(json::object()); }), {"head_dim 42", "partial_rotary_factor 0.5", "21", "head_dim is absent"});
}

TEST(Config, RopeParametersLayout) {
  json config = air_config();
  config.erase("rope_theta");
  config.erase("partial_rotary_factor");
  config.erase("rope_scaling");
  config["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}, {"partial_rotary_factor", 0.25}};
  glm::Glm4MoeConfig parsed = parse(config);
  EXPECT_DOUBLE_EQ(parsed.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(parsed.partial_rotary_factor, 0.25);
  EXPECT_EQ(parsed.rotary_dim(), 32);

  // As in transformers, values inside rope_parameters win over the top-level ones.
  config["rope_theta"] = 7.0;
  config["partial_rotary_factor"] = 1.0;
  parsed = parse(config);
  EXPECT_DOUBLE_EQ(parsed.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(parsed.partial_rotary_factor, 0.25);

  // rope_parameters without its own theta keeps the top-level one.
  config["rope_parameters"] = {{"rope_type", "default"}};
  parsed = parse(config);
  EXPECT_DOUBLE_EQ(parsed.rope_theta, 7.0);
  EXPECT_DOUBLE_EQ(parsed.partial_rotary_factor, 1.0);
  EXPECT_EQ(parsed.rotary_dim(), 128);
}

TEST(Config, LegacyRopeScalingDefaultIsAccepted) {
  json config = air_config();
  config["rope_scaling"] = {{"type", "default"}};
  EXPECT_EQ(parse(config).rope_type, "default");
  config["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", 20000}};
  EXPECT_DOUBLE_EQ(parse(config).rope_theta, 20000.0);
  config["rope_scaling"] = nullptr;
  config["rope_parameters"] = nullptr;
  EXPECT_DOUBLE_EQ(parse(config).rope_theta, 1000000.0);
}

TEST(Config, UnsupportedChoicesAreRejectedNamingFieldAndValue) {
  EXPECT_EQ(rejection({{"topk_method", "greedy"}}),
            "config.json: topk_method \"greedy\" is not supported (only \"noaux_tc\")");
  expect_contains(rejection({{"model_type", "llama"}}), {"model_type \"llama\"", "glm4_moe"});
  expect_contains(rejection({{"hidden_act", "gelu"}}), {"hidden_act \"gelu\"", "silu"});
  expect_contains(rejection({{"scoring_func", "softmax"}}), {"scoring_func \"softmax\"", "sigmoid"});
  expect_contains(rejection({{"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}}}),
                  {"rope_scaling.type \"yarn\"", "not supported"});
  expect_contains(rejection({{"rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}}}}),
                  {"rope_scaling.rope_type \"linear\""});
  expect_contains(rejection({{"rope_parameters", {{"rope_type", "yarn"}, {"rope_theta", 1e6}}}}),
                  {"rope_parameters.rope_type \"yarn\""});
  expect_contains(rejection({{"rope_scaling", "yes"}}), {"rope_scaling must be an object", "\"yes\""});
  expect_contains(rejection({{"rope_parameters", {{"rope_theta", "big"}}}}),
                  {"rope_parameters.rope_theta must be a number", "\"big\""});
}

TEST(Config, InconsistentShapesAreRejected) {
  expect_contains(rejection({{"n_group", 3}}), {"n_routed_experts 128", "n_group 3"});
  expect_contains(rejection({{"topk_group", 2}}), {"topk_group 2 exceeds n_group 1"});
  expect_contains(rejection({{"n_group", 16}, {"topk_group", 1}, {"num_experts_per_tok", 9}}),
                  {"num_experts_per_tok 9", "exceeds the 8 experts", "topk_group 1"});
  expect_contains(rejection({{"num_experts_per_tok", 200}}), {"num_experts_per_tok 200 exceeds n_routed_experts 128"});
  expect_contains(rejection({{"num_key_value_heads", 7}}),
                  {"num_attention_heads 96 is not a multiple of num_key_value_heads 7"});
  expect_contains(rejection({{"partial_rotary_factor", 0.3}}), {"head_dim 128", "partial_rotary_factor 0.3"});
  expect_contains(rejection({{"head_dim", 126}}), {"head_dim 126", "63"});
  expect_contains(rejection({{"partial_rotary_factor", 0}}), {"partial_rotary_factor", "(0, 1]", "found 0"});
  expect_contains(rejection({{"partial_rotary_factor", 1.5}}), {"partial_rotary_factor", "found 1.5"});
  expect_contains(rejection({{"n_routed_experts", 128}, {"num_local_experts", 64}}),
                  {"n_routed_experts 128", "num_local_experts 64", "disagree"});
}

TEST(Config, OutOfRangeSizesAreRejected) {
  expect_contains(rejection({{"hidden_size", 0}}), {"hidden_size must be at least 1, found 0"});
  expect_contains(rejection({{"num_hidden_layers", 0}}), {"num_hidden_layers must be at least 1, found 0"});
  expect_contains(rejection({{"vocab_size", -5}}), {"vocab_size", "found -5"});
  expect_contains(rejection({{"head_dim", 0}}), {"head_dim must be at least 1, found 0"});
  expect_contains(rejection({{"num_attention_heads", 0}}), {"num_attention_heads", "found 0"});
  expect_contains(rejection({{"first_k_dense_replace", -1}}), {"first_k_dense_replace", "found -1"});
  expect_contains(rejection({{"num_nextn_predict_layers", -1}}), {"num_nextn_predict_layers", "found -1"});
  expect_contains(rejection({{"rms_norm_eps", 0}}), {"rms_norm_eps must be positive, found 0"});
  expect_contains(rejection({{"routed_scaling_factor", -1.0}}), {"routed_scaling_factor", "found -1"});
  expect_contains(rejection({{"rope_theta", 0}}), {"rope_theta must be positive"});
  expect_contains(rejection({{"pad_token_id", -3}}), {"pad_token_id", "-3"});
}

TEST(Config, WrongJsonTypesAreRejected) {
  expect_contains(rejection({{"hidden_size", 128.5}}), {"hidden_size must be an integer, found 128.5"});
  expect_contains(rejection({{"hidden_size", "4096"}}), {"hidden_size must be an integer, found \"4096\" (string)"});
  expect_contains(rejection({{"num_hidden_layers", true}}), {"num_hidden_layers must be an integer", "true"});
  expect_contains(rejection({{"hidden_size", 1e30}}), {"hidden_size must be an integer"});
  expect_contains(rejection({{"attention_bias", 1}}), {"attention_bias must be true or false, found 1"});
  expect_contains(rejection({{"rope_theta", "big"}}), {"rope_theta must be a number, found \"big\""});
  expect_contains(rejection({{"hidden_act", 3}}), {"hidden_act must be a string, found 3"});
  expect_contains(rejection({{"eos_token_id", "x"}}), {"eos_token_id", "\"x\""});
  expect_contains(rejection({{"eos_token_id", {1, "2"}}}), {"eos_token_id", "[1,\"2\"]"});
  expect_contains(rejection({{"eos_token_id", -1}}), {"eos_token_id must not be negative, found -1"});
  expect_contains(rejection({{"hidden_size", nullptr}}), {"hidden_size must be an integer, found null"});
  expect_contains(error_of([] { glm::parse_config_json("{\"hidden_size\": 4096,"); }), {"config.json: invalid JSON"});
  expect_contains(error_of([] { glm::parse_config_json("[1]", "m/config.json"); }),
                  {"m/config.json", "expected a JSON object", "array"});
}

TEST(Config, IntegralFloatsAndLegalEdgeCasesAreAccepted) {
  json config = air_config();
  config["hidden_size"] = 4096.0;
  config["head_dim"] = 128.0;
  config["first_k_dense_replace"] = 46;  // every layer dense: legal
  const glm::Glm4MoeConfig parsed = parse(config);
  EXPECT_EQ(parsed.hidden_size, 4096);
  EXPECT_EQ(parsed.head_dim, 128);
  EXPECT_FALSE(parsed.layer_is_moe(45));
  config["first_k_dense_replace"] = 100;
  EXPECT_FALSE(parse(config).layer_is_moe(45));
  config.erase("num_nextn_predict_layers");
  config["num_mtp_layers"] = 2;  // transformers 5 writes the attribute_map name
  EXPECT_EQ(parse(config).num_nextn_predict_layers, 2);
}

TEST(Config, EosTokenIdAsIntListOrNull) {
  json config = air_config();
  config["eos_token_id"] = 151329;
  EXPECT_EQ(parse(config).eos_token_ids, (std::vector<int64_t>{151329}));
  config["eos_token_id"] = nullptr;
  EXPECT_TRUE(parse(config).eos_token_ids.empty());
  config["eos_token_id"] = json::array();
  EXPECT_TRUE(parse(config).eos_token_ids.empty());
  config["eos_token_id"] = {151329, 151336};
  EXPECT_EQ(parse(config).eos_token_ids, (std::vector<int64_t>{151329, 151336}));
  config["bos_token_id"] = nullptr;
  config["pad_token_id"] = nullptr;
  EXPECT_FALSE(parse(config).pad_token_id.has_value());
}

TEST(Config, GenerationConfig) {
  const glm::GenerationDefaults defaults = glm::parse_generation_config_json(
      R"({"_from_model_config": true, "do_sample": true, "eos_token_id": [151329, 151336, 151338],
          "pad_token_id": 151329, "temperature": 0.6, "top_p": 0.95, "top_k": 40, "transformers_version": "4.54.0"})");
  EXPECT_EQ(defaults.do_sample, true);
  EXPECT_DOUBLE_EQ(*defaults.temperature, 0.6);
  EXPECT_DOUBLE_EQ(*defaults.top_p, 0.95);
  EXPECT_EQ(defaults.top_k, 40);
  EXPECT_FALSE(defaults.min_p.has_value());
  EXPECT_FALSE(defaults.max_new_tokens.has_value());
  EXPECT_EQ(defaults.eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));

  const glm::GenerationDefaults sparse = glm::parse_generation_config_json(R"({"eos_token_id": 7, "min_p": null})");
  EXPECT_EQ(sparse.eos_token_ids, (std::vector<int64_t>{7}));
  EXPECT_FALSE(sparse.min_p.has_value());
  EXPECT_FALSE(sparse.do_sample.has_value());

  expect_contains(error_of([] { glm::parse_generation_config_json(R"({"temperature": "hot"})"); }),
                  {"generation_config.json", "temperature must be a number", "\"hot\""});
  expect_contains(error_of([] { glm::parse_generation_config_json(R"({"top_p": 1.5})"); }),
                  {"generation_config.json", "top_p", "1.5"});
  expect_contains(error_of([] { glm::parse_generation_config_json(R"({"temperature": -1})"); }),
                  {"temperature must not be negative, found -1"});
  expect_contains(error_of([] { glm::parse_generation_config_json(R"({"top_k": 2.5})"); }),
                  {"top_k must be an integer, found 2.5"});
}

class LoadConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    directory_ = fs::temp_directory_path() / ("glm_config_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(directory_, ignored);
  }
  void write(const std::string& name, const std::string& text) {
    std::ofstream out(directory_ / name);
    out << text;
  }
  fs::path directory_;
};

TEST_F(LoadConfigTest, GenerationConfigEosReplacesConfigEos) {
  json config = air_config();
  config["eos_token_id"] = 151329;
  write("config.json", config.dump());
  write("generation_config.json", R"({"eos_token_id": [151329, 151336, 151338], "temperature": 0.7})");
  glm::GenerationDefaults defaults;
  const glm::Glm4MoeConfig parsed = glm::load_config(directory_.string(), &defaults);
  EXPECT_EQ(parsed.eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));
  EXPECT_DOUBLE_EQ(*defaults.temperature, 0.7);
}

TEST_F(LoadConfigTest, ConfigEosKeptWithoutGenerationEos) {
  write("config.json", air_config().dump());
  EXPECT_EQ(glm::load_config(directory_.string()).eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));
  write("generation_config.json", R"({"temperature": 0.7, "eos_token_id": null})");
  glm::GenerationDefaults defaults;
  EXPECT_EQ(glm::load_config(directory_.string(), &defaults).eos_token_ids,
            (std::vector<int64_t>{151329, 151336, 151338}));
  EXPECT_TRUE(defaults.eos_token_ids.empty());
}

TEST_F(LoadConfigTest, MissingOrBrokenFilesAreNamed) {
  const std::string missing = (directory_ / "absent").string();
  expect_contains(error_of([&] { glm::load_config(missing); }), {"model directory " + missing + " does not exist"});
  expect_contains(error_of([&] { glm::load_config(directory_.string()); }),
                  {(directory_ / "config.json").string() + " not found"});
  write("config.json", R"({"model_type": "glm4_moe", "topk_method": "greedy"})");
  expect_contains(error_of([&] { glm::load_config(directory_.string()); }),
                  {(directory_ / "config.json").string() + ": topk_method \"greedy\""});
  write("config.json", air_config().dump());
  write("generation_config.json", "{oops");
  expect_contains(error_of([&] { glm::load_config(directory_.string()); }),
                  {(directory_ / "generation_config.json").string() + ": invalid JSON"});
}

}  // namespace
