// `glm4moe bench`: prompt and generation throughput of a checkpoint (or a
// synthetic one of a real shape), with the bytes each generated token reads
// split by component and the achieved bandwidth against a read kernel
// measured in the same run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/sampling.h"

namespace glm::app {

struct BenchOptions {
  std::string model;            // a checkpoint directory, or empty with `synthetic`
  std::string device = "cpu";   // cpu | cuda | cuda:N
  std::string synthetic;        // glm-4.5-air | glm-4.5 | tiny
  int64_t layers = 0;           // synthetic depth (0 = the shape's full depth)
  std::string dtype = "bf16";   // synthetic dtype: bf16 | f16 | f32 | int8 | int4
  int64_t group_size = 64;
  std::string synthetic_dir;    // where the synthetic checkpoint is written (default: temp dir)
  std::vector<int64_t> prompt_tokens{512};
  std::vector<int64_t> contexts{0};
  int64_t generate_tokens = 16;
  int threads = 0;
  bool json = false;
  bool profile = false;         // per-op device time of decoding (device backends)
  bool prompt_components = true;  // each prompt run again, marked, for its time by component
  std::vector<int64_t> batches;  // also decode this many sequences together per step (at context 0)
  // How generated tokens are chosen (default greedy). Sampling costs a device
  // step more than an argmax: a chat's settings are worth timing as they are.
  SamplingParams sampling{0.0, 0, 1.0, 0.0, 0};
};

int run_bench(const BenchOptions& options);

}  // namespace glm::app
