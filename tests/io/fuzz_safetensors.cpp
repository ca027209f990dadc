// Seeded mutation fuzzing of parse_safetensors_header, run as an ordinary
// test: a valid file is corrupted in the ways real corruption and hostile
// files look (bit flips, header bytes, truncation, a wrong length prefix,
// spliced JSON), and the parser must either return entries that lie inside
// the buffer without overlapping, or throw glm::Error — never anything else.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

namespace {

std::vector<uint8_t> seed_file() {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a.weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
      R"("c":{"dtype":"F8_E4M3","shape":[0,5],"data_offsets":[20,20]},)"
      R"("d":{"dtype":"I64","shape":[],"data_offsets":[20,28]}})";
  constexpr size_t kDataBytes = 28;
  std::vector<uint8_t> file(8 + header.size() + kDataBytes);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  std::copy(header.begin(), header.end(), file.begin() + 8);
  for (size_t i = 0; i < kDataBytes; ++i) file[8 + header.size() + i] = static_cast<uint8_t>(i);
  return file;
}

// Fragments that steer mutations towards the parser's edge cases rather than plain syntax errors.
const char* const kSplices[] = {
    "-1", "0", "1e999", "18446744073709551615", "18446744073709551616", "9223372036854775807", "4294967296",
    "2.5", "true", "null", "[]", "{}", "\"\"", "\"F8_E5M2\"", "\"BOOL\"", "\"F64\"", "[0,0]", "[0,1]", "[1,0]",
    "[0,18446744073709551615]", "[4294967296,4294967296,4294967296]", "[1,1,1,1,1,1,1,1]",
    "[1,1,1,1,1,1,1,1,1]", "[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]", "\"dtype\"", "\"shape\"",
    "\"data_offsets\"", "\"__metadata__\"", ",", ":", "{", "}", "[", "]", "\"\\u0000\"", "\"\\ud800\"", "\xff",
};

void set_length_prefix(std::vector<uint8_t>& file, uint64_t length) {
  if (file.size() < 8) return;
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(length >> (8 * i));
}

uint64_t length_prefix(const std::vector<uint8_t>& file) {
  uint64_t length = 0;
  for (int i = 7; i >= 0 && file.size() >= 8; --i) length = (length << 8) | file[i];
  return length;
}

void mutate(std::vector<uint8_t>& file, std::mt19937_64& random) {
  auto below = [&](size_t bound) { return bound == 0 ? size_t{0} : static_cast<size_t>(random() % bound); };
  const size_t header_end = std::min<size_t>(file.size(), 8 + std::min<uint64_t>(length_prefix(file), file.size()));
  switch (below(6)) {
    case 0:  // bit flip anywhere
      if (!file.empty()) file[below(file.size())] ^= static_cast<uint8_t>(1u << below(8));
      break;
    case 1: {  // overwrite a header byte with a JSON-significant or random byte
      static const char kTokens[] = "{}[]\":,-0123456789.eE \\tnul";
      if (header_end > 8) {
        const size_t at = 8 + below(header_end - 8);
        file[at] = below(2) ? static_cast<uint8_t>(kTokens[below(sizeof kTokens - 1)]) : static_cast<uint8_t>(random());
      }
      break;
    }
    case 2:  // truncation
      file.resize(below(file.size() + 1));
      break;
    case 3: {  // length prefix: off by a little, or wild
      const uint64_t current = length_prefix(file);
      const uint64_t choices[] = {current + 1, current - 1, current + below(64), 0, 1, uint64_t{100} << 20,
                                  (uint64_t{100} << 20) + 1, ~uint64_t{0}, static_cast<uint64_t>(random())};
      set_length_prefix(file, choices[below(std::size(choices))]);
      break;
    }
    case 4:
    case 5: {  // splice a fragment over part of the header, usually keeping the length prefix consistent
      if (header_end <= 8) break;
      const size_t at = 8 + below(header_end - 8);
      const size_t removed = std::min(below(12), header_end - at);
      const std::string fragment = kSplices[below(std::size(kSplices))];
      file.erase(file.begin() + static_cast<std::ptrdiff_t>(at), file.begin() + static_cast<std::ptrdiff_t>(at + removed));
      file.insert(file.begin() + static_cast<std::ptrdiff_t>(at), fragment.begin(), fragment.end());
      if (below(4) != 0) set_length_prefix(file, length_prefix(file) + fragment.size() - removed);
      break;
    }
  }
}

// What the parser promises about a header it accepts.
void check_entries(const std::vector<glm::SafetensorsEntry>& entries, uint64_t data_start, size_t size,
                   size_t iteration) {
  ASSERT_LE(data_start, size) << "iteration " << iteration;
  std::vector<const glm::SafetensorsEntry*> by_begin;
  for (const auto& entry : entries) {
    ASSERT_LE(entry.begin, entry.end) << entry.name << " iteration " << iteration;
    ASSERT_LE(entry.end, size - data_start) << entry.name << " iteration " << iteration;
    ASSERT_EQ(entry.end - entry.begin, static_cast<uint64_t>(glm::shape_numel(entry.shape)) * glm::dtype_size(entry.dtype))
        << entry.name << " iteration " << iteration;
    if (entry.end > entry.begin) by_begin.push_back(&entry);
  }
  std::sort(by_begin.begin(), by_begin.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_begin.size(); ++i)
    ASSERT_GE(by_begin[i]->begin, by_begin[i - 1]->end) << "overlap at iteration " << iteration;
}

TEST(SafetensorsFuzz, SeededMutationsEitherParseSafelyOrThrowGlmError) {
  const std::vector<uint8_t> seed = seed_file();
  {
    uint64_t data_start = 0;
    ASSERT_EQ(glm::parse_safetensors_header(seed.data(), seed.size(), "seed", &data_start).size(), 4u);
  }
  std::mt19937_64 random(20240611);
  size_t accepted = 0;
  size_t rejected = 0;
  const auto started = std::chrono::steady_clock::now();
  constexpr size_t kIterations = 20000;
  for (size_t iteration = 0; iteration < kIterations; ++iteration) {
    std::vector<uint8_t> file = seed;
    const size_t mutation_count = 1 + random() % 3;
    for (size_t m = 0; m < mutation_count; ++m) mutate(file, random);
    try {
      uint64_t data_start = 0;
      std::map<std::string, std::string> metadata;
      const auto entries = glm::parse_safetensors_header(file.data(), file.size(), "fuzz", &data_start, &metadata);
      check_entries(entries, data_start, file.size(), iteration);
      if (::testing::Test::HasFatalFailure()) return;
      ++accepted;
    } catch (const glm::Error&) {
      ++rejected;
    } catch (const std::exception& error) {
      FAIL() << "iteration " << iteration << ": non-glm exception: " << error.what();
    } catch (...) {
      FAIL() << "iteration " << iteration << ": unknown exception";
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  // Both outcomes must occur, or the mutations are not exercising the parser.
  EXPECT_GT(accepted, 100u);
  EXPECT_GT(rejected, 100u);
  EXPECT_LT(seconds, 5.0);
  std::printf("safetensors fuzz: %zu accepted, %zu rejected in %.2f s\n", accepted, rejected, seconds);
}

}  // namespace
