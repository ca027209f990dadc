// Open-addressing vocabulary and merge tables (see flat_tables.h).
#include "text/flat_tables.h"

#include <algorithm>
#include <functional>

#include "core/error.h"

namespace glm::text {
namespace {

size_t power_of_two_at_least(size_t value) {
  size_t size = 16;
  while (size < value) size <<= 1;
  return size;
}

}  // namespace

uint32_t TokenTable::hash_of(std::string_view text) {
  const uint64_t full = std::hash<std::string_view>{}(text);
  return static_cast<uint32_t>(full ^ (full >> 32));
}

void TokenTable::reserve(size_t tokens, size_t bytes) {
  arena_.reserve(bytes);
  entries_.reserve(tokens);
  if (slots_.size() < tokens * 2) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(power_of_two_at_least(tokens * 2), Slot{});
    for (const Slot& slot : old) {
      if (slot.entry_plus_one == 0) continue;
      size_t index = slot.hash & (slots_.size() - 1);
      while (slots_[index].entry_plus_one != 0) index = (index + 1) & (slots_.size() - 1);
      slots_[index] = slot;
    }
  }
}

void TokenTable::grow() { reserve(std::max<size_t>(slots_.size(), 8), arena_.capacity()); }

size_t TokenTable::find_slot(std::string_view text, uint32_t hash) const {
  const size_t mask = slots_.size() - 1;
  size_t index = hash & mask;
  while (true) {
    const Slot& slot = slots_[index];
    if (slot.entry_plus_one == 0) return index;
    if (slot.hash == hash && slot.length == text.size() &&
        std::string_view(arena_).substr(slot.offset, slot.length) == text)
      return index;
    index = (index + 1) & mask;
  }
}

void TokenTable::insert_or_assign(std::string_view text, int32_t id) {
  if ((distinct_ + 1) * 2 > slots_.size()) grow();
  const uint32_t hash = hash_of(text);
  const size_t index = find_slot(text, hash);
  if (slots_[index].entry_plus_one != 0) {
    slots_[index].id = id;
    entries_[slots_[index].entry_plus_one - 1].id = id;
    return;
  }
  GLM_CHECK(arena_.size() + text.size() <= UINT32_MAX, "tokenizer.json: vocabulary spellings exceed 4 GiB");
  const auto offset = static_cast<uint32_t>(arena_.size());
  const auto length = static_cast<uint32_t>(text.size());
  entries_.push_back(Entry{offset, length, id});
  arena_.append(text);
  slots_[index] = Slot{hash, static_cast<uint32_t>(entries_.size()), offset, length, id};
  ++distinct_;
}

int32_t TokenTable::find(std::string_view text) const {
  if (slots_.empty()) return -1;
  const size_t index = find_slot(text, hash_of(text));
  return slots_[index].entry_plus_one == 0 ? -1 : slots_[index].id;
}

size_t MergeTable::index_of(uint64_t key) const {
  // Fibonacci hashing spreads the pair's two ids over the high bits.
  return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & (slots_.size() - 1);
}

void MergeTable::reserve(size_t merges) {
  if (slots_.size() >= merges * 2) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(power_of_two_at_least(merges * 2), Slot{});
  for (const Slot& slot : old) {
    if (slot.key == kEmpty) continue;
    size_t index = index_of(slot.key);
    while (slots_[index].key != kEmpty) index = (index + 1) & (slots_.size() - 1);
    slots_[index] = slot;
  }
}

void MergeTable::grow() { reserve(std::max<size_t>(slots_.size(), 8)); }

void MergeTable::insert_or_assign(int32_t left, int32_t right, Target target) {
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = key_of(left, right);
  size_t index = index_of(key);
  while (slots_[index].key != kEmpty && slots_[index].key != key) index = (index + 1) & (slots_.size() - 1);
  if (slots_[index].key == kEmpty) ++count_;
  slots_[index] = Slot{key, target};
}

const MergeTable::Target* MergeTable::find(int32_t left, int32_t right) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = key_of(left, right);
  size_t index = index_of(key);
  while (slots_[index].key != kEmpty) {
    if (slots_[index].key == key) return &slots_[index].target;
    index = (index + 1) & (slots_.size() - 1);
  }
  return nullptr;
}

}  // namespace glm::text
