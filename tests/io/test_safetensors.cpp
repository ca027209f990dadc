// Tests of the safetensors reader and checkpoint directories: files are written
// by a tiny writer here, so every dtype, layout and kind of corruption can be
// produced without real checkpoints.
#include <gtest/gtest.h>

#include "../common/errors.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace {

using glm::testing_fixtures::error_of;

namespace fs = std::filesystem;
using glm::DType;
using glm::Shape;

struct TensorSpec {
  std::string name;
  std::string dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// A recognisable, distinct byte pattern per tensor, so a view pointing at the wrong bytes is caught.
std::vector<uint8_t> pattern_bytes(size_t count, uint8_t seed) {
  std::vector<uint8_t> bytes(count);
  for (size_t i = 0; i < count; ++i) bytes[i] = static_cast<uint8_t>(seed + 31 * i);
  return bytes;
}

// The 8-byte little-endian length, the header, then the data area.
std::vector<uint8_t> build_raw(const std::string& header, const std::vector<uint8_t>& data,
                               uint64_t declared_length) {
  // Sized once and filled in place: GCC 12 misreports vector::insert into a fresh vector as out of bounds.
  std::vector<uint8_t> file(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(declared_length >> (8 * i));
  std::copy(header.begin(), header.end(), file.begin() + 8);
  std::copy(data.begin(), data.end(), file.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return file;
}
std::vector<uint8_t> build_raw(const std::string& header, const std::vector<uint8_t>& data) {
  return build_raw(header, data, header.size());
}

// Tensors laid out back to back in the given order, header padded with spaces
// to a multiple of 8 as the reference writer does.
std::vector<uint8_t> build_safetensors(const std::vector<TensorSpec>& tensors,
                                       const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<uint8_t> data;
  for (const auto& tensor : tensors) {
    header[tensor.name] = {{"dtype", tensor.dtype},
                           {"shape", tensor.shape},
                           {"data_offsets", {data.size(), data.size() + tensor.bytes.size()}}};
    data.insert(data.end(), tensor.bytes.begin(), tensor.bytes.end());
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  return build_raw(text, data);
}

void write_file(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}


void expect_contains(const std::string& message, std::initializer_list<const char*> pieces) {
  for (const char* piece : pieces) EXPECT_NE(message.find(piece), std::string::npos) << "\"" << piece << "\" not in: " << message;
}

std::string header_error(const std::vector<uint8_t>& file) {
  return error_of([&] { glm::parse_safetensors_header(file.data(), file.size(), "bad.safetensors"); });
}

std::string header_error(const std::string& header, const std::vector<uint8_t>& data) {
  return header_error(build_raw(header, data));
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    directory_ = fs::temp_directory_path() /
                 ("glm_io_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(directory_, ignored);
  }
  fs::path directory_;
};

const char* const kAllDtypes[] = {"F64", "F32", "F16",  "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32",
                                  "I16", "I8",  "U64",  "U32",  "U16",     "U8",      "BOOL"};

TEST_F(SafetensorsTest, EveryDtypeRoundTripsInOneMixedFile) {
  std::vector<TensorSpec> tensors;
  uint8_t seed = 1;
  for (const char* dtype_name : kAllDtypes) {
    DType dtype;
    ASSERT_TRUE(glm::parse_dtype(dtype_name, &dtype));
    const Shape shape = {2, 3};
    tensors.push_back({std::string("t_") + dtype_name, dtype_name, shape,
                       pattern_bytes(6 * glm::dtype_size(dtype), seed++)});
  }
  const fs::path path = directory_ / "mixed.safetensors";
  write_file(path, build_safetensors(tensors));

  glm::SafetensorsFile file(path.string());
  ASSERT_EQ(file.entries().size(), tensors.size());
  for (size_t i = 1; i < file.entries().size(); ++i) EXPECT_LT(file.entries()[i - 1].name, file.entries()[i].name);
  for (const auto& tensor : tensors) {
    const glm::TensorView view = file.view(tensor.name);
    EXPECT_EQ(glm::dtype_name(view.dtype), tensor.dtype);
    EXPECT_EQ(view.shape, tensor.shape);
    ASSERT_EQ(view.nbytes(), tensor.bytes.size()) << tensor.name;
    EXPECT_EQ(std::memcmp(view.data, tensor.bytes.data(), tensor.bytes.size()), 0) << tensor.name;
  }
}

TEST_F(SafetensorsTest, FloatValuesReadBack) {
  const std::vector<float> f32 = {1.5f, -2.0f, 0.25f, 1e-3f};
  const std::vector<uint16_t> bf16 = {glm::f32_to_bf16(3.0f), glm::f32_to_bf16(-0.5f)};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000};  // 1.0, -2.0
  const std::vector<uint8_t> f8 = {0x38, 0x7e};         // E4M3: 1.0, 448
  const std::vector<int64_t> i64 = {-5, 1ll << 40};
  const std::vector<uint32_t> u32 = {7, 0xffffffffu};
  const fs::path path = directory_ / "values.safetensors";
  write_file(path, build_safetensors({{"f32", "F32", {2, 2}, bytes_of(f32)},
                                      {"bf16", "BF16", {2}, bytes_of(bf16)},
                                      {"f16", "F16", {2}, bytes_of(f16)},
                                      {"f8", "F8_E4M3", {2}, bytes_of(f8)},
                                      {"i64", "I64", {2}, bytes_of(i64)},
                                      {"u32", "U32", {2}, bytes_of(u32)}}));
  glm::SafetensorsFile file(path.string());
  const glm::TensorView f32_view = file.view("f32");
  EXPECT_EQ(f32_view.rows(), 2);
  EXPECT_FLOAT_EQ(glm::load_as_f32(f32_view.data, DType::F32, 3), 1e-3f);
  EXPECT_FLOAT_EQ(glm::load_as_f32(file.view("bf16").data, DType::BF16, 0), 3.0f);
  EXPECT_FLOAT_EQ(glm::load_as_f32(file.view("f16").data, DType::F16, 1), -2.0f);
  EXPECT_FLOAT_EQ(glm::load_as_f32(file.view("f8").data, DType::F8_E4M3, 1), 448.0f);
  int64_t second_i64;
  std::memcpy(&second_i64, static_cast<const char*>(file.view("i64").data) + 8, 8);
  EXPECT_EQ(second_i64, 1ll << 40);
  uint32_t second_u32;
  std::memcpy(&second_u32, static_cast<const char*>(file.view("u32").data) + 4, 4);
  EXPECT_EQ(second_u32, 0xffffffffu);
}

TEST_F(SafetensorsTest, ScalarsZeroSizeTensorsAndMetadata) {
  const fs::path path = directory_ / "small.safetensors";
  write_file(path, build_safetensors({{"scalar", "F32", {}, bytes_of(std::vector<float>{42.0f})},
                                      {"empty", "BF16", {0, 4}, {}},
                                      {"after", "U8", {3}, {1, 2, 3}}},
                                     {{"format", "pt"}}));
  glm::SafetensorsFile file(path.string());
  EXPECT_EQ(file.metadata().at("format"), "pt");
  const glm::TensorView scalar = file.view("scalar");
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_FLOAT_EQ(glm::load_as_f32(scalar.data, DType::F32, 0), 42.0f);
  const glm::TensorView empty = file.view("empty");
  EXPECT_FALSE(empty.empty());  // a zero-size tensor is present, just without elements
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(static_cast<const uint8_t*>(file.view("after").data)[2], 3);
  EXPECT_EQ(file.find("missing"), nullptr);
  expect_contains(error_of([&] { file.view("missing"); }), {"missing", "small.safetensors"});
}

TEST(SafetensorsHeader, ReportsDataStartAndAcceptsZeroSizeTensorInsideAnother) {
  // A zero-size tensor occupies no bytes, so sitting inside another one is not an overlap.
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})";
  const auto file = build_raw(header, {1, 2, 3, 4});
  uint64_t data_start = 0;
  const auto entries = glm::parse_safetensors_header(file.data(), file.size(), "x", &data_start);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(data_start, 8 + header.size());
  EXPECT_EQ(entries[0].name, "a");
  EXPECT_EQ(entries[1].begin, 2u);
}

TEST(SafetensorsHeader, RejectsTruncatedFiles) {
  const std::vector<uint8_t> seven(7, 0);
  expect_contains(header_error(seven), {"bad.safetensors", "7 bytes"});
  expect_contains(header_error(std::vector<uint8_t>{}), {"bad.safetensors", "0 bytes"});
  // Length prefix says 100 bytes of header, only 10 follow.
  expect_contains(header_error(build_raw("{\"a\":1}   ", {}, 100)), {"header length 100", "10 bytes"});
  expect_contains(header_error(build_raw("{}", {}, 1ull << 40)), {"header length 1099511627776", "limit"});
}

TEST(SafetensorsHeader, RejectsCorruptJson) {
  expect_contains(header_error(R"({"a":{"dtype":"F32",)", {}), {"bad.safetensors", "invalid JSON in header"});
  expect_contains(header_error("[1,2]", {}), {"header must be a JSON object", "array"});
  expect_contains(header_error(R"({"a":[1]})", {}), {"tensor \"a\"", "must be a JSON object"});
}

TEST(SafetensorsHeader, RejectsUnknownDtype) {
  expect_contains(header_error(R"({"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", {0, 0, 0, 0}),
                  {"tensor \"w\"", "unknown dtype \"F12\""});
  expect_contains(header_error(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", {0, 0, 0, 0}),
                  {"tensor \"w\"", "dtype must be a string"});
}

TEST(SafetensorsHeader, RejectsBadShapes) {
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", {}),
                  {"tensor \"w\"", "extent -1"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})", {0, 0}),
                  {"tensor \"w\"", "extent 2.0"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":"2","data_offsets":[0,2]}})", {0, 0}),
                  {"tensor \"w\"", "shape must be an array"});
  expect_contains(
      header_error(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", {}),
      {"tensor \"w\"", "too many elements"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", {}),
                  {"tensor \"w\"", "extent 18446744073709551615"});
  // Shapes are stored in place (core/tensor.h): a rank past Shape::kMaxRank is
  // refused by name, not written past the end; rank 8 itself still loads.
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", {0}),
                  {"tensor \"w\"", "9 dimensions", "at most 8"});
  const std::string rank8 = R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,2],"data_offsets":[0,2]}})";
  std::vector<uint8_t> file = build_raw(rank8, {0, 0});
  uint64_t data_start = 0;
  const auto entries = glm::parse_safetensors_header(file.data(), file.size(), "rank8", &data_start);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].shape, (Shape{1, 1, 1, 1, 1, 1, 1, 2}));
}

TEST(SafetensorsHeader, RejectsBadOffsets) {
  expect_contains(header_error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", {0, 0, 0, 0, 0, 0, 0, 0}),
                  {"tensor \"w\"", "data_offsets [0, 12] exceed the data area of 8 bytes"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", {0, 0, 0, 0}),
                  {"tensor \"w\"", "[4, 2]", "end before begin"});
  expect_contains(header_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", {0, 0, 0, 0}),
                  {"tensor \"w\"", "span 4 bytes", "needs 8"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", {0}),
                  {"tensor \"w\"", "data_offsets must be two non-negative integers"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", {0}),
                  {"tensor \"w\"", "data_offsets"});
}

TEST(SafetensorsHeader, RejectsOverlappingTensors) {
  const std::string header =
      R"({"first":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
      R"("second":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})";
  expect_contains(header_error(header, std::vector<uint8_t>(6)), {"\"first\" [0, 4]", "\"second\" [2, 6]", "overlap"});
}

TEST(SafetensorsHeader, RejectsMissingAndExtraFieldsAndBadMetadata) {
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[1]}})", {0}), {"tensor \"w\"", "no data_offsets"});
  expect_contains(header_error(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"scale":2}})", {0}),
                  {"tensor \"w\"", "unexpected field \"scale\""});
  expect_contains(header_error(R"({"__metadata__":{"format":1}})", {}), {"__metadata__", "\"format\"", "string"});
  expect_contains(header_error(R"({"__metadata__":[]})", {}), {"__metadata__", "object"});
}

TEST(SafetensorsFile, ReportsMissingAndEmptyFiles) {
  expect_contains(error_of([] { glm::SafetensorsFile("/nonexistent/dir/x.safetensors"); }),
                  {"/nonexistent/dir/x.safetensors", "No such file"});
  const fs::path empty = fs::temp_directory_path() / ("glm_io_empty_" + std::to_string(::getpid()) + ".safetensors");
  write_file(empty, {});
  glm::MappedFile mapped(empty.string());
  EXPECT_EQ(mapped.size(), 0u);
  expect_contains(error_of([&] { glm::SafetensorsFile file(empty.string()); }), {empty.string().c_str(), "0 bytes"});
  fs::remove(empty);
}

// A checkpoint the disk cannot hold is refused before anything is written,
// in one message naming the directory and both sizes; one that fits passes.
// A shard's side file counts too: a checkpoint exactly the size of the free
// space does not fit.
TEST(SafetensorsWriter, RoomForACheckpointIsCheckedFirst) {
  const std::string directory = fs::temp_directory_path().string();
  const uint64_t free_bytes = fs::space(directory).available;
  expect_contains(error_of([&] {
                    glm::require_room_for_checkpoint(directory, free_bytes, uint64_t{5} << 30, "the test checkpoint",
                                                     "choose another place");
                  }),
                  {"the test checkpoint needs", directory.c_str(), "free (choose another place)"});
  expect_contains(error_of([&] {
                    glm::require_room_for_checkpoint(directory, uint64_t{1} << 60, 1, "a huge checkpoint", "");
                  }),
                  {"a huge checkpoint needs ", "(1152921504.6 GB of tensors"});
  glm::require_room_for_checkpoint(directory, 1 << 20, 1 << 20, "a small one", "");
  expect_contains(error_of([] { glm::require_room_for_checkpoint("/nonexistent/dir", 1, 1, "x", ""); }),
                  {"/nonexistent/dir"});
}

TEST_F(SafetensorsTest, CheckpointFromUnindexedFiles) {
  write_file(directory_ / "b.safetensors", build_safetensors({{"b.weight", "F32", {2}, pattern_bytes(8, 1)}}));
  write_file(directory_ / "a.safetensors", build_safetensors({{"a.weight", "BF16", {3}, pattern_bytes(6, 2)},
                                                              {"a.bias", "BF16", {1}, pattern_bytes(2, 3)}}));
  write_file(directory_ / "notes.txt", {'h', 'i'});
  glm::Checkpoint checkpoint(directory_.string());
  EXPECT_EQ(checkpoint.file_count(), 2u);
  EXPECT_EQ(checkpoint.names(), (std::vector<std::string>{"a.bias", "a.weight", "b.weight"}));
  EXPECT_EQ(checkpoint.total_bytes(), 16u);
  EXPECT_TRUE(checkpoint.contains("b.weight"));
  EXPECT_EQ(checkpoint.find("b.weight")->dtype, DType::F32);
  EXPECT_EQ(checkpoint.find("nope"), nullptr);
  EXPECT_EQ(std::memcmp(checkpoint.view("a.weight").data, pattern_bytes(6, 2).data(), 6), 0);
  expect_contains(error_of([&] { checkpoint.view("nope"); }), {"\"nope\"", directory_.string().c_str()});
}

TEST_F(SafetensorsTest, ShardedCheckpointWithIndex) {
  write_file(directory_ / "model-00001-of-00002.safetensors",
             build_safetensors({{"embed", "BF16", {4, 2}, pattern_bytes(16, 5)},
                                {"unlisted", "U8", {1}, {9}}}));
  write_file(directory_ / "model-00002-of-00002.safetensors",
             build_safetensors({{"head", "F32", {2}, pattern_bytes(8, 6)}, {"norm", "F32", {2}, pattern_bytes(8, 7)}}));
  // A leftover file not named by the index must be ignored, duplicate names and all.
  write_file(directory_ / "stale.safetensors", build_safetensors({{"head", "F32", {1}, pattern_bytes(4, 8)}}));
  const nlohmann::json index = {{"metadata", {{"total_size", 32}}},
                                {"weight_map",
                                 {{"embed", "model-00001-of-00002.safetensors"},
                                  {"head", "model-00002-of-00002.safetensors"},
                                  {"norm", "model-00002-of-00002.safetensors"}}}};
  const std::string text = index.dump(2);
  write_file(directory_ / "model.safetensors.index.json", std::vector<uint8_t>(text.begin(), text.end()));

  glm::Checkpoint checkpoint(directory_.string());
  EXPECT_EQ(checkpoint.file_count(), 2u);
  EXPECT_EQ(checkpoint.names(), (std::vector<std::string>{"embed", "head", "norm"}));
  EXPECT_EQ(checkpoint.total_bytes(), 32u);
  EXPECT_EQ(checkpoint.view("head").shape, (Shape{2}));
  EXPECT_EQ(std::memcmp(checkpoint.view("norm").data, pattern_bytes(8, 7).data(), 8), 0);
  EXPECT_EQ(std::memcmp(checkpoint.view("embed").data, pattern_bytes(16, 5).data(), 16), 0);
  EXPECT_FALSE(checkpoint.contains("unlisted"));
}

TEST_F(SafetensorsTest, IndexNamingMissingShards) {
  write_file(directory_ / "one.safetensors", build_safetensors({{"x", "U8", {1}, {1}}}));
  const std::string text =
      R"({"weight_map":{"x":"one.safetensors","y":"two.safetensors","z":"three.safetensors"}})";
  write_file(directory_ / "model.safetensors.index.json", std::vector<uint8_t>(text.begin(), text.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"model.safetensors.index.json", "missing", "two.safetensors", "three.safetensors"});
}

TEST_F(SafetensorsTest, IndexNamingTensorAbsentFromShard) {
  write_file(directory_ / "one.safetensors", build_safetensors({{"x", "U8", {1}, {1}}}));
  const std::string text = R"({"weight_map":{"x":"one.safetensors","ghost":"one.safetensors"}})";
  write_file(directory_ / "model.safetensors.index.json", std::vector<uint8_t>(text.begin(), text.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"\"ghost\"", "one.safetensors", "does not contain"});
}

TEST_F(SafetensorsTest, IndexThatIsCorruptOrEscapesTheDirectory) {
  const fs::path index_path = directory_ / "model.safetensors.index.json";
  const std::string corrupt = R"({"weight_map":{"x":)";
  write_file(index_path, std::vector<uint8_t>(corrupt.begin(), corrupt.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"model.safetensors.index.json", "invalid JSON"});
  const std::string escaping = R"({"weight_map":{"x":"../elsewhere.safetensors"}})";
  write_file(index_path, std::vector<uint8_t>(escaping.begin(), escaping.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"../elsewhere.safetensors", "not a plain file name"});
  const std::string no_map = R"({"metadata":{}})";
  write_file(index_path, std::vector<uint8_t>(no_map.begin(), no_map.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }), {"weight_map"});
  const std::string wrong_type = R"({"weight_map":{"x":3}})";
  write_file(index_path, std::vector<uint8_t>(wrong_type.begin(), wrong_type.end()));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }), {"tensor \"x\"", "file name"});
}

TEST_F(SafetensorsTest, DuplicateTensorAcrossUnindexedFiles) {
  write_file(directory_ / "a.safetensors", build_safetensors({{"shared", "U8", {1}, {1}}}));
  write_file(directory_ / "b.safetensors", build_safetensors({{"shared", "U8", {1}, {2}}}));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"\"shared\"", "a.safetensors", "b.safetensors"});
}

TEST_F(SafetensorsTest, CorruptShardIsNamed) {
  write_file(directory_ / "good.safetensors", build_safetensors({{"x", "U8", {1}, {1}}}));
  write_file(directory_ / "broken.safetensors", build_raw(R"({"y":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}})", {1}));
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {"broken.safetensors", "tensor \"y\"", "exceed the data area of 1 bytes"});
}

TEST_F(SafetensorsTest, MissingOrEmptyDirectory) {
  const std::string missing = (directory_ / "absent").string();
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(missing); }),
                  {"model directory", missing.c_str(), "does not exist"});
  expect_contains(error_of([&] { glm::Checkpoint checkpoint(directory_.string()); }),
                  {directory_.string().c_str(), "no *.safetensors files"});
  write_file(directory_ / "plain", {1});
  expect_contains(error_of([&] { glm::Checkpoint checkpoint((directory_ / "plain").string()); }),
                  {"not a directory"});
}

}  // namespace
