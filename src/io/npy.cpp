// Minimal .npy reader/writer for float32 arrays (format versions 1.0 and 2.0).
#include "io/npy.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/error.h"

namespace glm {

void write_npy(const std::string& path, std::span<const float> values, const Shape& shape) {
  GLM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "internal error: npy shape mismatch");
  std::ostringstream dict;
  dict << "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
  dict << "), }";
  std::string header = dict.str();
  // Pad with spaces so the data starts on a 64-byte boundary, newline last.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  GLM_CHECK(out, "cannot write ", path);
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  const uint16_t length = static_cast<uint16_t>(header.size());
  const char length_bytes[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
  out.write(length_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size_bytes()));
  GLM_CHECK(out, "failed writing ", path);
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GLM_CHECK(in, "cannot open ", path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GLM_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), "\x93NUMPY", 6) == 0, path, " is not a .npy file");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_length = 0, header_start = 0;
  if (major == 1) {
    header_length = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    header_start = 10;
  } else {
    GLM_CHECK(bytes.size() >= 12, path, ": truncated header");
    for (int i = 0; i < 4; ++i) header_length |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  }
  GLM_CHECK(header_start + header_length <= bytes.size(), path, ": truncated header");
  const std::string header = bytes.substr(header_start, header_length);
  GLM_CHECK(header.find("'descr': '<f4'") != std::string::npos, path, ": only little-endian float32 is supported");
  GLM_CHECK(header.find("'fortran_order': False") != std::string::npos, path, ": Fortran order is not supported");
  std::smatch match;
  GLM_CHECK(std::regex_search(header, match, std::regex("'shape': \\(([^)]*)\\)")), path, ": no shape in header");
  NpyArray array;
  std::stringstream dims(match[1].str());
  std::string item;
  while (std::getline(dims, item, ','))
    if (item.find_first_not_of(" ") != std::string::npos) {
      GLM_CHECK(array.shape.size() < Shape::kMaxRank, path, ": more than ", Shape::kMaxRank, " dimensions");
      array.shape.push_back(std::stoll(item));
    }
  const size_t count = static_cast<size_t>(shape_numel(array.shape));
  const size_t data_start = header_start + header_length;
  GLM_CHECK(bytes.size() - data_start == count * sizeof(float), path, ": data size does not match shape ",
            shape_to_string(array.shape));
  array.values.resize(count);
  std::memcpy(array.values.data(), bytes.data() + data_start, count * sizeof(float));
  return array;
}

}  // namespace glm
