// Weight binding: routed experts bound as zero-copy views from either layout
// (per-expert Hub tensors, or mlx-lm's stacked switch_mlp tensors) give the
// same model; wrong dtypes and missing tensors are reported by name.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <unistd.h>

#include "engine/engine.h"
#include "io/safetensors_writer.h"
#include "../common/checkpoint_files.h"
#include "../common/errors.h"
#include "../common/reference_fixtures.h"

namespace glm {
namespace {

namespace fs = std::filesystem;

using namespace testing_fixtures;


const fs::path kFixture = fs::path(GLM_SOURCE_DIR) / "tests" / "fixtures" / "grouped_bf16_sharded";

void copy_configs(const fs::path& dir) {
  fs::copy_file(kFixture / "config.json", dir / "config.json");
  fs::copy_file(kFixture / "generation_config.json", dir / "generation_config.json");
}

std::vector<float> logits_of(const std::string& dir, const std::vector<int32_t>& ids) {
  EngineOptions options;
  options.max_context = 64;
  Engine engine(dir, options);
  return all_logits(engine, ids);
}

TEST(ExpertViews, StackedSwitchMlpLayoutEqualsPerExpertLayout) {
  const Checkpoint hub(kFixture.string());
  const Glm4MoeConfig config = load_config(kFixture.string());
  std::map<std::string, TensorBytes> tensors = read_all(hub);

  // Stack mlp.experts.E.P.weight into mlp.switch_mlp.P.weight [E, ...], as mlx-lm's sanitize does.
  std::map<std::string, TensorBytes> stacked;
  const std::regex expert_name(R"(model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight)");
  for (const auto& [name, tensor] : tensors) {
    std::smatch match;
    if (!std::regex_match(name, match, expert_name)) {
      stacked[name] = tensor;
      continue;
    }
    if (match[2] != "0") continue;
    const std::string prefix = "model.layers." + match[1].str() + ".mlp.";
    TensorBytes all{tensor.dtype, tensor.shape, ""};
    all.shape.insert(all.shape.begin(), config.n_routed_experts);
    for (int64_t e = 0; e < config.n_routed_experts; ++e)
      all.bytes += tensors.at(prefix + "experts." + std::to_string(e) + "." + match[3].str() + ".weight").bytes;
    stacked[prefix + "switch_mlp." + match[3].str() + ".weight"] = all;
  }
  const fs::path dir = fresh_dir("stacked");
  copy_configs(dir);
  write_safetensors(dir / "model.safetensors", stacked);

  const Checkpoint stacked_checkpoint(dir.string());
  const ModelWeights weights = bind_weights(stacked_checkpoint, config);
  EXPECT_EQ(weights.expert_layout, "stacked");
  // Expert e is a view e slices into the stacked tensor: no copy.
  const Weight& gate = weights.layers.back().moe.gate.at(3);
  const TensorView whole = stacked_checkpoint.view("model.layers." + std::to_string(config.num_hidden_layers - 1) +
                                                   ".mlp.switch_mlp.gate_proj.weight");
  EXPECT_EQ(gate.view.data, static_cast<const char*>(whole.data) + 3 * gate.view.nbytes());

  const std::vector<int32_t> ids = {5, 17, 300, 2, 44, 99};
  EXPECT_EQ(logits_of(dir.string(), ids), logits_of(kFixture.string(), ids));
  fs::remove_all(dir);
}

TEST(Binding, UnsupportedDtypeIsReportedByName) {
  std::map<std::string, TensorBytes> tensors = read_all(Checkpoint(kFixture.string()));
  tensors["model.norm.weight"].dtype = DType::I16;  // same byte size as bf16
  const fs::path dir = fresh_dir("dtype");
  copy_configs(dir);
  write_safetensors(dir / "model.safetensors", tensors);
  expect_error([&] { bind_weights(Checkpoint(dir.string()), load_config(dir.string())); },
               {"model.norm.weight", "I16"});
  fs::remove_all(dir);
}

TEST(Binding, MissingAndMisShapedTensorsNameExpectedAndFound) {
  std::map<std::string, TensorBytes> tensors = read_all(Checkpoint(kFixture.string()));
  const Glm4MoeConfig config = load_config(kFixture.string());
  const std::string gate = "model.layers.2.mlp.experts.5.up_proj.weight";
  tensors.erase(gate);
  fs::path dir = fresh_dir("missing");
  copy_configs(dir);
  write_safetensors(dir / "model.safetensors", tensors);
  expect_error([&] { bind_weights(Checkpoint(dir.string()), config); }, {gate, "missing"});
  fs::remove_all(dir);

  tensors = read_all(Checkpoint(kFixture.string()));
  TensorBytes& norm = tensors["model.layers.0.input_layernorm.weight"];
  norm.shape = {norm.shape[0] / 2, 2};
  dir = fresh_dir("shape");
  copy_configs(dir);
  write_safetensors(dir / "model.safetensors", tensors);
  expect_error([&] { bind_weights(Checkpoint(dir.string()), config); },
               {"model.layers.0.input_layernorm.weight",
                "expected shape [" + std::to_string(config.hidden_size) + "]"});
  fs::remove_all(dir);
}

TEST(Binding, CheckpointWithoutMtpLayerLoads) {
  std::map<std::string, TensorBytes> tensors = read_all(Checkpoint(kFixture.string()));
  const Glm4MoeConfig config = load_config(kFixture.string());
  const std::string mtp_prefix = "model.layers." + std::to_string(config.num_hidden_layers) + ".";
  std::erase_if(tensors, [&](const auto& item) { return item.first.rfind(mtp_prefix, 0) == 0; });
  const fs::path dir = fresh_dir("nomtp");
  copy_configs(dir);
  write_safetensors(dir / "model.safetensors", tensors);
  const ModelWeights without = bind_weights(Checkpoint(dir.string()), config);
  EXPECT_FALSE(without.mtp.has_value());
  const ModelWeights with = bind_weights(Checkpoint(kFixture.string()), config);
  ASSERT_TRUE(with.mtp.has_value());
  EXPECT_EQ(with.mtp->eh_proj.shape, (Shape{config.hidden_size, 2 * config.hidden_size}));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace glm
