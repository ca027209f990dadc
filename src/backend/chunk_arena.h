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
  // Whether `p` lies in a piece handed out after `mark` (so a rewind to it
  // hands that memory out again); false for memory outside the arena.
  bool taken_since(const Backend::ScratchMark& mark, const void* p) const {
    const auto* byte = static_cast<const char*>(p);
    for (size_t chunk = 0; chunk < chunks_.size(); ++chunk) {
      const auto* first = static_cast<const char*>(chunks_[chunk].first);
      if (byte < first || byte >= first + chunks_[chunk].second) continue;
      return chunk > mark.chunk || (chunk == mark.chunk && static_cast<size_t>(byte - first) >= mark.used);
    }
    return false;
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
