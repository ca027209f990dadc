// Tokenizer benchmark (not built by CMake): load time of a GLM-sized
// tokenizer.json and single-thread encode throughput on English text, plus an
// exactness check of the ids against the reference library.
//
// Inputs come from tools/tokenizer/make_bench_tokenizer.py. Build and run:
//   python3 tools/tokenizer/make_bench_tokenizer.py /tmp/glm_tokenizer_bench
//   cmake --build build-text --target glm_text
//   g++ -O2 -std=c++20 -Isrc bench/tokenizer/bench_tokenizer.cpp build-text/libglm_text.a \
//       build-text/libglm_io.a build-text/libglm_core.a -lpcre2-8 -lutf8proc -o /tmp/bench_tokenizer
//   taskset -c 0 /tmp/bench_tokenizer /tmp/glm_tokenizer_bench
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/json_util.h"
#include "text/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/tmp/glm_tokenizer_bench";
  try {
    const std::string tokenizer_path = dir + "/tokenizer.json";
    const std::string text = glm::read_text_file(dir + "/english.txt");

    std::vector<double> load_times;
    for (int run = 0; run < 3; ++run) {
      const auto start = std::chrono::steady_clock::now();
      const glm::Tokenizer loaded = glm::Tokenizer::from_file(tokenizer_path);
      load_times.push_back(seconds_since(start));
    }
    std::sort(load_times.begin(), load_times.end());

    // A fresh tokenizer, so the first pass pays for every BPE merge (cold
    // piece cache); later passes show the steady state of a long-running server.
    const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(tokenizer_path);
    auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer.encode(text);
    const double cold = seconds_since(start);
    start = std::chrono::steady_clock::now();
    constexpr int kWarmPasses = 3;
    for (int pass = 0; pass < kWarmPasses; ++pass) tokenizer.encode(text);
    const double warm = seconds_since(start) / kWarmPasses;
    start = std::chrono::steady_clock::now();
    const std::string decoded = tokenizer.decode(ids);
    const double decode = seconds_since(start);

    const auto expected =
        glm::parse_json(glm::read_text_file(dir + "/expected_ids.json"), "expected_ids.json").get<std::vector<int32_t>>();
    const double megabytes = static_cast<double>(text.size()) / 1e6;
    std::printf("vocab size          %zu\n", tokenizer.vocab_size());
    std::printf("load (median of 3)  %.3f s\n", load_times[1]);
    std::printf("text                %.2f MB, %zu tokens\n", megabytes, ids.size());
    std::printf("encode, cold cache  %.2f MB/s\n", megabytes / cold);
    std::printf("encode, warm cache  %.2f MB/s\n", megabytes / warm);
    std::printf("decode              %.2f MB/s\n", megabytes / decode);
    std::printf("ids match reference %s\n", ids == expected ? "yes" : "NO");
    std::printf("round trip          %s\n", decoded == text ? "yes" : "NO");
    return ids == expected && decoded == text ? 0 : 1;
  } catch (const glm::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
