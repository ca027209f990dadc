// The scratch allocator both backends use: a bump allocator over a list of
// chunks that are kept across resets, so a steady-state step allocates
// nothing. The backend says how a chunk is made (host or device memory) and
// freed; the arena only hands out aligned pieces of them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "backend/backend.h"

namespace glm {

template <size_t kAlignment>
class ChunkArena {
 public:
  // `grow(n)` makes a chunk of at least n bytes: a (pointer, size) pair.
  template <typename Grow>
  void* take(size_t bytes, Grow&& grow) {
    bytes = (std::max<size_t>(bytes, 1) + kAlignment - 1) & ~(kAlignment - 1);
    while (current_ < chunks_.size() && used_ + bytes > chunks_[current_].second) {
      ++current_;
      used_ = 0;
    }
    if (current_ == chunks_.size()) {
      chunks_.push_back(grow(bytes));
      used_ = 0;
    }
    void* out = static_cast<char*>(chunks_[current_].first) + used_;
    used_ += bytes;
    return out;
  }
  void reset() {
    current_ = 0;
    used_ = 0;
  }
  Backend::ScratchMark mark() const { return {current_, used_}; }
  void rewind(const Backend::ScratchMark& mark) {
    current_ = mark.chunk;
    used_ = mark.used;
  }
  template <typename Free>
  void free_all(Free&& free_chunk) {
    for (auto& chunk : chunks_) free_chunk(chunk.first);
    chunks_.clear();
    reset();
  }

 private:
  std::vector<std::pair<void*, size_t>> chunks_;  // (pointer, size)
  size_t current_ = 0;
  size_t used_ = 0;
};

}  // namespace glm
