// Writing safetensors files one tensor at a time, without holding the whole
// file in memory: tensor bytes stream to a side file while the header is
// collected, and finish() writes header + data. Used by `glm4moe quantize`,
// the synthetic benchmark checkpoints and the tests.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace glm {

class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::string path);
  ~SafetensorsWriter();  // removes the side file if finish() was never called
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends a tensor; `bytes` must hold numel(shape) * dtype_size(dtype) bytes.
  void add(const std::string& name, DType dtype, const Shape& shape, std::span<const uint8_t> bytes);
  // Bytes of tensor data added so far.
  uint64_t data_bytes() const { return offset_; }
  // Writes the file (tensors in the order added; header entries sorted by name).
  // With `drop_from_cache`, a file of 256 MiB or more then leaves the page
  // cache (written back first), so that the next reader maps it in 2 MiB
  // pages (MappedFile) rather than in the mixed folios write() left.
  void finish(const std::map<std::string, std::string>& metadata = {}, bool drop_from_cache = false);

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::string path_;
  std::string side_path_;
  std::FILE* side_ = nullptr;
  uint64_t offset_ = 0;
  std::vector<Entry> entries_;
  bool finished_ = false;
};

// Writes `path`'s dirty pages back and drops the file from the page cache
// (advice: failures are ignored; tmpfs keeps its pages). Whoever maps it next
// then reads it back in 2 MiB folios (MappedFile) instead of mapping the
// mixed folios write() left with 4 KiB entries (docs/design.md, Page sizes).
void drop_from_page_cache(const std::string& path);

// Fails with one clear error, before anything is written, unless the file
// system of `directory` has room for `what`: a checkpoint of `total_bytes`
// written by SafetensorsWriter in shards of at most `largest_shard_bytes`
// (a shard's data sits in its side file until its final file is complete,
// so one shard counts twice). `hint` ends the message (what to do instead).
void require_room_for_checkpoint(const std::string& directory, uint64_t total_bytes, uint64_t largest_shard_bytes,
                                 const std::string& what, const std::string& hint);

}  // namespace glm
