// Shared helpers of the tests that read tests/fixtures/<case>/reference (the
// transformers and mlx-lm recordings of tools/make_fixtures.py): the case
// list, their metadata, the relative L2 error, and a whole-prompt logits run.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace glm::testing_fixtures {

namespace fs = std::filesystem;

inline fs::path case_dir(const std::string& name) { return fs::path(GLM_SOURCE_DIR) / "tests" / "fixtures" / name; }

// Every fixture folder with recorded references, sorted.
inline std::vector<std::string> fixture_cases() {
  std::vector<std::string> cases;
  for (const auto& entry : fs::directory_iterator(fs::path(GLM_SOURCE_DIR) / "tests" / "fixtures"))
    if (fs::exists(entry.path() / "reference" / "meta.json")) cases.push_back(entry.path().filename().string());
  std::sort(cases.begin(), cases.end());
  return cases;
}

inline nlohmann::json load_meta(const std::string& name) {
  std::ifstream in(case_dir(name) / "reference" / "meta.json");
  return nlohmann::json::parse(in);
}

// ||actual - expected|| / ||expected||, in double.
inline double relative_l2(std::span<const float> actual, std::span<const float> expected) {
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    difference += (actual[i] - expected[i]) * static_cast<double>(actual[i] - expected[i]);
    norm += expected[i] * static_cast<double>(expected[i]);
  }
  return std::sqrt(difference / norm);
}

inline std::vector<int32_t> ids_of(const nlohmann::json& prompt) { return prompt["ids"].get<std::vector<int32_t>>(); }

// Logits at every position of `ids` as a fresh sequence.
inline std::vector<float> all_logits(Engine& engine, const std::vector<int32_t>& ids) {
  const int32_t sequence = engine.cache().create_sequence();
  auto results = engine.step({SequenceWork{sequence, ids, LogitsWanted::All}});
  engine.cache().release_sequence(sequence);
  return results[0].logits;
}

// Logits of `ids` from two tensor-parallel ranks of `dir` run as threads
// joined by a ThreadCommunicator; throws the first rank's error.
inline std::vector<std::vector<float>> two_rank_logits(const std::string& dir, const EngineOptions& base,
                                                       const std::vector<int32_t>& ids) {
  auto group = std::make_shared<ThreadCommunicator::Group>(2);
  std::vector<std::vector<float>> logits(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.emplace_back([&, rank] {
      try {
        ThreadCommunicator communicator(group, rank);
        EngineOptions options = base;
        options.parallel = {rank, 2};
        options.communicator = &communicator;
        Engine engine(dir, options);
        logits[rank] = all_logits(engine, ids);
      } catch (const std::exception& error) {
        errors[rank] = error.what();
      }
    });
  for (auto& rank : ranks) rank.join();
  for (const std::string& error : errors)
    if (!error.empty()) throw Error(error);
  return logits;
}

}  // namespace glm::testing_fixtures
