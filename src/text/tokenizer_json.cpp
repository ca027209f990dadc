// SAX reading of tokenizer.json (see tokenizer_json.h).
#include "text/tokenizer_json.h"

#include "core/error.h"

namespace glm::text {
namespace {

using Json = nlohmann::json;

// Receives nlohmann's SAX events. Values outside model.vocab / model.merges are
// assembled into a tree the way nlohmann's own DOM parser does; inside them
// they go straight into BpeTables.
class Reader {
 public:
  explicit Reader(TokenizerJson& out) : out_(out) {}

  bool null() { return value(nullptr); }
  bool boolean(bool v) { return value(v); }
  bool number_integer(Json::number_integer_t v) { return integer(v, Json(v)); }
  bool number_unsigned(Json::number_unsigned_t v) {
    return integer(v > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v), Json(v));
  }
  bool number_float(Json::number_float_t v, const std::string&) { return value(v); }
  bool binary(Json::binary_t&) { return value(nullptr); }

  bool string(std::string& v) {
    if (mode_ == Mode::kMerges) {
      if (merge_depth_ == 0) {
        add_merge_line(v);
      } else {
        GLM_CHECK(pair_size_ < 2, "tokenizer.json: merge ", merge_rank() + 1, " has more than two tokens");
        pair_[pair_size_++] = append_spelling(v);
      }
      return true;
    }
    if (mode_ == Mode::kVocab) bad_vocab_value("a string");
    return value(std::move(v));
  }

  bool start_object(std::size_t) {
    if (mode_ == Mode::kVocab) bad_vocab_value("an object");
    if (mode_ == Mode::kMerges) bad_merge("an object");
    if (at_model_field("vocab")) {
      mode_ = Mode::kVocab;
      out_.bpe.has_vocab = true;
      return true;
    }
    return open(Json::object());
  }

  bool key(std::string& k) {
    if (mode_ == Mode::kVocab) {
      vocab_key_.assign(k);  // a copy keeps the parser's buffer alive for reuse
    } else {
      keys_.back() = std::move(k);
    }
    return true;
  }

  bool end_object() {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kTree;
      return true;
    }
    return close();
  }

  bool start_array(std::size_t) {
    if (mode_ == Mode::kVocab) bad_vocab_value("an array");
    if (mode_ == Mode::kMerges) {
      if (merge_depth_ != 0) bad_merge("a nested array");
      GLM_CHECK(!saw_merge_lines_, "tokenizer.json: merges mix \"a b\" strings and [\"a\",\"b\"] pairs");
      saw_merge_pairs_ = true;
      merge_depth_ = 1;
      pair_size_ = 0;
      return true;
    }
    if (at_model_field("merges")) {
      mode_ = Mode::kMerges;
      out_.bpe.has_merges = true;
      return true;
    }
    return open(Json::array());
  }

  bool end_array() {
    if (mode_ == Mode::kMerges) {
      if (merge_depth_ == 1) {
        GLM_CHECK(pair_size_ == 2, "tokenizer.json: merge ", merge_rank() + 1, " must be a pair of strings, got ",
                  pair_size_, " string(s)");
        out_.bpe.merges.push_back({pair_[0].first, pair_[0].second, pair_[1].first, pair_[1].second});
        merge_depth_ = 0;
      } else {
        mode_ = Mode::kTree;
      }
      return true;
    }
    return close();
  }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& error) {
    std::string detail = error.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag; keep the position and reason.
    if (!detail.empty() && detail.front() == '[') {
      const size_t close_bracket = detail.find("] ");
      if (close_bracket != std::string::npos) detail.erase(0, close_bracket + 2);
    }
    fail("tokenizer.json: invalid JSON at byte ", position, ": ", detail);
  }

 private:
  enum class Mode { kTree, kVocab, kMerges };

  size_t merge_rank() const { return out_.bpe.merges.size(); }

  // Copies rather than moves, so the parser keeps reusing its string buffer
  // instead of allocating one per token (there are ~450k of them).
  std::pair<uint32_t, uint32_t> append_spelling(std::string_view text) {
    std::string& spellings = out_.bpe.merge_spellings;
    GLM_CHECK(spellings.size() + text.size() <= UINT32_MAX, "tokenizer.json: merges exceed 4 GiB");
    const auto offset = static_cast<uint32_t>(spellings.size());
    spellings.append(text);
    return {offset, static_cast<uint32_t>(text.size())};
  }

  void add_merge_line(std::string_view line) {
    GLM_CHECK(!saw_merge_pairs_, "tokenizer.json: merges mix [\"a\",\"b\"] pairs and \"a b\" strings");
    saw_merge_lines_ = true;
    // The reference skips a merges.txt header line that made it into the list.
    if (line.rfind("#version", 0) == 0) return;
    const size_t space = line.find(' ');
    GLM_CHECK(space != std::string_view::npos && line.find(' ', space + 1) == std::string_view::npos,
              "tokenizer.json: merge ", merge_rank() + 1, " \"", std::string(line),
              "\" is not two tokens separated by one space");
    const auto left = append_spelling(line.substr(0, space));
    const auto right = append_spelling(line.substr(space + 1));
    out_.bpe.merges.push_back({left.first, left.second, right.first, right.second});
  }

  [[noreturn]] void bad_vocab_value(const char* kind) {
    fail("tokenizer.json: vocab entry \"", vocab_key_, "\" has ", kind, " as id (expected an integer)");
  }
  [[noreturn]] void bad_merge(const char* kind) {
    fail("tokenizer.json: merge ", merge_rank() + 1, " must be \"a b\" or a pair of strings, got ", kind);
  }

  bool integer(int64_t id, Json json) {
    if (mode_ == Mode::kVocab) {
      GLM_CHECK(id >= 0 && id <= kMaxTokenId, "tokenizer.json: vocab entry \"", vocab_key_, "\" has id ", id,
                " (expected 0..", kMaxTokenId, ")");
      out_.bpe.vocab.insert_or_assign(vocab_key_, static_cast<int32_t>(id));
      return true;
    }
    return value(std::move(json));
  }

  // Whether the container about to open is root["model"][field].
  bool at_model_field(const char* field) const {
    return stack_.size() == 2 && keys_[0] == "model" && stack_[1]->is_object() && keys_[1] == field;
  }

  // Places a scalar or new container into the enclosing one.
  Json* place(Json&& v) {
    if (mode_ == Mode::kVocab) bad_vocab_value("a non-integer value");
    if (mode_ == Mode::kMerges) bad_merge("a non-string value");
    if (stack_.empty()) {
      out_.config = std::move(v);
      return &out_.config;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    Json& slot = parent[keys_.back()];
    slot = std::move(v);
    return &slot;
  }

  bool value(Json&& v) {
    place(std::move(v));
    return true;
  }

  bool open(Json&& container) {
    stack_.push_back(place(std::move(container)));
    keys_.emplace_back();
    return true;
  }

  bool close() {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }

  TokenizerJson& out_;
  Mode mode_ = Mode::kTree;
  std::vector<Json*> stack_;        // open containers of the tree
  std::vector<std::string> keys_;   // per open container: the key of the value being read
  std::string vocab_key_;
  int merge_depth_ = 0;             // 1 while inside one ["a", "b"] pair
  std::pair<uint32_t, uint32_t> pair_[2]{};
  int pair_size_ = 0;
  bool saw_merge_lines_ = false;
  bool saw_merge_pairs_ = false;
};

}  // namespace

TokenizerJson read_tokenizer_json(std::string_view text) {
  TokenizerJson out;
  Reader reader(out);
  Json::sax_parse(text.begin(), text.end(), &reader);
  return out;
}

}  // namespace glm::text
