// libFuzzer entry for the tokenizer (not built by CMake). The first input byte
// picks the target: encode/decode arbitrary bytes with the test fixtures'
// tokenizers, or load the rest of the input as a tokenizer.json. Only
// glm::Error may escape the library; anything else, a crash or a sanitizer
// report is a bug.
//
// Build and run from the repository root (needs clang-14 and libclang-rt-14-dev):
//   clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Isrc \
//       -DGLM_FIXTURES=\"$PWD/tests/text/fixtures/\" fuzz/tokenizer_encode.cpp \
//       src/text/{added_vocabulary,bpe,byte_level,flat_tables,normalizer,onig_regex,post_processor,pre_tokenizer,tokenizer,tokenizer_json,utf8}.cpp \
//       src/io/json_util.cpp -lpcre2-8 -lutf8proc -o /tmp/fuzz_tokenizer
//   mkdir -p /tmp/fuzz_corpus && /tmp/fuzz_tokenizer -max_total_time=60 -max_len=4096 /tmp/fuzz_corpus
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

#ifndef GLM_FIXTURES
#define GLM_FIXTURES "tests/text/fixtures/"
#endif

namespace {

const std::vector<glm::Tokenizer>& fixture_tokenizers() {
  static const std::vector<glm::Tokenizer> tokenizers = [] {
    std::vector<glm::Tokenizer> loaded;
    for (const char* name : {"glm_pairs.json", "glm_flags.json", "bytelevel_regex.json", "glm_template.json",
                             "glm_ignore_merges.json"})
      loaded.push_back(glm::Tokenizer::from_file(std::string(GLM_FIXTURES) + name));
    return loaded;
  }();
  return tokenizers;
}

void check(bool condition) {
  if (!condition) __builtin_trap();
}

void encode_and_decode(const glm::Tokenizer& tokenizer, std::string_view bytes) {
  const std::vector<int32_t> ids = tokenizer.encode(bytes, bytes.size() % 2 == 0);
  for (const int32_t id : ids) check(id >= 0 && static_cast<size_t>(id) < tokenizer.vocab_size());
  const std::string decoded = tokenizer.decode(ids, bytes.size() % 3 == 0);
  check(glm::text::is_valid_utf8(decoded));
  // Reinterpret the input as ids too: decoding must accept any id, valid or not.
  std::vector<int32_t> noise;
  for (size_t pos = 0; pos + 2 <= bytes.size() && noise.size() < 64; pos += 2)
    noise.push_back(static_cast<int16_t>(static_cast<uint8_t>(bytes[pos]) | (static_cast<uint8_t>(bytes[pos + 1]) << 8)));
  glm::StreamingDecoder stream(tokenizer);
  std::string streamed;
  for (const int32_t id : noise) {
    const std::string chunk = stream.push(id);
    check(glm::text::is_valid_utf8(chunk));
    streamed += chunk;
  }
  streamed += stream.flush();
  check(streamed == tokenizer.decode(noise));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto& tokenizers = fixture_tokenizers();
  if (data[0] < 0xF0) {
    encode_and_decode(tokenizers[data[0] % tokenizers.size()], rest);
    return 0;
  }
  try {
    const glm::Tokenizer tokenizer = glm::Tokenizer::from_json(rest);
    encode_and_decode(tokenizer, "Hello <|user|> world 123 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80 don't\n\n");
  } catch (const glm::Error&) {
  }
  return 0;
}
