// libFuzzer entry point for parse_safetensors_header: any input must either
// parse into entries that lie inside the buffer without overlapping, or throw
// glm::Error. Not part of the CMake build (every tests/<folder> becomes a test
// program, so this lives outside tests/). Build and run from the repo root:
//   clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
//     fuzz/safetensors_header.cpp src/io/safetensors.cpp src/io/json_util.cpp \
//     src/core/dtype.cpp src/core/tensor.cpp -o build-fuzz/safetensors_header
//   build-fuzz/safetensors_header -max_total_time=60 -max_len=4096 CORPUS_DIR
// A seed corpus only needs one valid file, e.g. any small .safetensors.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<glm::SafetensorsEntry> entries;
  uint64_t data_start = 0;
  std::map<std::string, std::string> metadata;
  try {
    entries = glm::parse_safetensors_header(data, size, "fuzz", &data_start, &metadata);
  } catch (const glm::Error&) {
    return 0;  // rejecting bad input is the expected outcome; any other exception escapes and is reported
  }
  // An accepted header must make every view safe to read.
  if (data_start > size) std::abort();
  std::vector<const glm::SafetensorsEntry*> occupied;
  for (const auto& entry : entries) {
    if (entry.begin > entry.end || entry.end > size - data_start) std::abort();
    const uint64_t expected = static_cast<uint64_t>(glm::shape_numel(entry.shape)) * glm::dtype_size(entry.dtype);
    if (entry.end - entry.begin != expected) std::abort();
    if (entry.end > entry.begin) occupied.push_back(&entry);
  }
  std::sort(occupied.begin(), occupied.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < occupied.size(); ++i)
    if (occupied[i]->begin < occupied[i - 1]->end) std::abort();
  return 0;
}
