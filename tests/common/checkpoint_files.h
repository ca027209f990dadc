// Test helpers that build checkpoints on disk: read every tensor of a
// checkpoint into memory, write tensors back as one safetensors file with the
// engine's writer, and make fresh scratch directories.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace glm::testing_fixtures {

namespace fs = std::filesystem;

struct TensorBytes {
  DType dtype;
  Shape shape;
  std::string bytes;
};

inline std::map<std::string, TensorBytes> read_all(const Checkpoint& checkpoint) {
  std::map<std::string, TensorBytes> tensors;
  for (const std::string& name : checkpoint.names()) {
    const TensorView view = checkpoint.view(name);
    tensors[name] = {view.dtype, view.shape, std::string(static_cast<const char*>(view.data), view.nbytes())};
  }
  return tensors;
}

// Writes a single-file safetensors checkpoint (header entries sorted by name).
inline void write_safetensors(const fs::path& path, const std::map<std::string, TensorBytes>& tensors) {
  SafetensorsWriter writer(path.string());
  for (const auto& [name, tensor] : tensors)
    writer.add(name, tensor.dtype, tensor.shape,
               {reinterpret_cast<const uint8_t*>(tensor.bytes.data()), tensor.bytes.size()});
  writer.finish({{"format", "pt"}});
}

// A fresh empty directory under the system temp dir, unique per process and label.
inline fs::path fresh_dir(const std::string& label) {
  const fs::path dir = fs::temp_directory_path() / ("glm4moe_test_" + label + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

inline nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

}  // namespace glm::testing_fixtures
