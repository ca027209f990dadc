// Random test inputs shared by the op and kernel tests: `count` values drawn
// from a normal distribution of standard deviation `scale`, reproducible from
// `seed`.
#pragma once

#include <cstddef>
#include <random>
#include <vector>

namespace glm::testing_random {

inline std::vector<float> random_values(size_t count, unsigned seed, float scale = 1.0f) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(count);
  for (float& value : values) value = normal(generator);
  return values;
}

}  // namespace glm::testing_random
