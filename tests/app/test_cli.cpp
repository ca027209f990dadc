// The command-line contract of `glm4moe logits | generate | info`, run as a
// user would run it, including bad input: each failure must be one clear
// "error: ..." line and a non-zero exit, never a crash.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cmath>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "io/npy.h"

namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int status = -1;
  std::string output;  // stdout and stderr together
};

CommandResult run(const std::string& arguments) {
  CommandResult result;
  const std::string command = std::string(GLM_BINARY) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096];
  size_t count;
  while ((count = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, count);
  const int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string fixture(const std::string& name) { return std::string(GLM_SOURCE_DIR) + "/tests/fixtures/" + name; }
const std::string kCase = "grouped_bf16_sharded";

nlohmann::json meta() {
  std::ifstream in(fixture(kCase) + "/reference/meta.json");
  return nlohmann::json::parse(in);
}

std::string joined(const std::vector<int>& ids) {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) text += (i ? "," : "") + std::to_string(ids[i]);
  return text;
}

// A scratch copy of a fixture checkpoint that a test may damage.
fs::path scratch_copy(const std::string& name, const std::string& label) {
  const fs::path target = fs::temp_directory_path() / ("glm4moe_cli_" + label + "_" + std::to_string(getpid()));
  fs::remove_all(target);
  fs::create_directories(target);
  for (const auto& entry : fs::directory_iterator(fixture(name)))
    if (entry.is_regular_file()) fs::copy_file(entry.path(), target / entry.path().filename());
  return target;
}

void expect_clean_error(const CommandResult& result, const std::string& needle) {
  EXPECT_EQ(result.status, 1) << result.output;
  EXPECT_EQ(result.output.rfind("error: ", 0), 0u) << result.output;
  EXPECT_NE(result.output.find(needle), std::string::npos) << result.output;
  EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
}

TEST(Cli, LogitsWritesEveryPositionAsNpy) {
  const auto prompt = meta()["prompts"][1];
  const fs::path output = fs::temp_directory_path() / ("glm4moe_logits_" + std::to_string(getpid()) + ".npy");
  const CommandResult result = run("logits --model " + fixture(kCase) + " --prompt-ids " +
                         joined(prompt["ids"].get<std::vector<int>>()) + " --output " + output.string());
  ASSERT_EQ(result.status, 0) << result.output;
  const glm::NpyArray actual = glm::read_npy(output.string());
  const glm::NpyArray expected =
      glm::read_npy(fixture(kCase) + "/reference/" + prompt["transformers_logits"].get<std::string>());
  ASSERT_EQ(actual.shape, expected.shape);
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.values.size(); ++i) {
    difference += std::pow(actual.values[i] - expected.values[i], 2);
    norm += std::pow(expected.values[i], 2);
  }
  EXPECT_LT(std::sqrt(difference / norm), 1e-4);
  fs::remove(output);
}

TEST(Cli, GenerateJsonContract) {
  const auto prompt = meta()["prompts"][1];
  const CommandResult result = run("generate --model " + fixture(kCase) + " --prompt-ids " +
                         joined(prompt["ids"].get<std::vector<int>>()) +
                         " --max-tokens 24 --temperature 0 --ignore-eos --json");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto out = nlohmann::json::parse(result.output);
  EXPECT_EQ(out["token_ids"], prompt["greedy_ids"]);
  EXPECT_EQ(out["prompt_tokens"], prompt["ids"].size());
  EXPECT_EQ(out["generated_tokens"], 24);
  EXPECT_EQ(out["finish_reason"], "length");
  EXPECT_GT(out["prompt_tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(out["generated_tokens_per_s"].get<double>(), 0.0);
}

TEST(Cli, GenerateStopsAtEos) {
  // With the first greedy token declared an eos id, generation stops there.
  const fs::path dir = scratch_copy(kCase, "eos");
  const auto prompt = meta()["prompts"][1];
  const int first = prompt["greedy_ids"][0];
  std::ofstream(dir / "generation_config.json") << "{\"eos_token_id\": [" << first << "]}";
  const CommandResult result = run("generate --model " + dir.string() + " --prompt-ids " +
                         joined(prompt["ids"].get<std::vector<int>>()) + " --max-tokens 24 --temperature 0 --json");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto out = nlohmann::json::parse(result.output);
  EXPECT_EQ(out["token_ids"], nlohmann::json::array({first}));
  EXPECT_EQ(out["finish_reason"], "eos");
  fs::remove_all(dir);
}

TEST(Cli, SampledGenerationIsReproducibleBySeed) {
  const std::string base = "generate --model " + fixture(kCase) +
                           " --prompt-ids 1,2,3 --max-tokens 16 --temperature 1.0 --top-k 40 --top-p 0.9 --ignore-eos --json";
  const CommandResult first = run(base + " --seed 7"), again = run(base + " --seed 7"), other = run(base + " --seed 8");
  ASSERT_EQ(first.status, 0) << first.output;
  const auto a = nlohmann::json::parse(first.output), b = nlohmann::json::parse(again.output),
             c = nlohmann::json::parse(other.output);
  EXPECT_EQ(a["token_ids"], b["token_ids"]);
  EXPECT_NE(a["token_ids"], c["token_ids"]);
}

TEST(Cli, InfoReportsCountsAndLayout) {
  const CommandResult result = run("info --model " + fixture(kCase) + " --json");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto out = nlohmann::json::parse(result.output);
  EXPECT_GT(out["parameters"]["total"].get<int64_t>(), out["parameters"]["active_per_token"].get<int64_t>());
  EXPECT_EQ(out["weights"]["expert_layout"], "per-expert");
  EXPECT_EQ(out["weights"]["mtp_layer"], "bound (not run)");
  EXPECT_EQ(out["weights"]["files"], 3);
}

// bench splits each prompt by component: the FLOPs it counts for the
// projections and experts (the components' total less the attention core,
// 4 x head_dim x heads per causal (query, key) pair a layer) are the
// summary's 2 x active parameters a token (lm_head's apart), to within the
// norms and biases the summary also counts.
TEST(Cli, BenchSplitsPromptsByComponent) {
  const int64_t n = 24;
  const CommandResult result =
      run("bench --model " + fixture(kCase) + " --prompt-tokens " + std::to_string(n) + " --gen-tokens 2 --threads 1 --json");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto out = nlohmann::json::parse(result.output);
  std::ifstream config_file(fixture(kCase) + "/config.json");
  const auto config = nlohmann::json::parse(config_file);
  const auto& prompt = out["prompt"].at(0);
  ASSERT_EQ(prompt["components"].size(), 4u) << prompt.dump();  // attention, dense MLP, MoE, lm_head
  double gflop = 0;
  for (const auto& c : prompt["components"]) {
    EXPECT_GT(c["GFLOP"].get<double>(), 0.0) << c.dump();
    EXPECT_GE(c["seconds"].get<double>(), 0.0) << c.dump();
    if (c["component"].get<std::string>().rfind("lm_head", 0) != 0) gflop += c["GFLOP"].get<double>();
  }
  const double core = 4.0 * config["head_dim"].get<double>() * config["num_attention_heads"].get<double>() *
                      (n * (n + 1) / 2.0) * config["num_hidden_layers"].get<double>() / 1e9;
  const double summary = prompt["GFLOP_per_s_excluding_attention"].get<double>() * prompt["seconds"].get<double>();
  EXPECT_NEAR(gflop - core, summary, 0.03 * summary);
}

// bench times generation with the sampling settings given (greedy without
// them), and says which it timed.
TEST(Cli, BenchTimesSampledGeneration) {
  const std::string common = "bench --model " + fixture(kCase) +
                             " --prompt-tokens 8 --gen-tokens 4 --threads 1 --no-prompt-components --json";
  for (const auto& [options, choice] :
       std::vector<std::pair<std::string, std::string>>{
           {"", "greedy"},
           {" --temperature 0.7 --top-k 20 --top-p 0.9 --seed 3", "sampled: temperature 0.7, top-k 20, top-p 0.9, min-p 0, seed 3"},
           {" --temperature 1.5 --min-p 0.05", "sampled: temperature 1.5, top-k 0, top-p 1, min-p 0.05, seed 0"}}) {
    const CommandResult result = run(common + options);
    ASSERT_EQ(result.status, 0) << result.output;
    const auto out = nlohmann::json::parse(result.output);
    EXPECT_EQ(out["token_choice"], choice);
    EXPECT_GT(out["generation"].at(0)["tokens_per_s"].get<double>(), 0.0) << out["generation"].dump();
  }
}

TEST(CliBadInput, BenchSamplingSettings) {
  const std::string bench = "bench --model " + fixture(kCase) + " --temperature 1";
  expect_clean_error(run(bench + " --top-p 1.5"), "top-p must lie in [0, 1] (got 1.5)");
  expect_clean_error(run(bench + " --min-p -0.1"), "min-p must lie in [0, 1]");
  expect_clean_error(run(bench + " --top-k -3"), "top-k must not be negative");
}

TEST(CliBadInput, MissingDirectory) {
  expect_clean_error(run("generate --model /nonexistent/glm --prompt-ids 1,2"), "/nonexistent/glm");
}

TEST(CliBadInput, PromptIdOutsideVocabulary) {
  expect_clean_error(run("logits --model " + fixture(kCase) + " --prompt-ids 1,99999 --output /tmp/x.npy"), "99999");
}

TEST(CliBadInput, EmptyAndMalformedPrompts) {
  expect_clean_error(run("generate --model " + fixture(kCase) + " --prompt-ids ''"), "empty");
  expect_clean_error(run("generate --model " + fixture(kCase) + " --prompt-ids 1,x,3"), "\"x\"");
  expect_clean_error(run("generate --model " + fixture(kCase) + " --prompt-ids 1,-3"), "-3");
}

TEST(CliBadInput, TruncatedShard) {
  const fs::path dir = scratch_copy(kCase, "truncated");
  const fs::path shard = dir / "model-00002-of-00003.safetensors";
  fs::resize_file(shard, fs::file_size(shard) / 2);
  expect_clean_error(run("generate --model " + dir.string() + " --prompt-ids 1,2"), "model-00002-of-00003");
  fs::remove_all(dir);
}

TEST(CliBadInput, CorruptHeader) {
  const fs::path dir = scratch_copy(kCase, "corrupt");
  {
    std::fstream shard(dir / "model-00001-of-00003.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    shard.seekp(8);
    shard.write("}}}}", 4);
  }
  expect_clean_error(run("info --model " + dir.string()), "model-00001-of-00003");
  fs::remove_all(dir);
}

// A scratch copy of the fixture whose config.json was changed by `edit`.
fs::path copy_with_config(const std::string& label, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path dir = scratch_copy(kCase, label);
  std::ifstream in(dir / "config.json");
  auto config = nlohmann::json::parse(in);
  in.close();
  edit(config);
  std::ofstream(dir / "config.json") << config.dump();
  return dir;
}

TEST(CliBadInput, ConfigDisagreesWithWeights) {
  const fs::path dir = copy_with_config("shape", [](nlohmann::json& config) {
    config["moe_intermediate_size"] = config["moe_intermediate_size"].get<int>() * 2;
  });
  expect_clean_error(run("info --model " + dir.string()), "expected shape");
  fs::remove_all(dir);
}

TEST(CliBadInput, MissingTensor) {
  const fs::path dir = copy_with_config("missing", [](nlohmann::json& config) {
    config["num_hidden_layers"] = config["num_hidden_layers"].get<int>() + 2;
  });
  expect_clean_error(run("info --model " + dir.string()), "is missing from the checkpoint");
  fs::remove_all(dir);
}

TEST(CliBadInput, UnsupportedConfigValue) {
  const fs::path dir = copy_with_config("topk", [](nlohmann::json& config) { config["topk_method"] = "greedy"; });
  expect_clean_error(run("info --model " + dir.string()), "topk_method");
  fs::remove_all(dir);
}

TEST(CliBadInput, PromptSourcesAndMissingTokenizer) {
  expect_clean_error(run("generate --model " + fixture(kCase)), "exactly one of");
  expect_clean_error(run("generate --model " + fixture(kCase) + " --prompt hello"), "tokenizer.json");
}

}  // namespace

namespace {

const std::string kTrained = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

TEST(Cli, ChatAnswersEachLineOfInputAndExitsAtEnd) {
  const fs::path input = fs::temp_directory_path() / ("glm4moe_chat_" + std::to_string(getpid()) + ".txt");
  std::ofstream(input) << "Hello, who are you?\nTell me \\\nsomething.\n/exit\nnever read\n";
  const CommandResult result = run("chat --model " + kTrained +
                                   " --temperature 0 --max-tokens 12 --no-think < " + input.string());
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 2) << result.output;
  fs::remove(input);
}

TEST(Cli, TextPromptStreamsTextAndJsonCarriesIt) {
  const CommandResult streamed = run("generate --model " + kTrained +
                                     " --prompt 'The meaning of life is' --max-tokens 8 --temperature 0 --ignore-eos");
  ASSERT_EQ(streamed.status, 0) << streamed.output;
  const CommandResult json = run("generate --model " + kTrained +
                                 " --prompt 'The meaning of life is' --max-tokens 8 --temperature 0 --ignore-eos --json");
  ASSERT_EQ(json.status, 0) << json.output;
  const auto out = nlohmann::json::parse(json.output);
  EXPECT_EQ(out["prompt_tokens"], 5);
  EXPECT_EQ(streamed.output.rfind(out["text"].get<std::string>(), 0), 0u) << streamed.output;
}

}  // namespace

namespace {

TEST(Cli, QuantizeWritesACheckpointThatLoads) {
  const fs::path output = fs::temp_directory_path() / ("glm4moe_quantized_" + std::to_string(getpid()));
  fs::remove_all(output);
  const CommandResult quantized = run("quantize --model " + kTrained + " --bits 8 --group-size 64 --output " +
                                      output.string());
  ASSERT_EQ(quantized.status, 0) << quantized.output;
  EXPECT_TRUE(fs::exists(output / "tokenizer.json"));
  const CommandResult info = run("info --model " + output.string() + " --json");
  ASSERT_EQ(info.status, 0) << info.output;
  EXPECT_EQ(nlohmann::json::parse(info.output)["quantization"], "MLX affine 8-bit g64");
  const CommandResult generated = run("generate --model " + output.string() +
                                      " --prompt 'The meaning of life is' --max-tokens 4 --json");
  EXPECT_EQ(generated.status, 0) << generated.output;
  expect_clean_error(run("quantize --model " + kTrained + " --bits 4 --output " + output.string()), "");
  fs::remove_all(output);
}

}  // namespace
