// Block bookkeeping of the paged KV cache.
#include "engine/kv_cache.h"

#include <algorithm>
#include <utility>

namespace glm {

PagedKvCache::PagedKvCache(Backend& backend, const KvCacheShape& shape) : backend_(backend), shape_(shape) {
  GLM_CHECK(shape.block_size > 0 && shape.n_blocks > 0, "KV cache needs a positive block size and block count");
  for (int64_t layer = 0; layer < shape.n_layers; ++layer) {
    KvLayer kv;
    kv.keys = backend.allocate({shape.n_blocks, shape.block_size, shape.n_kv_heads, shape.head_dim});
    kv.values = backend.allocate({shape.n_blocks, shape.block_size, shape.n_kv_heads, shape.head_dim});
    layers_.push_back(kv);
  }
  references_.assign(static_cast<size_t>(shape.n_blocks), 0);
  for (int64_t block = shape.n_blocks - 1; block >= 0; --block) free_.push_back(static_cast<int32_t>(block));
}

PagedKvCache::~PagedKvCache() {
  for (KvLayer& kv : layers_) {
    backend_.release(kv.keys);
    backend_.release(kv.values);
  }
}

PagedKvCache::Sequence PagedKvCache::empty_sequence() const {
  Sequence sequence;
  sequence.blocks.reserve(static_cast<size_t>(shape_.n_blocks));
  return sequence;
}

int32_t PagedKvCache::create_sequence() {
  const int32_t id = next_sequence_++;
  sequences_[id] = empty_sequence();
  return id;
}

void PagedKvCache::release_sequence(int32_t sequence) {
  for (int32_t block : get(sequence).blocks) drop_block(block);
  sequences_.erase(sequence);
}

int32_t PagedKvCache::fork(int32_t sequence) {
  Sequence copy = empty_sequence();
  const Sequence& source = get(sequence);
  copy.blocks.assign(source.blocks.begin(), source.blocks.end());
  copy.length = source.length;
  for (int32_t block : copy.blocks) ++references_[block];
  const int32_t id = next_sequence_++;
  sequences_[id] = std::move(copy);
  return id;
}

void PagedKvCache::truncate(int32_t sequence, int64_t length) {
  Sequence& entry = get(sequence);
  GLM_CHECK(length >= 0 && length <= entry.length, "cannot truncate sequence ", sequence, " of length ", entry.length,
            " to ", length);
  const size_t keep = static_cast<size_t>((length + shape_.block_size - 1) / shape_.block_size);
  while (entry.blocks.size() > keep) {
    drop_block(entry.blocks.back());
    entry.blocks.pop_back();
  }
  entry.length = length;
}

int64_t PagedKvCache::length(int32_t sequence) const { return get(sequence).length; }

std::vector<int64_t> PagedKvCache::append(int32_t sequence, int64_t count) {
  std::vector<int64_t> slots;
  slots.reserve(static_cast<size_t>(count));
  append(sequence, count, slots);
  return slots;
}

void PagedKvCache::append(int32_t sequence, int64_t count, std::vector<int64_t>& slots) {
  Sequence& entry = get(sequence);
  const int64_t new_length = entry.length + count;
  const int64_t blocks_needed = (new_length + shape_.block_size - 1) / shape_.block_size;
  const bool last_block_partial = entry.length % shape_.block_size != 0;
  const bool must_copy_last = count > 0 && last_block_partial && references_[entry.blocks.back()] > 1;
  const int64_t new_blocks = blocks_needed - static_cast<int64_t>(entry.blocks.size()) + (must_copy_last ? 1 : 0);
  GLM_CHECK(new_blocks <= free_blocks(), "KV cache is full: sequence ", sequence, " needs ", new_blocks,
            " more blocks of ", shape_.block_size, " tokens, ", free_blocks(), " are free (raise --kv-blocks)");

  // A partly filled block shared with a fork is about to be written: give this
  // sequence its own copy first so the other sequence's tokens stay intact.
  if (must_copy_last) {
    const int32_t shared = entry.blocks.back();
    const int32_t own = take_block();
    for (KvLayer& kv : layers_) backend_.copy_kv_block(kv, shared, own);
    drop_block(shared);
    entry.blocks.back() = own;
  }
  while (static_cast<int64_t>(entry.blocks.size()) < blocks_needed) entry.blocks.push_back(take_block());

  for (int64_t position = entry.length; position < new_length; ++position)
    slots.push_back(static_cast<int64_t>(entry.blocks[position / shape_.block_size]) * shape_.block_size +
                    position % shape_.block_size);
  entry.length = new_length;
}

const std::vector<int32_t>& PagedKvCache::block_table(int32_t sequence) const { return get(sequence).blocks; }

int32_t PagedKvCache::take_block() {
  GLM_CHECK(!free_.empty(), "KV cache is full");
  const int32_t block = free_.back();
  free_.pop_back();
  references_[block] = 1;
  return block;
}

void PagedKvCache::drop_block(int32_t block) {
  if (--references_[block] == 0) free_.push_back(block);
}

PagedKvCache::Sequence& PagedKvCache::get(int32_t sequence) {
  auto it = sequences_.find(sequence);
  GLM_CHECK(it != sequences_.end(), "unknown sequence ", sequence);
  return it->second;
}

const PagedKvCache::Sequence& PagedKvCache::get(int32_t sequence) const {
  auto it = sequences_.find(sequence);
  GLM_CHECK(it != sequences_.end(), "unknown sequence ", sequence);
  return it->second;
}

}  // namespace glm
