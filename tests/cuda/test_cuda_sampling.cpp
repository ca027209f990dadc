// Sampling on the GPU against the CPU reference, through Backend::sample on
// both backends: the same token ids, row by row, on random logits of the
// GLM vocabulary (151552) and small ones — greedy, each filter alone and all
// combined, many seeds and steps, ties (coarse grids, all-equal rows, ties
// at the maximum), masked (-inf) tokens and extreme temperatures — and
// in-step sampling against host sampling of the GPU engine's own logits, and
// end-to-end generation with sampling on the fixtures, GPU against CPU. Each
// comparison prints a "PARITY" line (mismatched tokens); a "TIMING" line
// gives the kernel's time per row. Skips without a GPU.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/backend.h"

#ifdef GLM_HAVE_CUDA
#include "cuda_parity.h"
#include "engine/generate.h"
#include "../common/reference_fixtures.h"
#include "../common/step_sampling.h"

namespace glm {
namespace {

using namespace cuda_parity;

constexpr int64_t kGlmVocab = 151552;

enum class Kind { Normal, Tied, Flat, Masked, Peaked };
const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Normal: return "normal";
    case Kind::Tied: return "tied";
    case Kind::Flat: return "flat";
    case Kind::Masked: return "masked";
    case Kind::Peaked: return "peaked";
  }
  return "?";
}

// [rows, vocab] logits of one kind: normal with scale 3; on a 0.25 grid (many
// exact ties, the maximum included); all zero; 90% -inf; one token far ahead.
std::vector<float> make_logits(Kind kind, int64_t rows, int64_t vocab, unsigned seed) {
  std::vector<float> x = random_values(static_cast<size_t>(rows * vocab), seed, 3.0f);
  std::mt19937 generator(seed + 1);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * vocab;
    switch (kind) {
      case Kind::Normal: break;
      case Kind::Tied:
        for (int64_t i = 0; i < vocab; ++i) row[i] = std::round(row[i] * 4.0f) / 4.0f;
        break;
      case Kind::Flat: std::fill(row, row + vocab, 0.0f); break;
      case Kind::Masked:
        for (int64_t i = 0; i < vocab; ++i)
          if (generator() % 10 != 0) row[i] = -INFINITY;
        row[generator() % vocab] = 0.5f;  // at least one finite logit
        break;
      case Kind::Peaked: row[generator() % vocab] = 40.0f; break;
    }
  }
  return x;
}

// Samples every row on both backends; reports and returns the rows whose tokens differ.
int mismatched_rows(Backends& b, const std::vector<float>& logits, int64_t vocab,
                    const std::vector<SamplingRequest>& requests, const std::string& what) {
  const int64_t rows = static_cast<int64_t>(requests.size());
  Both x = input(b, {rows, vocab}, logits);
  std::vector<int32_t> cpu(static_cast<size_t>(rows)), gpu(static_cast<size_t>(rows));
  b.cpu->sample(cpu, x.cpu, requests);
  b.gpu->sample(gpu, x.gpu, requests);
  int mismatches = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (cpu[r] == gpu[r]) continue;
    if (mismatches++ < 3) {
      const SamplingParams& p = requests[r].params;
      ADD_FAILURE() << what << " row " << r << ": cpu " << cpu[r] << " gpu " << gpu[r] << " (temperature "
                    << p.temperature << ", top_k " << p.top_k << ", top_p " << p.top_p << ", min_p " << p.min_p
                    << ", seed " << p.seed << ", sequence " << requests[r].sequence << ", step " << requests[r].step
                    << ")";
    }
  }
  std::printf("PARITY %-58s %d/%lld\n", what.c_str(), mismatches, static_cast<long long>(rows));
  return mismatches;
}

std::vector<SamplingRequest> requests_for(const SamplingParams& params, int64_t rows, uint64_t first_step) {
  std::vector<SamplingRequest> requests;
  for (int64_t r = 0; r < rows; ++r)
    requests.push_back(SamplingRequest{params, static_cast<uint64_t>(r % 3), first_step + static_cast<uint64_t>(r)});
  return requests;
}

TEST(CudaSampling, GreedyIsTheFirstLargestLogit) {
  REQUIRE_GPU();
  Backends b;
  SamplingParams greedy;
  greedy.temperature = 0.0;
  for (int64_t vocab : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{1000}, int64_t{4099}, kGlmVocab}) {
    for (Kind kind : {Kind::Normal, Kind::Tied, Kind::Flat, Kind::Masked}) {
      const int64_t rows = 8;
      const auto what = "sample greedy " + std::string(kind_name(kind)) + " vocab " + std::to_string(vocab);
      EXPECT_EQ(mismatched_rows(b, make_logits(kind, rows, vocab, 11), vocab, requests_for(greedy, rows, 0), what),
                0);
    }
  }
  // The maximum repeated far apart and at the end: the first one wins.
  std::vector<float> x = make_logits(Kind::Normal, 1, kGlmVocab, 12);
  x[100001] = x[kGlmVocab - 1] = x[77] = 50.0f;
  Both logits = input(b, {1, kGlmVocab}, x);
  std::vector<int32_t> token(1);
  const std::vector<SamplingRequest> request = requests_for(greedy, 1, 0);
  b.gpu->sample(token, logits.gpu, request);
  EXPECT_EQ(token[0], 77);
}

// Each filter alone, then combined; many seeds and steps; every kind of logits.
TEST(CudaSampling, FiltersAloneAndCombinedDrawTheCpuTokens) {
  REQUIRE_GPU();
  Backends b;
  // temperature, top_k, top_p, min_p, seed
  std::vector<SamplingParams> settings = {
      {1.0, 0, 1.0, 0.0, 1},      {0.7, 0, 1.0, 0.0, 2},       {1e-4, 0, 1.0, 0.0, 3},   {1e4, 0, 1.0, 0.0, 4},
      {1e-40, 0, 1.0, 0.0, 5},    {1.0, 1, 1.0, 0.0, 6},       {1.0, 2, 1.0, 0.0, 7},    {1.0, 50, 1.0, 0.0, 8},
      {0.9, 1000, 1.0, 0.0, 9},   {1.0, 0, 0.0, 0.0, 10},      {1.0, 0, 0.5, 0.0, 11},   {1.0, 0, 0.9, 0.0, 12},
      {1.0, 0, 0.999, 0.0, 13},   {1.0, 0, 1.0, 0.01, 14},     {1.0, 0, 1.0, 0.3, 15},   {1.0, 0, 1.0, 1.0, 16},
      {0.8, 40, 0.9, 0.02, 17},   {0.6, 0, 0.95, 0.05, 18},    {1.2, 200, 0.7, 0.0, 19}, {1.0, 20, 1.0, 0.1, 20},
      {0.1, 5000, 0.99, 0.001, 21}, {3.0, 100000, 0.8, 0.0, 22}, {0.9, 3000, 0.97, 0.0, 25}};
  int total_mismatches = 0;
  for (int64_t vocab : {int64_t{33}, int64_t{4099}, kGlmVocab}) {
    const int64_t rows = vocab == kGlmVocab ? 6 : 24;
    std::vector<SamplingParams> here = settings;
    // (top-k 1000, 3000 and 5000 fall either side of the kernel's compaction capacity, 4096)
    here.push_back({1.0, vocab - 1, 1.0, 0.0, 23});  // top-k one short of the vocabulary
    here.push_back({1.0, vocab + 5, 0.9, 0.0, 24});  // top-k past it: off
    for (size_t s = 0; s < here.size(); ++s) {
      for (Kind kind : {Kind::Normal, Kind::Tied, Kind::Flat, Kind::Masked, Kind::Peaked}) {
        const auto logits = make_logits(kind, rows, vocab, static_cast<unsigned>(100 * s + static_cast<int>(kind)));
        const auto what = "sample setting " + std::to_string(s) + " " + kind_name(kind) + " vocab " +
                          std::to_string(vocab);
        total_mismatches += mismatched_rows(b, logits, vocab, requests_for(here[s], rows, 1000 * s), what);
      }
    }
  }
  EXPECT_EQ(total_mismatches, 0);
}

// One logits row drawn at 400 steps: the draws spread over the distribution,
// so targets land everywhere in the cumulative mass, boundaries included.
// Tied rows mostly search the whole row by radix; normal rows first by
// distance from the best logit (a few hundred tokens a bucket), so targets
// also land on the edges between distance buckets.
TEST(CudaSampling, ManyStepsOfOneRow) {
  REQUIRE_GPU();
  Backends b;
  const int64_t rows = 400;
  for (Kind kind : {Kind::Tied, Kind::Normal}) {
    for (const SamplingParams& params : {SamplingParams{1.0, 0, 0.95, 0.0, 31},
                                         SamplingParams{0.8, 64, 0.9, 0.01, 32}, SamplingParams{2.0, 0, 1.0, 0.0, 33}}) {
      std::vector<float> row = make_logits(kind, 1, kGlmVocab, 40);
      std::vector<float> logits;
      for (int64_t r = 0; r < rows; ++r) logits.insert(logits.end(), row.begin(), row.end());
      EXPECT_EQ(mismatched_rows(b, logits, kGlmVocab, requests_for(params, rows, 0),
                                "sample one " + std::string(kind_name(kind)) + " row 400 steps seed " +
                                    std::to_string(params.seed)),
                0);
    }
  }
}

TEST(CudaSampling, KernelTimePerRow) {
  REQUIRE_GPU();
  Backends b;
  for (int64_t rows : {int64_t{1}, int64_t{8}}) {
    Both logits = input(b, {rows, kGlmVocab}, make_logits(Kind::Normal, rows, kGlmVocab, 50));
    std::vector<int32_t> tokens(static_cast<size_t>(rows));
    for (const SamplingParams& params : {SamplingParams{0.0, 0, 1.0, 0.0, 0}, SamplingParams{0.8, 50, 0.95, 0.0, 1},
                                         SamplingParams{0.8, 0, 0.95, 0.05, 2}, SamplingParams{1.0, 0, 1.0, 0.0, 3}}) {
      const auto requests = requests_for(params, rows, 0);
      b.gpu->sample(tokens, logits.gpu, requests);  // warm-up
      const int repeats = 50;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < repeats; ++i) b.gpu->sample(tokens, logits.gpu, requests);
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      std::printf("TIMING sample vocab %lld rows %lld temperature %g top_k %lld top_p %g min_p %g: %.1f us per call\n",
                  static_cast<long long>(kGlmVocab), static_cast<long long>(rows), params.temperature,
                  static_cast<long long>(params.top_k), params.top_p, params.min_p, us / repeats);
    }
  }
}

// On the GPU engine, steps that sample on the device choose what host
// sampling of the same rows' logits chooses (exact: the same logits), in
// mixed plans where the sampled rows are gathered out of the logits too.
TEST(CudaSampling, StepSamplingEqualsHostSamplingOfTheGpuLogits) {
  REQUIRE_GPU();
  using namespace testing_fixtures;
  const std::string name = fixture_cases().front();
  EngineOptions options;
  options.device = "cuda";
  options.max_context = 256;
  options.block_size = 4;
  Engine gpu(case_dir(name).string(), options);
  const nlohmann::json meta = load_meta(name);
  std::vector<std::vector<int32_t>> prompts;
  for (size_t p = 0; p < 3; ++p) prompts.push_back(ids_of(meta["prompts"][p % meta["prompts"].size()]));
  expect_step_sampling_matches_host(gpu, prompts);
}

// Generation with sampling on, the whole model on the GPU against the CPU
// engine. The two engines' logits differ by ~1e-6 (relative), so a draw
// could only differ where it lands that close to a token's boundary in the
// cumulative mass: the tokens are expected identical.
TEST(CudaSampling, SampledGenerationMatchesTheCpuEngine) {
  REQUIRE_GPU();
  using namespace testing_fixtures;
  int matched = 0, total = 0;
  for (const std::string& name : fixture_cases()) {
    EngineOptions options;
    options.max_context = 256;
    options.block_size = 4;
    Engine cpu(case_dir(name).string(), options);
    options.device = "cuda";
    Engine gpu(case_dir(name).string(), options);
    const nlohmann::json meta = load_meta(name);
    for (const SamplingParams& params : {SamplingParams{0.8, 40, 0.9, 0.02, 7}, SamplingParams{1.0, 0, 1.0, 0.0, 8},
                                         SamplingParams{1.5, 0, 0.95, 0.0, 9}}) {
      GenerationRequest request;
      request.prompt = ids_of(meta["prompts"].back());
      request.max_tokens = 24;
      request.ignore_eos = true;
      request.sampling = params;
      request.random_stream = 5;
      const auto on_gpu = generate(gpu, request).tokens, on_cpu = generate(cpu, request).tokens;
      EXPECT_EQ(on_gpu, on_cpu) << name << " seed " << params.seed;
      matched += on_gpu == on_cpu;
      ++total;
    }
  }
  std::printf("PARITY %-58s %d/%d\n", "e2e sampled generation identical (fixtures x settings)", matched, total);
}

}  // namespace
}  // namespace glm

#else  // built without CUDA

TEST(CudaSampling, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA backend (GLM_CUDA off or no nvcc)"; }

#endif
