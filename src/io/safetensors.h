// Memory-mapped safetensors checkpoints: one file, or the shards listed by a
// model.safetensors.index.json. Headers are untrusted input: every offset,
// dtype and shape is validated before a view into the mapping is handed out.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace glm {

// A read-only memory mapping of a whole file (munmap on destruction).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws glm::Error naming the path
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data area
  uint64_t end = 0;
};

// Parses and validates a safetensors header from raw bytes (the whole file).
// Checks: 8-byte little-endian header length within the file and at most
// 100 MiB; valid JSON object; every entry has a known dtype, a shape of
// non-negative extents, data_offsets [begin, end] with begin <= end, inside
// the data area, end - begin == numel * dtype size; no two tensors overlap;
// optional "__metadata__" must map strings to strings. `what` names the source
// (the path) in messages. Entries come back sorted by name.
std::vector<SafetensorsEntry> parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& what,
                                                       uint64_t* data_start = nullptr,
                                                       std::map<std::string, std::string>* metadata = nullptr);

// One mapped safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_.path(); }
  const MappedFile& mapping() const { return file_; }
  // A view of the named tensor; throws if absent.
  TensorView view(const std::string& name) const;
  const SafetensorsEntry* find(const std::string& name) const;

 private:
  MappedFile file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: model.safetensors.index.json's shards
// when the index exists, otherwise every *.safetensors file in the directory
// (a tensor name appearing in two files is an error, as is an index naming a
// missing shard or a tensor the shard lacks).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& directory);

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Metadata of a tensor, or nullptr when absent.
  const SafetensorsEntry* find(const std::string& name) const;
  TensorView view(const std::string& name) const;  // throws naming the tensor when absent
  std::vector<std::string> names() const;          // sorted
  const std::string& directory() const { return directory_; }
  size_t file_count() const { return files_.size(); }
  uint64_t total_bytes() const;  // sum of the tensors' byte sizes
  // Reads one byte of every page of every file so later reads hit memory
  // (benchmarks time warm weights, without major page faults).
  void touch_all_pages() const;

 private:
  std::string directory_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> index_;  // tensor name -> file
};

}  // namespace glm
