// Shared helpers of the quantization tests: fixture paths, rewriting a
// checkpoint with changed tensors or config, logits of a checkpoint, and
// checking that an error message names what it should.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

#include "engine/engine.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "../common/checkpoint_files.h"
#include "../common/errors.h"
#include "../common/reference_fixtures.h"

namespace glm::quant_test {

namespace fs = std::filesystem;

using testing_fixtures::all_logits;
using testing_fixtures::expect_error;
using testing_fixtures::fresh_dir;
using testing_fixtures::read_all;
using testing_fixtures::read_json;
using testing_fixtures::relative_l2;
using testing_fixtures::TensorBytes;
using testing_fixtures::two_rank_logits;
using testing_fixtures::write_safetensors;

inline fs::path fixture(const std::string& name) { return fs::path(GLM_SOURCE_DIR) / "tests" / "fixtures" / name; }

// Copies checkpoint `from` into a fresh directory as one safetensors file,
// letting `edit_tensors` and `edit_config` change it first.
inline fs::path rewrite(const fs::path& from, const std::string& label,
                        const std::function<void(std::map<std::string, TensorBytes>&)>& edit_tensors,
                        const std::function<void(nlohmann::json&)>& edit_config = {}) {
  std::map<std::string, TensorBytes> tensors = read_all(Checkpoint(from.string()));
  if (edit_tensors) edit_tensors(tensors);
  nlohmann::json config = read_json(from / "config.json");
  if (edit_config) edit_config(config);
  const fs::path dir = fresh_dir(label);
  std::ofstream(dir / "config.json") << config.dump(2);
  if (fs::exists(from / "generation_config.json"))
    fs::copy_file(from / "generation_config.json", dir / "generation_config.json");
  write_safetensors(dir / "model.safetensors", tensors);
  return dir;
}

inline EngineOptions small_options() {
  EngineOptions options;
  options.max_context = 128;
  options.block_size = 8;
  return options;
}

// The prompts of a quant fixture's expected/quant_meta.json with their logits.
struct ExpectedPrompt {
  std::vector<int32_t> ids;
  NpyArray logits;
};
inline std::vector<ExpectedPrompt> expected_prompts(const fs::path& fixture_dir) {
  std::vector<ExpectedPrompt> prompts;
  const nlohmann::json meta = read_json(fixture_dir / "expected" / "quant_meta.json");
  for (const auto& prompt : meta["prompts"])
    prompts.push_back({prompt["ids"].get<std::vector<int32_t>>(),
                       read_npy((fixture_dir / "expected" / prompt["logits"].get<std::string>()).string())});
  return prompts;
}

// Logits of `dir` for every expected prompt, each within `tolerance` relative L2.
inline void expect_logits_match(const fs::path& dir, const fs::path& fixture_dir, double tolerance,
                                EngineOptions options = small_options()) {
  Engine engine(dir.string(), options);
  for (const ExpectedPrompt& prompt : expected_prompts(fixture_dir)) {
    const std::vector<float> logits = all_logits(engine, prompt.ids);
    ASSERT_EQ(logits.size(), prompt.logits.values.size());
    EXPECT_LT(relative_l2(logits, prompt.logits.values), tolerance)
        << dir << " vs " << fixture_dir.filename() << ", prompt of " << prompt.ids.size() << " tokens";
  }
}

}  // namespace glm::quant_test
