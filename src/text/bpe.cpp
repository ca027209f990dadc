// BPE model: loading, merge loop and piece cache (see bpe.h).
#include "text/bpe.h"

#include <queue>

#include "core/error.h"
#include "io/json_util.h"
#include "text/utf8.h"

namespace glm::text {
namespace {

std::optional<std::string> optional_string(const nlohmann::json& config, const char* key) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return std::nullopt;
  GLM_CHECK(found->is_string(), "tokenizer.json: model \"", key, "\" must be a string or null, got ",
            json_excerpt(*found));
  return found->get<std::string>();
}

bool optional_bool(const nlohmann::json& config, const char* key) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return false;
  GLM_CHECK(found->is_boolean(), "tokenizer.json: model \"", key, "\" must be a boolean, got ", json_excerpt(*found));
  return found->get<bool>();
}

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  size_t byte_length;  // 0 marks a symbol merged into its left neighbour
};

struct MergeCandidate {
  size_t pos;
  uint32_t rank;
  int32_t new_id;
};

// Lowest rank first, then leftmost: the order of the reference's heap.
struct LaterCandidate {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

}  // namespace

BpeModel::BpeModel(BpeModel&& other) noexcept
    : vocab_(std::move(other.vocab_)),
      entry_of_id_(std::move(other.entry_of_id_)),
      merges_(std::move(other.merges_)),
      unk_token_(std::move(other.unk_token_)),
      continuing_subword_prefix_(std::move(other.continuing_subword_prefix_)),
      end_of_word_suffix_(std::move(other.end_of_word_suffix_)),
      fuse_unk_(other.fuse_unk_),
      ignore_merges_(other.ignore_merges_),
      cache_(std::move(other.cache_)) {}

BpeModel BpeModel::from_json(const nlohmann::json& config, BpeTables&& tables) {
  GLM_CHECK(config.is_object(), "tokenizer.json: \"model\" must be an object, got ", json_excerpt(config));
  const auto type = config.find("type");
  if (type != config.end()) {
    GLM_CHECK(type->is_string() && type->get<std::string>() == "BPE", "tokenizer.json: model type ",
              json_excerpt(*type), " is not supported (supported: BPE)");
  }
  BpeModel model;
  model.unk_token_ = optional_string(config, "unk_token");
  model.continuing_subword_prefix_ = optional_string(config, "continuing_subword_prefix").value_or("");
  model.end_of_word_suffix_ = optional_string(config, "end_of_word_suffix").value_or("");
  model.fuse_unk_ = optional_bool(config, "fuse_unk");
  model.ignore_merges_ = optional_bool(config, "ignore_merges");
  GLM_CHECK(!optional_bool(config, "byte_fallback"), "tokenizer.json: BPE byte_fallback=true is not supported");
  const auto dropout = config.find("dropout");
  if (dropout != config.end() && !dropout->is_null()) {
    // Dropout makes encoding random; the reference treats 0 as "off".
    GLM_CHECK(dropout->is_number() && dropout->get<double>() == 0.0, "tokenizer.json: BPE dropout ",
              json_excerpt(*dropout), " is not supported (only null or 0)");
  }

  GLM_CHECK(tables.has_vocab, "tokenizer.json: model needs a \"vocab\" object");
  GLM_CHECK(tables.has_merges, "tokenizer.json: model needs a \"merges\" array");
  model.vocab_ = std::move(tables.vocab);
  int32_t max_id = -1;
  model.vocab_.for_each([&](uint32_t, int32_t id) { max_id = std::max(max_id, id); });
  model.entry_of_id_.assign(static_cast<size_t>(max_id + 1), kNoEntry);
  model.vocab_.for_each([&](uint32_t entry, int32_t id) {
    // Two tokens sharing an id is malformed; which one decodes is arbitrary, as in the reference.
    if (model.entry_of_id_[id] == kNoEntry) model.entry_of_id_[id] = entry;
  });

  model.merges_.reserve(tables.merges.size());
  const std::string_view spellings = tables.merge_spellings;
  uint32_t rank = 0;
  for (const BpeTables::Merge& merge : tables.merges) {
    model.add_merge(spellings.substr(merge.left_offset, merge.left_length),
                    spellings.substr(merge.right_offset, merge.right_length), rank++);
  }
  if (model.unk_token_) {
    GLM_CHECK(model.vocab_.find(*model.unk_token_) >= 0, "tokenizer.json: unk_token \"", *model.unk_token_,
              "\" is not in the vocabulary");
  }
  return model;
}

void BpeModel::add_merge(std::string_view left, std::string_view right, uint32_t rank) {
  const int32_t left_id = vocab_.find(left);
  const int32_t right_id = vocab_.find(right);
  GLM_CHECK(left_id >= 0, "tokenizer.json: merge token \"", std::string(left), "\" is not in the vocabulary");
  GLM_CHECK(right_id >= 0, "tokenizer.json: merge token \"", std::string(right), "\" is not in the vocabulary");
  GLM_CHECK(right.size() >= continuing_subword_prefix_.size(), "tokenizer.json: merge token \"", std::string(right),
            "\" is shorter than continuing_subword_prefix");
  std::string merged;
  merged.reserve(left.size() + right.size());
  merged.append(left).append(right.substr(continuing_subword_prefix_.size()));
  const int32_t merged_id = vocab_.find(merged);
  GLM_CHECK(merged_id >= 0, "tokenizer.json: merged token \"", merged, "\" is not in the vocabulary");
  // A repeated pair keeps its last rank, as the reference's map insertion does.
  merges_.insert_or_assign(left_id, right_id, MergeTable::Target{rank, merged_id});
}

std::optional<int32_t> BpeModel::token_id(std::string_view token) const {
  const int32_t id = vocab_.find(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::optional<std::string_view> BpeModel::token_text(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= entry_of_id_.size() || entry_of_id_[id] == kNoEntry) return std::nullopt;
  return vocab_.spelling(entry_of_id_[id]);
}

void BpeModel::encode(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    const int32_t whole = vocab_.find(piece);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }
  const bool cacheable = piece.size() < kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    const auto hit = cache_.find(piece);
    if (hit != cache_.end()) {
      ids.insert(ids.end(), hit->second.begin(), hit->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  merge_piece(piece, ids);
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    // Like the reference, a full cache stops growing rather than evicting.
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(piece), std::vector<int32_t>(ids.begin() + first, ids.end()));
  }
}

void BpeModel::merge_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add_symbol = [&](int32_t id, size_t byte_length) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(Symbol{id, symbols.empty() ? -1 : index - 1, -1, byte_length});
  };

  // Characters missing from the vocabulary become the unknown token (fused
  // into one when fuse_unk), or vanish when there is none, as in the reference.
  int32_t pending_unknown_id = -1;  // -1: no unknown run pending
  size_t pending_unknown_length = 0;
  auto flush_unknown = [&] {
    if (pending_unknown_id >= 0) add_symbol(pending_unknown_id, pending_unknown_length);
    pending_unknown_id = -1;
  };
  std::string lookup;
  size_t pos = 0;
  while (pos < piece.size()) {
    const size_t length = utf8_length_of_lead(static_cast<unsigned char>(piece[pos]));
    const bool is_first = pos == 0;
    const bool is_last = pos + length >= piece.size();
    std::string_view key = piece.substr(pos, length);
    if ((!is_first && !continuing_subword_prefix_.empty()) || (is_last && !end_of_word_suffix_.empty())) {
      lookup.assign(is_first ? "" : continuing_subword_prefix_);
      lookup.append(key);
      if (is_last) lookup.append(end_of_word_suffix_);
      key = lookup;
    }
    const int32_t found = vocab_.find(key);
    if (found >= 0) {
      flush_unknown();
      add_symbol(found, length);
    } else if (unk_token_) {
      if (pending_unknown_id >= 0 && fuse_unk_) {
        pending_unknown_length += length;
      } else {
        flush_unknown();
        pending_unknown_id = vocab_.find(*unk_token_);
        pending_unknown_length = length;
      }
    }
    pos += length;
  }
  flush_unknown();

  auto find_merge = [&](int32_t left, int32_t right) { return merges_.find(left, right); };
  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, LaterCandidate> queue;
  for (size_t index = 0; index + 1 < symbols.size(); ++index) {
    if (const MergeTable::Target* merge = find_merge(symbols[index].id, symbols[index + 1].id))
      queue.push(MergeCandidate{index, merge->rank, merge->id});
  }
  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.byte_length == 0 || current.next == -1) continue;
    const auto right_pos = static_cast<size_t>(current.next);
    const Symbol right = symbols[right_pos];
    // Entries go stale when a neighbour merged first; the reference checks
    // only that the pair still produces the same token, and so do we.
    const MergeTable::Target* still = find_merge(current.id, right.id);
    if (still == nullptr || still->id != top.new_id) continue;

    current.id = top.new_id;
    current.byte_length += right.byte_length;
    current.next = right.next;
    symbols[right_pos].byte_length = 0;
    if (right.next > -1 && static_cast<size_t>(right.next) < symbols.size()) symbols[right.next].prev = static_cast<int32_t>(top.pos);

    if (current.prev >= 0) {
      if (const MergeTable::Target* merge = find_merge(symbols[current.prev].id, current.id))
        queue.push(MergeCandidate{static_cast<size_t>(current.prev), merge->rank, merge->id});
    }
    if (current.next > -1 && static_cast<size_t>(current.next) < symbols.size()) {
      if (const MergeTable::Target* merge = find_merge(current.id, symbols[current.next].id))
        queue.push(MergeCandidate{top.pos, merge->rank, merge->id});
    }
  }
  for (const Symbol& symbol : symbols)
    if (symbol.byte_length != 0) ids.push_back(symbol.id);
}

}  // namespace glm::text
