// The paged KV cache: fixed-size blocks of token slots shared by all layers'
// storage, a block table per sequence, and reference counts so a forked
// sequence shares its parent's blocks until it writes (copy-on-write of the
// last, partly filled block). The engine turns a batch plan into an
// AttentionPlan from these tables.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "backend/backend.h"

namespace glm {

struct KvCacheShape {
  int64_t n_layers = 0;
  int64_t n_kv_heads = 0;  // on this rank
  int64_t head_dim = 0;
  int64_t block_size = 16;  // token slots per block
  int64_t n_blocks = 0;
};

class PagedKvCache {
 public:
  PagedKvCache(Backend& backend, const KvCacheShape& shape);
  ~PagedKvCache();
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  int32_t create_sequence();
  void release_sequence(int32_t sequence);
  // A new sequence with the same cached tokens, sharing blocks.
  int32_t fork(int32_t sequence);
  // Forgets cached tokens from `length` on.
  void truncate(int32_t sequence, int64_t length);
  int64_t length(int32_t sequence) const;
  bool exists(int32_t sequence) const { return sequences_.count(sequence) != 0; }

  // Reserves slots for `count` tokens at the end of the sequence and returns
  // them; throws when the cache is full.
  std::vector<int64_t> append(int32_t sequence, int64_t count);
  // The same, appending the slots to `slots` (no allocation once it has room).
  void append(int32_t sequence, int64_t count, std::vector<int64_t>& slots);
  const std::vector<int32_t>& block_table(int32_t sequence) const;

  std::vector<KvLayer>& layers() { return layers_; }
  const KvCacheShape& shape() const { return shape_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;  // room for the whole cache, so appends never reallocate
    int64_t length = 0;
  };
  Sequence empty_sequence() const;
  int32_t take_block();
  void drop_block(int32_t block);
  Sequence& get(int32_t sequence);
  const Sequence& get(int32_t sequence) const;

  Backend& backend_;
  KvCacheShape shape_;
  std::vector<KvLayer> layers_;
  std::vector<int32_t> free_;
  std::vector<int32_t> references_;  // per block
  std::map<int32_t, Sequence> sequences_;
  int32_t next_sequence_ = 0;
};

}  // namespace glm
