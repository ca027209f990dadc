// Tokenizer loading and the encode/decode pipelines (see tokenizer.h). The
// stages live in their own files; this one wires them in the reference's
// order: added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor.
#include "text/tokenizer.h"

#include <filesystem>
#include <optional>

#include "core/error.h"
#include "io/json_util.h"
#include "text/added_vocabulary.h"
#include "text/bpe.h"
#include "text/byte_level.h"
#include "text/normalizer.h"
#include "text/post_processor.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer_json.h"
#include "text/utf8.h"

namespace glm {

using text::AddedVocabulary;
using text::BpeModel;
using text::Normalizer;
using text::PostProcessor;
using text::PreTokenizer;

namespace {

enum class DecoderKind {
  kJoinWithSpaces,  // no decoder: the reference joins token strings with " "
  kByteLevel,
};

DecoderKind parse_decoder(const nlohmann::json& config) {
  if (config.is_null()) return DecoderKind::kJoinWithSpaces;
  GLM_CHECK(config.is_object() && config.contains("type") && config["type"].is_string(),
            "tokenizer.json: decoder must be an object with a \"type\", got ", json_excerpt(config));
  const std::string type = config["type"].get<std::string>();
  if (type == "ByteLevel") return DecoderKind::kByteLevel;
  fail("tokenizer.json: decoder type \"", type, "\" is not supported (supported: ByteLevel)");
}

const nlohmann::json& field_or_null(const nlohmann::json& object, const char* key) {
  static const nlohmann::json null_value;
  const auto found = object.find(key);
  return found == object.end() ? null_value : *found;
}

}  // namespace

struct Tokenizer::Impl {
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  AddedVocabulary added;
  PostProcessor post_processor;
  DecoderKind decoder = DecoderKind::kByteLevel;

  // Per id, precomputed so decoding is a table lookup. The views point into
  // `model` and `added`, which stay put: an Impl is never moved once built.
  struct TokenEntry {
    std::string_view text;
    uint32_t decoded_offset = 0;  // what the decoder makes of the token, in decoded_bytes
    uint32_t decoded_length = 0;
    bool present = false;
    bool special = false;
  };
  std::vector<TokenEntry> entries;
  std::string decoded_bytes;

  explicit Impl(BpeModel&& bpe) : model(std::move(bpe)) {}

  const TokenEntry* entry(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= entries.size() || !entries[id].present) return nullptr;
    return &entries[id];
  }

  // Bytes that `id` adds to decoded text, with the separator the decoder
  // puts before it; false when the id is skipped.
  bool append_decoded(int32_t id, bool skip_special_tokens, bool first, std::string& out) const {
    const TokenEntry* token = entry(id);
    if (token == nullptr || (skip_special_tokens && token->special)) return false;
    if (decoder == DecoderKind::kJoinWithSpaces && !first) out += ' ';
    out.append(decoded_bytes, token->decoded_offset, token->decoded_length);
    return true;
  }
};

Tokenizer Tokenizer::from_file(const std::string& path) {
  const std::string file = find_tokenizer_json(path);
  try {
    return from_json(read_text_file(file));
  } catch (const Error& error) {
    fail(file, ": ", error.what());
  }
}

Tokenizer Tokenizer::from_json(std::string_view json_text) {
  text::TokenizerJson file = text::read_tokenizer_json(json_text);
  const nlohmann::json& config = file.config;
  GLM_CHECK(config.is_object(), "tokenizer.json: top level must be an object");
  const nlohmann::json& version = field_or_null(config, "version");
  GLM_CHECK(version.is_null() || (version.is_string() && version.get<std::string>() == "1.0"),
            "tokenizer.json: version ", json_excerpt(version), " is not supported (expected \"1.0\")");
  // Truncation and padding change what encode returns; GLM files have neither.
  for (const char* unsupported : {"truncation", "padding"}) {
    GLM_CHECK(field_or_null(config, unsupported).is_null(), "tokenizer.json: \"", unsupported,
              "\" is not supported (must be null), got ", json_excerpt(config[unsupported]));
  }
  const auto model_config = config.find("model");
  GLM_CHECK(model_config != config.end(), "tokenizer.json: missing \"model\"");

  auto impl = std::make_shared<Impl>(BpeModel::from_json(*model_config, std::move(file.bpe)));
  impl->normalizer = Normalizer::from_json(field_or_null(config, "normalizer"));
  impl->pre_tokenizer = PreTokenizer::from_json(field_or_null(config, "pre_tokenizer"));
  impl->decoder = parse_decoder(field_or_null(config, "decoder"));
  impl->added = AddedVocabulary(field_or_null(config, "added_tokens"), impl->model, impl->normalizer);
  const int32_t max_id = std::max(impl->model.max_id(), impl->added.max_id());
  impl->post_processor =
      PostProcessor::from_json(field_or_null(config, "post_processor"), static_cast<size_t>(max_id + 1));

  impl->entries.resize(static_cast<size_t>(max_id + 1));
  const auto& alphabet = text::ByteLevelAlphabet::instance();
  for (int32_t id = 0; id <= max_id; ++id) {
    Impl::TokenEntry& entry = impl->entries[id];
    // Added tokens shadow a vocabulary entry with the same id, as in the reference.
    if (const text::AddedToken* added = impl->added.token(id)) {
      entry.text = added->content;
    } else if (const auto spelling = impl->model.token_text(id)) {
      entry.text = *spelling;
    } else {
      continue;
    }
    entry.present = true;
    const std::string decoded =
        impl->decoder == DecoderKind::kByteLevel ? alphabet.decode_token(entry.text) : std::string(entry.text);
    GLM_CHECK(impl->decoded_bytes.size() + decoded.size() <= UINT32_MAX, "tokenizer.json: vocabulary too large");
    entry.decoded_offset = static_cast<uint32_t>(impl->decoded_bytes.size());
    entry.decoded_length = static_cast<uint32_t>(decoded.size());
    impl->decoded_bytes += decoded;
    entry.special = impl->added.is_special_content(entry.text);
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  std::string repaired;
  std::string_view text = input;
  if (!text::is_valid_utf8(input)) {
    repaired = text::to_valid_utf8(input);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  auto encode_piece = [&](std::string_view piece) { impl_->model.encode(piece, ids); };
  for (const text::TextSplit& split : impl_->added.split_and_normalize(text, impl_->normalizer)) {
    if (split.token_id >= 0) {
      ids.push_back(split.token_id);
    } else {
      impl_->pre_tokenizer.run(split.text, encode_piece);
    }
  }
  if (add_special_tokens) ids = impl_->post_processor.add_special_tokens(std::move(ids));
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  bool first = true;
  for (const int32_t id : ids) {
    if (impl_->append_decoded(id, skip_special_tokens, first, bytes)) first = false;
  }
  return text::to_valid_utf8(bytes);
}

int32_t Tokenizer::token_id(std::string_view token) const {
  if (const auto added = impl_->added.token_id(token)) return *added;
  if (const auto in_model = impl_->model.token_id(token)) return *in_model;
  return -1;
}

std::string Tokenizer::token_text(int32_t id) const {
  const Impl::TokenEntry* token = impl_->entry(id);
  GLM_CHECK(token != nullptr, "tokenizer: no token has id ", id, " (vocabulary size ", vocab_size(), ")");
  return std::string(token->text);
}

bool Tokenizer::is_special(int32_t id) const {
  const Impl::TokenEntry* token = impl_->entry(id);
  return token != nullptr && token->special;
}

size_t Tokenizer::vocab_size() const { return impl_->entries.size(); }

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDecoder::push(int32_t id) {
  if (impl_->append_decoded(id, skip_special_tokens_, !emitted_any_, pending_)) emitted_any_ = true;
  const size_t settled = text::settled_prefix_length(pending_);
  std::string out = text::to_valid_utf8(std::string_view(pending_).substr(0, settled));
  pending_.erase(0, settled);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = text::to_valid_utf8(pending_);
  pending_.clear();
  emitted_any_ = false;
  return out;
}

std::string find_tokenizer_json(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(path_or_dir, error)) {
    const std::string candidate = (fs::path(path_or_dir) / "tokenizer.json").string();
    GLM_CHECK(fs::is_regular_file(candidate, error), path_or_dir, ": directory has no tokenizer.json");
    return candidate;
  }
  GLM_CHECK(fs::exists(path_or_dir, error), path_or_dir, ": no such tokenizer file or model directory");
  return path_or_dir;
}

std::string tokenize_file_to_json(const std::string& tokenizer_path, const std::string& text_file) {
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_path);
  const std::vector<int32_t> ids = tokenizer.encode(read_text_file(text_file), false);
  std::string out = "{\"ids\": [";
  for (size_t index = 0; index < ids.size(); ++index) {
    if (index != 0) out += ", ";
    out += std::to_string(ids[index]);
  }
  out += "]}";
  return out;
}

}  // namespace glm
