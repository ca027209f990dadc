// Streaming reader for tokenizer.json. A GLM file holds ~151k vocabulary
// entries and as many merges; building a JSON tree for them costs more than the
// one-second load budget, so those two are read straight into flat lists while
// everything else (small) becomes an ordinary nlohmann::json tree.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/flat_tables.h"

namespace glm::text {

// Far above any real vocabulary (GLM: ~151k) yet small enough that a hostile
// id cannot make the per-id tables exhaust memory.
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 21) - 1;

struct BpeTables {
  bool has_vocab = false;  // model.vocab was an object (else it stays in `config`)
  TokenTable vocab;
  bool has_merges = false;  // model.merges was an array (else it stays in `config`)
  // Both spellings of each merge, in file order (rank order), in one buffer;
  // legacy "a b" strings are already split.
  struct Merge {
    uint32_t left_offset;
    uint32_t left_length;
    uint32_t right_offset;
    uint32_t right_length;
  };
  std::string merge_spellings;
  std::vector<Merge> merges;
};

struct TokenizerJson {
  nlohmann::json config;  // the whole file minus model.vocab and model.merges
  BpeTables bpe;
};

// Throws glm::Error for invalid JSON, a vocabulary id that is not an integer
// in 0..kMaxTokenId, or a merge that is neither "a b" nor a pair of strings.
TokenizerJson read_tokenizer_json(std::string_view text);

}  // namespace glm::text
