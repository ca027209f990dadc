// Synthetic checkpoints of real GLM-4 MoE shapes with random weights, for
// benchmarks: written once to safetensors files in the Hub layout (so the
// memory-mapped loading path is what gets measured) and reused afterwards.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.h"

namespace glm {

struct SyntheticOptions {
  std::string shape = "glm-4.5-air";  // glm-4.5-air | glm-4.5 | tiny
  int64_t layers = 0;                 // decoder layers; 0 = the shape's full depth
  std::string dtype = "bf16";         // bf16 | f16 | f32 | int8 | int4 (mlx affine)
  int64_t group_size = 64;            // for int8 / int4
  std::string directory;              // where to write (reused when it holds the same request)
  uint64_t seed = 1;
};

// The configuration of a named real shape cut to `layers` layers.
Glm4MoeConfig synthetic_config(const std::string& shape, int64_t layers);

// The tensor bytes the checkpoint of `options` holds (its index's
// total_size), known before writing it.
uint64_t synthetic_checkpoint_bytes(const SyntheticOptions& options);

// Writes (or reuses) the checkpoint and returns its directory, after checking
// that the directory's file system has room for it (one clear error if not).
// Progress goes to stderr.
std::string make_synthetic_checkpoint(const SyntheticOptions& options);

}  // namespace glm
