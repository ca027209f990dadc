// The paged KV cache's block bookkeeping: slots, block tables, truncate,
// fork with shared blocks and copy-on-write of a shared partial block.
#include <gtest/gtest.h>

#include "engine/kv_cache.h"

namespace glm {
namespace {

KvCacheShape small_shape() {
  KvCacheShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 1;
  shape.head_dim = 2;
  shape.block_size = 4;
  shape.n_blocks = 6;
  return shape;
}

// Marks a slot's key in every layer so copies can be observed.
void write_slot(PagedKvCache& cache, int64_t slot, float value) {
  for (KvLayer& kv : cache.layers()) kv.keys.f32()[slot * 2] = value;
}
float read_slot(PagedKvCache& cache, int64_t slot) { return cache.layers()[1].keys.f32()[slot * 2]; }

TEST(PagedKvCache, AppendFillsBlocksInOrder) {
  auto backend = make_cpu_backend();
  PagedKvCache cache(*backend, small_shape());
  const int32_t sequence = cache.create_sequence();
  const auto first = cache.append(sequence, 6);
  ASSERT_EQ(first.size(), 6u);
  const auto& blocks = cache.block_table(sequence);
  ASSERT_EQ(blocks.size(), 2u);
  for (int64_t p = 0; p < 6; ++p) EXPECT_EQ(first[p], blocks[p / 4] * 4 + p % 4);
  const auto next = cache.append(sequence, 1);
  EXPECT_EQ(next[0], blocks[1] * 4 + 2);
  EXPECT_EQ(cache.length(sequence), 7);
  EXPECT_EQ(cache.free_blocks(), 4);
}

TEST(PagedKvCache, TruncateReturnsWholeBlocks) {
  auto backend = make_cpu_backend();
  PagedKvCache cache(*backend, small_shape());
  const int32_t sequence = cache.create_sequence();
  cache.append(sequence, 9);  // 3 blocks
  EXPECT_EQ(cache.free_blocks(), 3);
  cache.truncate(sequence, 4);
  EXPECT_EQ(cache.length(sequence), 4);
  EXPECT_EQ(cache.block_table(sequence).size(), 1u);
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_THROW(cache.truncate(sequence, 5), Error);
  cache.truncate(sequence, 0);
  EXPECT_EQ(cache.free_blocks(), 6);
}

TEST(PagedKvCache, ForkSharesBlocksAndCopiesOnWrite) {
  auto backend = make_cpu_backend();
  PagedKvCache cache(*backend, small_shape());
  const int32_t parent = cache.create_sequence();
  const auto slots = cache.append(parent, 6);
  for (int64_t p = 0; p < 6; ++p) write_slot(cache, slots[p], static_cast<float>(p + 1));

  const int32_t child = cache.fork(parent);
  EXPECT_EQ(cache.block_table(child), cache.block_table(parent));
  EXPECT_EQ(cache.free_blocks(), 4);  // nothing copied yet

  // The child writes into the shared, partly filled second block: it gets a copy.
  const auto child_slot = cache.append(child, 1);
  EXPECT_NE(cache.block_table(child)[1], cache.block_table(parent)[1]);
  EXPECT_EQ(cache.block_table(child)[0], cache.block_table(parent)[0]);  // full blocks stay shared
  write_slot(cache, child_slot[0], 100.0f);
  const int64_t child_block = cache.block_table(child)[1];
  EXPECT_EQ(read_slot(cache, child_block * 4 + 0), 5.0f);  // copied tokens
  EXPECT_EQ(read_slot(cache, child_block * 4 + 1), 6.0f);

  // The parent's own next token goes to its own (now unshared) block.
  const auto parent_slot = cache.append(parent, 1);
  write_slot(cache, parent_slot[0], 200.0f);
  EXPECT_EQ(read_slot(cache, child_slot[0]), 100.0f);
  EXPECT_EQ(read_slot(cache, parent_slot[0]), 200.0f);

  cache.release_sequence(parent);
  cache.release_sequence(child);
  EXPECT_EQ(cache.free_blocks(), 6);
}

TEST(PagedKvCache, FullCacheIsAClearError) {
  auto backend = make_cpu_backend();
  PagedKvCache cache(*backend, small_shape());
  const int32_t sequence = cache.create_sequence();
  cache.append(sequence, 24);
  try {
    cache.append(sequence, 1);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("KV cache is full"), std::string::npos);
  }
  EXPECT_EQ(cache.length(sequence), 24);
}

}  // namespace
}  // namespace glm
