// The tokenizer.json BPE model: vocabulary, ranked merges and the merge loop
// of the reference library (same priority queue order, so ties and unusual
// vocabularies resolve identically), with a cache of encoded pieces because
// natural text repeats the same words constantly.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/flat_tables.h"
#include "text/tokenizer_json.h"

namespace glm::text {

class BpeModel {
 public:
  // `config` is the "model" value without its vocab and merges, which come in
  // `tables`. Throws glm::Error for another model type, options that are not
  // supported (byte_fallback, dropout) or merges naming unknown tokens.
  static BpeModel from_json(const nlohmann::json& config, BpeTables&& tables);

  BpeModel(BpeModel&& other) noexcept;
  BpeModel& operator=(BpeModel&&) = delete;
  BpeModel(const BpeModel&) = delete;

  // Appends the ids of one pre-tokenized piece.
  void encode(std::string_view piece, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_id(std::string_view token) const;
  // The spelling of `id`; nullopt when no vocabulary entry has it. The view
  // lives as long as this model and is invalidated by moving it.
  std::optional<std::string_view> token_text(int32_t id) const;
  // Number of vocabulary entries (the reference's get_vocab_size, which
  // decides where added tokens without an id of their own are placed).
  size_t entry_count() const { return vocab_.size(); }
  int32_t max_id() const { return static_cast<int32_t>(entry_of_id_.size()) - 1; }

 private:
  BpeModel() = default;

  void merge_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void add_merge(std::string_view left, std::string_view right, uint32_t rank);

  static constexpr uint32_t kNoEntry = UINT32_MAX;

  TokenTable vocab_;
  std::vector<uint32_t> entry_of_id_;  // id -> TokenTable entry, kNoEntry for unused ids
  MergeTable merges_;
  std::optional<std::string> unk_token_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;

  // Pieces below this many bytes are cached (the reference's MAX_LENGTH).
  static constexpr size_t kMaxCachedPieceBytes = 256;
  static constexpr size_t kCacheCapacity = 100'000;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace glm::text
