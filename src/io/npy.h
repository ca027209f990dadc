// NumPy .npy files of float32 arrays: written by `glm4moe logits`, read by the
// tests to compare against recorded reference logits.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace glm {

struct NpyArray {
  Shape shape;
  std::vector<float> values;  // C order
};

// Writes a little-endian float32 array in .npy format version 1.0.
void write_npy(const std::string& path, std::span<const float> values, const Shape& shape);
// Reads a float32 ('<f4') C-order .npy file; any other layout is an error.
NpyArray read_npy(const std::string& path);

}  // namespace glm
