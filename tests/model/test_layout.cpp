// The Hub tensor layout listed from a configuration matches the fixtures that
// transformers wrote, and synthetic checkpoints built from it load and run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "../common/errors.h"
#include "core/error.h"
#include "engine/engine.h"
#include "model/checkpoint_layout.h"
#include "model/synthetic.h"

namespace glm {
namespace {

namespace fs = std::filesystem;

TEST(CheckpointLayout, ListsExactlyTheTensorsOfTheHubFixtures) {
  for (const std::string name : {"grouped_bf16_sharded", "plain_f32_tied_mqa", "negbias_quarter_rotary"}) {
    const std::string dir = std::string(GLM_SOURCE_DIR) + "/tests/fixtures/" + name;
    const Checkpoint checkpoint(dir);
    const Glm4MoeConfig config = load_config(dir);
    std::set<std::string> listed;
    for (const TensorSpec& spec : checkpoint_tensors(config, true)) {
      listed.insert(spec.name);
      ASSERT_NE(checkpoint.find(spec.name), nullptr) << name << ": " << spec.name;
      EXPECT_EQ(checkpoint.find(spec.name)->shape, spec.shape) << spec.name;
    }
    const std::vector<std::string> stored = checkpoint.names();
    EXPECT_EQ(listed, std::set<std::string>(stored.begin(), stored.end())) << name;
  }
}

// A synthetic `shape` in `dtype` (group 32 where quantized), in a fresh
// directory of the temporary one named after `purpose`.
SyntheticOptions test_options(const std::string& shape, const std::string& dtype, const std::string& purpose) {
  SyntheticOptions options;
  options.shape = shape;
  options.dtype = dtype;
  options.group_size = 32;
  options.directory = (fs::temp_directory_path() /
                       ("glm4moe_synthetic_" + purpose + "_" + dtype + "_" + std::to_string(getpid())))
                          .string();
  fs::remove_all(options.directory);
  return options;
}

TEST(Synthetic, TinyShapeWritesALoadableCheckpointAndReusesIt) {
  const SyntheticOptions options = test_options("tiny", "bf16", "reuse");
  const std::string dir = make_synthetic_checkpoint(options);
  const auto written = fs::last_write_time(fs::path(dir) / "model-00001-of-00001.safetensors");
  EXPECT_EQ(make_synthetic_checkpoint(options), dir);  // reused, not rewritten
  EXPECT_EQ(fs::last_write_time(fs::path(dir) / "model-00001-of-00001.safetensors"), written);

  EngineOptions engine_options;
  engine_options.max_context = 32;
  Engine engine(dir, engine_options);
  const int32_t sequence = engine.cache().create_sequence();
  const auto logits = engine.step({SequenceWork{sequence, {1, 2, 3, 4}, LogitsWanted::All}})[0].logits;
  ASSERT_EQ(logits.size(), 4u * 512);
  for (float value : logits) ASSERT_TRUE(std::isfinite(value));
  fs::remove_all(dir);
}

// The quantized synthetic formats load as what they claim to be: mlx affine
// 4-bit and compressed-tensors FP8 (per channel, lm_head and router gates
// kept in bf16), with finite logits.
TEST(Synthetic, QuantizedDtypesLoadInTheirFormats) {
  for (const std::string dtype : {"int4", "fp8"}) {
    const SyntheticOptions options = test_options("tiny", dtype, "formats");
    const std::string dir = make_synthetic_checkpoint(options);
    EngineOptions engine_options;
    engine_options.max_context = 32;
    Engine engine(dir, engine_options);
    const Weight& q_proj = engine.model().weights().layers.front().attention.q_proj;
    EXPECT_EQ(q_proj.format.kind, dtype == "fp8" ? WeightFormat::Kind::Fp8 : WeightFormat::Kind::Affine) << dtype;
    EXPECT_EQ(engine.model().weights().lm_head.format.kind, dtype == "fp8" ? WeightFormat::Kind::Float
                                                                           : WeightFormat::Kind::Affine)
        << dtype;
    const int32_t sequence = engine.cache().create_sequence();
    const auto logits = engine.step({SequenceWork{sequence, {1, 2, 3}, LogitsWanted::All}})[0].logits;
    for (float value : logits) ASSERT_TRUE(std::isfinite(value)) << dtype;
    fs::remove_all(dir);
  }
}

// The bytes checked against the free space before writing are the bytes
// written: the index's total_size, in every stored format.
TEST(Synthetic, KnowsItsSizeBeforeWriting) {
  for (const std::string dtype : {"bf16", "f32", "int4", "int8", "fp8"}) {
    const SyntheticOptions options = test_options("tiny", dtype, "size");
    const std::string dir = make_synthetic_checkpoint(options);
    std::ifstream index(fs::path(dir) / "model.safetensors.index.json");
    const uint64_t total = nlohmann::json::parse(index)["metadata"]["total_size"].get<uint64_t>();
    EXPECT_EQ(synthetic_checkpoint_bytes(options), total) << dtype;
    fs::remove_all(dir);
  }
}

// A checkpoint larger than the directory's free space: one clear error
// before anything is written (GLM-4.5 in f32 at full depth is ~1.4 TB).
TEST(Synthetic, NoRoomIsAClearErrorBeforeWriting) {
  const SyntheticOptions options = test_options("glm-4.5", "f32", "big");
  if (synthetic_checkpoint_bytes(options) < fs::space(fs::temp_directory_path()).available)
    GTEST_SKIP() << "this machine has room for 1.4 TB";
  testing_fixtures::expect_error([&] { make_synthetic_checkpoint(options); },
                                 {" free (choose another --synthetic-dir",
                                  "checkpoint (92 layers, f32) needs 14"});  // ~1.4 TB, in GB
  std::vector<fs::path> written;
  for (const auto& entry : fs::directory_iterator(options.directory)) written.push_back(entry.path());
  EXPECT_TRUE(written.empty());
  fs::remove_all(options.directory);
}

TEST(Synthetic, UnknownShapeOrDtypeIsAClearError) {
  EXPECT_THROW(synthetic_config("glm-9", 0), Error);
  SyntheticOptions options;
  options.dtype = "int3";
  EXPECT_THROW(make_synthetic_checkpoint(options), Error);
}

}  // namespace
}  // namespace glm
