// The text tokenizer of glm4moe: loads a Hugging Face tokenizer.json as
// shipped with GLM checkpoints (byte-level BPE with added special tokens) and
// encodes/decodes exactly like the `tokenizers` library (version pinned in
// tools/requirements-tokenizer.txt). Anything in a tokenizer.json that is not
// implemented fails at load with a glm::Error naming it.
//
// Input bytes that are not valid UTF-8 are repaired before encoding: every
// maximal invalid subsequence becomes U+FFFD, as Rust's from_utf8_lossy does
// (the reference itself only accepts valid strings). Decoding turns byte
// sequences that are not UTF-8 into U+FFFD exactly as the reference does.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace glm {

class StreamingDecoder;

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a model directory containing one.
  static Tokenizer from_file(const std::string& path);
  // `json_text` is the content of a tokenizer.json.
  static Tokenizer from_json(std::string_view json_text);

  // Token ids of `text` (any bytes). add_special_tokens applies the file's
  // post-processor (e.g. a "[gMASK]<sop>" prefix); leave it false for text
  // that already carries its special tokens, such as a rendered chat template.
  // Special tokens written in the text are always recognised.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;

  // Text of `ids`; ids with no token are skipped, as in the reference.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Id of a token spelled exactly as in the vocabulary or added tokens
  // (e.g. "<|user|>", or "Ġthe" for " the"); -1 when absent.
  int32_t token_id(std::string_view token) const;
  // The vocabulary spelling of `id` (byte-level form, e.g. "Ġthe"). Throws
  // glm::Error for an id with no token.
  std::string token_text(int32_t id) const;
  // Whether `id` is a special token (dropped by skip_special_tokens).
  bool is_special(int32_t id) const;
  // One past the largest id of any token (the embedding rows needed).
  size_t vocab_size() const;

 private:
  friend class StreamingDecoder;
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Decodes a stream of ids as they are generated. Each push returns only
// complete UTF-8 characters; bytes of a character still being spelled are held
// back until it completes or proves invalid (then U+FFFD). The concatenation
// of all push results and flush() equals Tokenizer::decode of all ids.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  std::string push(int32_t id);
  // Emits what is held back (an unfinished character becomes U+FFFD) and
  // starts a fresh stream.
  std::string flush();

 private:
  std::shared_ptr<const Tokenizer::Impl> impl_;
  bool skip_special_tokens_;
  bool emitted_any_ = false;
  std::string pending_;
};

// The tokenizer.json to load for `path_or_dir`: the path itself if it is a
// file, else <dir>/tokenizer.json. Throws glm::Error naming what is missing.
std::string find_tokenizer_json(const std::string& path_or_dir);

// Backs `glm4moe tokenize --tokenizer PATH --text-file FILE`: the ids of the
// file's exact bytes, no special tokens added, as one JSON object {"ids":[...]}.
std::string tokenize_file_to_json(const std::string& tokenizer_path, const std::string& text_file);

}  // namespace glm
