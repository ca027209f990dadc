// llama.cpp and glm4moe decoding in one process, in turns: the side-by-side
// comparison of issue #4 made immune to the machine's state.
//
// On the development VM the read bandwidth flips between two states (~35 and
// ~57 GB/s) from one minute to the next (docs/benchmarks.md, sessions 27-30),
// so two programs timed one after the other often meet different states and
// their ratio says more about the VM than about either engine. Here both
// engines live in one process: llama.cpp (its CPU build, linked as static
// libraries) loads a GGUF, glm4moe loads its checkpoint of the same weights,
// and rounds alternate between them (ABBA order), each a prompt of PROMPT
// tokens (16; 2048 compares decoding at that depth) then TOKENS single-token
// decode steps timed on their own. A round of the defaults takes a couple of
// seconds, so both sides of a round meet the same state; the
// median of the per-round ratios is the comparison. Both engines share one
// libgomp (llama.cpp's CPU build uses OpenMP too), so its spin setting
// (GOMP_SPINCOUNT, OMP_WAIT_POLICY) applies to both: the glm4moe binary sets
// GOMP_SPINCOUNT=10000 for itself (src/app/main.cpp), llama-bench runs with
// libgomp's default; run this under each to see both.
//
// Built only when CMake is told where llama.cpp is (bench/llama_cpp_cpu.sh
// fetches and builds it):
//   cmake -B build -DGLM_LLAMA_CPP_SOURCE=<llama.cpp source> -DGLM_LLAMA_CPP_BUILD=<its build dir>
//   cmake --build build --target bench_llama_cpp_interleaved
//   build/bench_llama_cpp_interleaved GGUF OUR_CHECKPOINT_DIR [ROUNDS=12] [TOKENS=32] [THREADS=2] [PROMPT=16]
// Tokens fed are fixed ids (the weights are random; nothing is sampled).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include <omp.h>

#include "engine/engine.h"
#include "llama.h"

namespace {

using Clock = std::chrono::steady_clock;

int positive_argument(int argc, char** argv, int index, int fallback, const char* what) {
  if (argc <= index) return fallback;
  char* end = nullptr;
  const long value = std::strtol(argv[index], &end, 10);
  if (end == argv[index] || *end != '\0' || value < 1 || value > 1 << 20) {
    std::fprintf(stderr, "bench_llama_cpp_interleaved: %s must be a positive count, not \"%s\"\n", what, argv[index]);
    std::exit(2);
  }
  return static_cast<int>(value);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: bench_llama_cpp_interleaved GGUF OUR_CHECKPOINT_DIR [ROUNDS=12] [TOKENS=32] [THREADS=2] "
                 "[PROMPT=16]\n");
    return 2;
  }
  const int rounds = positive_argument(argc, argv, 3, 12, "ROUNDS");
  const int tokens = positive_argument(argc, argv, 4, 32, "TOKENS");
  const int threads = positive_argument(argc, argv, 5, 2, "THREADS");
  const int prompt_tokens = positive_argument(argc, argv, 6, 16, "PROMPT");
  const int context = prompt_tokens + tokens + 16;
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens));  // int32_t is llama_token too
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 100 + 37 * (i % 4000);

  llama_backend_init();
  llama_model* llama_weights = llama_model_load_from_file(argv[1], llama_model_default_params());
  if (!llama_weights) {
    std::fprintf(stderr, "bench_llama_cpp_interleaved: llama.cpp could not load %s\n", argv[1]);
    return 1;
  }
  llama_context_params context_params = llama_context_default_params();
  context_params.n_ctx = static_cast<uint32_t>(context);
  context_params.n_batch = static_cast<uint32_t>(prompt_tokens);  // the prompt in one llama_decode
  context_params.n_threads = threads;
  context_params.n_threads_batch = threads;
  llama_context* llama = llama_init_from_model(llama_weights, context_params);
  if (!llama) {
    std::fprintf(stderr, "bench_llama_cpp_interleaved: llama.cpp could not make a context\n");
    return 1;
  }

  omp_set_num_threads(threads);
  glm::EngineOptions options;
  options.max_context = context;
  glm::Engine engine(argv[2], options);
  engine.checkpoint().touch_all_pages();  // as `glm4moe bench` does: memory warm
  auto& cache = engine.cache();

  // One round of each: the prompt, then `tokens` decode steps timed (tok/s).
  auto llama_round = [&] {
    llama_memory_clear(llama_get_memory(llama), true);
    if (llama_decode(llama, llama_batch_get_one(prompt.data(), prompt_tokens)) != 0) {
      std::fprintf(stderr, "bench_llama_cpp_interleaved: llama.cpp failed on the prompt\n");
      std::exit(1);
    }
    llama_synchronize(llama);
    const auto start = Clock::now();
    for (int i = 0; i < tokens; ++i) {
      llama_token id = 200 + i;
      if (llama_decode(llama, llama_batch_get_one(&id, 1)) != 0) {
        std::fprintf(stderr, "bench_llama_cpp_interleaved: llama.cpp failed on a decode step\n");
        std::exit(1);
      }
      llama_synchronize(llama);
    }
    return tokens / std::chrono::duration<double>(Clock::now() - start).count();
  };
  auto our_round = [&] {
    const int32_t sequence = cache.create_sequence();
    engine.step({glm::SequenceWork{sequence, prompt, glm::LogitsWanted::None}});
    const auto start = Clock::now();
    for (int i = 0; i < tokens; ++i)
      engine.step({glm::SequenceWork{sequence, {200 + i}, glm::LogitsWanted::Last}});
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    cache.release_sequence(sequence);
    return tokens / seconds;
  };

  llama_round();  // warm-up: each engine's first step allocates and packs
  our_round();
  std::vector<double> theirs, ours, ratios;
  for (int round = 0; round < rounds; ++round) {
    double llama_rate, our_rate;
    if (round % 2 == 0) {
      llama_rate = llama_round();
      our_rate = our_round();
    } else {
      our_rate = our_round();
      llama_rate = llama_round();
    }
    theirs.push_back(llama_rate);
    ours.push_back(our_rate);
    ratios.push_back(our_rate / llama_rate);
    std::printf("round %2d: llama.cpp %.2f tok/s, glm4moe %.2f tok/s, ratio %.3f\n", round, llama_rate, our_rate,
                our_rate / llama_rate);
    std::fflush(stdout);
  }
  std::printf("%d rounds of %d tokens after %d, %d threads: llama.cpp median %.2f tok/s, glm4moe median %.2f; "
              "glm4moe / llama.cpp median %.3f (range %.3f-%.3f)\n",
              rounds, tokens, prompt_tokens, threads, median(theirs), median(ours), median(ratios),
              *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
  llama_free(llama);
  llama_model_free(llama_weights);
  return 0;
}

}  // namespace

// glm4moe reports bad input (a missing or corrupt checkpoint) by exceptions.
int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_llama_cpp_interleaved: %s\n", error.what());
    return 1;
  }
}
