// Compact hash tables for the BPE vocabulary and merges. A GLM vocabulary has
// ~151k tokens and as many merges; node-based std::unordered_map spends most
// of the load time (and much encode time) on allocations and cache misses, so
// spellings live in one buffer and both tables use open addressing.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace glm::text {

// Token spelling -> id. Spellings are stored once, in insertion order.
class TokenTable {
 public:
  void reserve(size_t tokens, size_t bytes);

  // Maps `text` to `id`; a spelling added again keeps the later id, as a JSON
  // object read into a map does.
  void insert_or_assign(std::string_view text, int32_t id);

  // -1 when absent.
  int32_t find(std::string_view text) const;

  size_t size() const { return distinct_; }

  // Calls visit(entry, id) once per distinct spelling; `entry` is a stable
  // handle for spelling(), valid across moves of the table (views into the
  // buffer are not: a short buffer moves with the object).
  template <typename Visit>
  void for_each(Visit&& visit) const {
    for (const Slot& slot : slots_) {
      if (slot.entry_plus_one != 0) visit(slot.entry_plus_one - 1, slot.id);
    }
  }

  std::string_view spelling(uint32_t entry) const {
    return std::string_view(arena_).substr(entries_[entry].offset, entries_[entry].length);
  }

 private:
  struct Entry {
    uint32_t offset;
    uint32_t length;
    int32_t id;
  };
  // A slot repeats its entry's location and id so that a lookup touches the
  // slot and the spelling only (loading does ~600k lookups, mostly misses).
  struct Slot {
    uint32_t hash;
    uint32_t entry_plus_one;  // 0: empty
    uint32_t offset;
    uint32_t length;
    int32_t id;
  };

  static uint32_t hash_of(std::string_view text);
  size_t find_slot(std::string_view text, uint32_t hash) const;
  void grow();

  std::string arena_;
  std::vector<Entry> entries_;
  std::vector<Slot> slots_;  // size is a power of two, at most half full
  size_t distinct_ = 0;
};

// (left id, right id) -> (rank, merged id).
class MergeTable {
 public:
  struct Target {
    uint32_t rank;
    int32_t id;
  };

  void reserve(size_t merges);
  // A pair added again keeps its later target, as the reference's map does.
  void insert_or_assign(int32_t left, int32_t right, Target target);
  // Null when the pair does not merge.
  const Target* find(int32_t left, int32_t right) const;
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    Target target{};
  };

  static uint64_t key_of(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t index_of(uint64_t key) const;
  void grow();

  std::vector<Slot> slots_;  // size is a power of two, at most half full
  size_t count_ = 0;
};

}  // namespace glm::text
