// Quantized checkpoints end to end: mlx-lm's own quantized copies and
// compressed-tensors FP8 copies of the sharded fixture load and give the
// logits mlx-lm / transformers give; `glm4moe quantize` writes exactly the
// tensors mlx-lm writes; tensor parallelism over quantized weights equals
// the unsharded model; every malformed checkpoint is reported by name.
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "engine/quantize.h"
#include "io/safetensors.h"
#include "helpers.h"
#include "model/weights.h"

namespace glm {
namespace {

using namespace quant_test;

const fs::path kSource = fixture("grouped_bf16_sharded");

// `glm4moe quantize` of the sharded fixture into `dir` (made anew).
void quantize_into(const fs::path& dir, int bits, int64_t group, uint64_t shard_bytes) {
  fs::remove_all(dir);  // quantize creates it
  QuantizeOptions options;
  options.model = kSource.string();
  options.output = dir.string();
  options.bits = bits;
  options.group_size = group;
  options.max_shard_bytes = shard_bytes;
  options.progress = false;
  quantize_checkpoint(options);
}

// Quantizes the sharded fixture once per (bits, group, shard size) for the
// whole test program.
fs::path quantized_source(int bits, int64_t group, uint64_t shard_bytes = uint64_t{5} << 30) {
  static struct Made {
    std::map<std::tuple<int, int64_t, uint64_t>, fs::path> dirs;
    ~Made() {
      for (const auto& [key, dir] : dirs) fs::remove_all(dir);
    }
  } made;
  auto& dir = made.dirs[{bits, group, shard_bytes}];
  if (dir.empty()) {
    dir = fresh_dir("ours_" + std::to_string(bits) + "_" + std::to_string(group) + "_" + std::to_string(shard_bytes));
    quantize_into(dir, bits, group, shard_bytes);
  }
  return dir;
}

ModelWeights bind(const fs::path& dir, TensorParallel parallel = {}) {
  static std::map<std::string, std::unique_ptr<Checkpoint>> open;  // weights view into these mappings
  auto& checkpoint = open[dir.string()];
  if (!checkpoint) checkpoint = std::make_unique<Checkpoint>(dir.string());
  return bind_weights(*checkpoint, load_config(dir.string()), parallel);
}

// ---------------------------------------------------------------------------
// mlx-lm's quantized checkpoints
// ---------------------------------------------------------------------------

class MlxCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(MlxCheckpoint, LogitsMatchMlxLm) {
  const fs::path dir = fixture(GetParam());
  expect_logits_match(dir, dir, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MlxCheckpoint,
                         ::testing::Values("quant_mlx_4bit_g64", "quant_mlx_8bit_g64", "quant_mlx_mixed"));

TEST(MlxCheckpointFormats, EveryTensorClassHasTheFormatMlxGaveIt) {
  const auto by_class = describe_formats_by_class(bind(fixture("quant_mlx_4bit_g64")));
  EXPECT_EQ(by_class.at("embedding"), (std::map<std::string, int64_t>{{"affine 4-bit g64", 1}}));
  EXPECT_EQ(by_class.at("lm_head"), (std::map<std::string, int64_t>{{"affine 4-bit g64", 1}}));
  // down_proj of a routed expert reads 32 features: not a multiple of 64, so mlx-lm kept it.
  EXPECT_EQ(by_class.at("routed experts"), (std::map<std::string, int64_t>{{"affine 4-bit g64", 64}, {"BF16", 32}}));
  EXPECT_EQ(by_class.at("router"), (std::map<std::string, int64_t>{{"BF16", 2}, {"F32", 2}}));
  EXPECT_EQ(by_class.count("mtp"), 0u);  // mlx-lm drops the MTP layer
  EXPECT_EQ(describe_formats(bind(fixture("quant_mlx_4bit_g64"))).at("affine 4-bit g64"), 94);

  // The mixed recipe: 3 and 6 bits at group 32 from per-module entries, the router listed as false.
  const auto mixed = describe_formats(bind(fixture("quant_mlx_mixed")));
  EXPECT_GT(mixed.at("affine 3-bit g32"), 0);
  EXPECT_GT(mixed.at("affine 6-bit g32"), 0);
}

// Bound bytes count every tensor once: a quantized weight's scales and biases
// are not added again with the weight (bench and info report this number).
TEST(MlxCheckpointFormats, BoundBytesCountEachTensorOnce) {
  for (const char* name : {"quant_mlx_4bit_g64", "quant_mlx_mixed", "quant_fp8_channel", "grouped_bf16_sharded"}) {
    const Checkpoint checkpoint(fixture(name).string());
    const ModelWeights weights = bind_weights(checkpoint, load_config(fixture(name).string()), {});
    EXPECT_GT(weights.bound_bytes, checkpoint.total_bytes() * 9 / 10) << name;
    EXPECT_LE(weights.bound_bytes, checkpoint.total_bytes()) << name;
  }
}

// Without its per-module entries, mlx-lm infers each module's bits and group
// size from the tensor shapes (infer_quant_config); so does the binder.
TEST(MlxCheckpointFormats, UnlistedModulesTakeTheirWidthFromTheShapes) {
  const fs::path dir = rewrite(fixture("quant_mlx_mixed"), "unlisted", {}, [](nlohmann::json& config) {
    for (const char* key : {"quantization", "quantization_config"})
      config[key] = {{"group_size", 32}, {"bits", 3}, {"mode", "affine"}};
  });
  expect_logits_match(dir, fixture("quant_mlx_mixed"), 1e-5);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------
// glm4moe quantize
// ---------------------------------------------------------------------------

class OurQuantizer : public ::testing::TestWithParam<std::pair<int, std::string>> {};

// Every tensor mlx-lm writes, ours writes with the same dtype, shape and
// bytes; ours adds only the MTP layer, which mlx-lm drops.
TEST_P(OurQuantizer, WritesExactlyWhatMlxLmWrites) {
  const auto& [bits, mlx_fixture] = GetParam();
  const fs::path ours = quantized_source(bits, 64);
  const Checkpoint mine(ours.string()), theirs(fixture(mlx_fixture).string());
  for (const std::string& name : theirs.names()) {
    SCOPED_TRACE(name);
    const SafetensorsEntry* entry = mine.find(name);
    ASSERT_NE(entry, nullptr);
    const TensorView a = mine.view(name), b = theirs.view(name);
    ASSERT_EQ(a.dtype, b.dtype);
    ASSERT_EQ(a.shape, b.shape);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0);
  }
  const Glm4MoeConfig config = load_config(kSource.string());
  const std::string mtp = "model.layers." + std::to_string(config.num_hidden_layers) + ".";
  for (const std::string& name : mine.names()) {
    if (!theirs.contains(name)) {
      EXPECT_EQ(name.rfind(mtp, 0), 0u) << name;
    }
  }

  const nlohmann::json written = read_json(ours / "config.json");
  const nlohmann::json block = {{"bits", bits}, {"group_size", 64}, {"mode", "affine"}};
  EXPECT_EQ(written["quantization"], block);
  EXPECT_EQ(written["quantization_config"], block);
  EXPECT_EQ(read_json(ours / "generation_config.json"), read_json(kSource / "generation_config.json"));
}

TEST_P(OurQuantizer, LogitsMatchMlxLmOnItsOwnQuantizedCopy) {
  const auto& [bits, mlx_fixture] = GetParam();
  expect_logits_match(quantized_source(bits, 64), fixture(mlx_fixture), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Widths, OurQuantizer,
                         ::testing::Values(std::pair{4, std::string("quant_mlx_4bit_g64")},
                                           std::pair{8, std::string("quant_mlx_8bit_g64")}),
                         [](const auto& info) { return std::to_string(info.param.first) + "bit"; });

TEST(OurQuantizerOutput, ShardsIndexAndMtpLayer) {
  const fs::path dir = quantized_source(4, 64, 64 << 10);  // 64 KiB shards
  const nlohmann::json index = read_json(dir / "model.safetensors.index.json");
  std::set<std::string> files;
  for (const auto& [name, file] : index["weight_map"].items()) files.insert(file.get<std::string>());
  EXPECT_GT(files.size(), 2u);
  for (const std::string& file : files) {
    EXPECT_TRUE(fs::exists(dir / file)) << file;
    EXPECT_LE(fs::file_size(dir / file), (64u << 10) + 8192u) << file;  // + header; no single tensor is larger
  }
  const Checkpoint checkpoint(dir.string());
  EXPECT_EQ(checkpoint.file_count(), files.size());
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), checkpoint.total_bytes());
  const ModelWeights weights = bind(dir);
  ASSERT_TRUE(weights.mtp.has_value());
  EXPECT_EQ(weights.mtp->eh_proj.format.describe(), "affine 4-bit g64");
  EXPECT_EQ(weights.mtp->layer.moe.gate.at(0).format.describe(), "affine 4-bit g64");
  EXPECT_EQ(weights.expert_layout, "stacked");
  expect_logits_match(dir, fixture("quant_mlx_4bit_g64"), 1e-5);
}

// Its shards leave the page cache once written (quantize ends with
// drop_from_page_cache), so the first run maps them in 2 MiB pages rather
// than write()'s folios: right after quantize, none of a shard's pages is
// resident (mincore). tmpfs keeps its pages: skipped there.
TEST(OurQuantizerOutput, ShardsLeaveThePageCache) {
  const fs::path dir = fresh_dir("dropped");
  struct statfs filesystem {};
  ASSERT_EQ(::statfs(dir.parent_path().c_str(), &filesystem), 0);
  if (filesystem.f_type == TMPFS_MAGIC) GTEST_SKIP() << dir.parent_path() << " is a tmpfs";
  quantize_into(dir, 4, 64, 64 << 10);
  const long page = ::sysconf(_SC_PAGESIZE);
  size_t shards = 0, resident = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    ++shards;
    const MappedFile file(entry.path().string());  // mapping alone reads nothing
    const size_t pages = (file.size() + page - 1) / page;
    std::vector<unsigned char> in_core(pages);
    ASSERT_EQ(::mincore(const_cast<uint8_t*>(file.data()), file.size(), in_core.data()), 0);
    for (unsigned char bit : in_core) resident += bit & 1;
  }
  EXPECT_GT(shards, 2u);
  EXPECT_EQ(resident, 0u) << "pages of the shards still in the page cache";
  fs::remove_all(dir);
}

TEST(OurQuantizerOutput, BadOptionsAndSourcesAreRejectedByName) {
  QuantizeOptions options;
  options.model = kSource.string();
  options.progress = false;
  const fs::path scratch = fresh_dir("rejected");
  options.output = (scratch / "out").string();
  for (int bits : {1, 7, 9}) {
    options.bits = bits;
    expect_error([&] { quantize_checkpoint(options); }, {"--bits " + std::to_string(bits)});
  }
  options.bits = 4;
  options.group_size = 48;
  expect_error([&] { quantize_checkpoint(options); }, {"--group-size 48"});
  options.group_size = 64;
  options.model = fixture("quant_mlx_4bit_g64").string();
  expect_error([&] { quantize_checkpoint(options); }, {"already quantized", "MLX affine 4-bit g64"});
  options.model = kSource.string();
  options.output = kSource.string();
  expect_error([&] { quantize_checkpoint(options); }, {"--output", "not an empty directory"});
  fs::remove_all(scratch);
}

// ---------------------------------------------------------------------------
// Tensor parallelism over quantized weights
// ---------------------------------------------------------------------------

class QuantizedTensorParallel : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizedTensorParallel, TwoRanksEqualTheUnshardedModel) {
  const fs::path dir = GetParam() == "ours_g32" ? quantized_source(4, 32) : fixture(GetParam());
  const std::vector<int32_t> ids = expected_prompts(fixture("quant_mlx_4bit_g64"))[1].ids;
  Engine whole(dir.string(), small_options());
  const std::vector<float> expected = all_logits(whole, ids);
  const auto logits = two_rank_logits(dir.string(), small_options(), ids);
  for (int rank = 0; rank < 2; ++rank) EXPECT_LT(relative_l2(logits[rank], expected), 1e-5) << "rank " << rank;
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, QuantizedTensorParallel,
                         ::testing::Values("ours_g32", "quant_fp8_channel", "quant_fp8_block"));

TEST(QuantizedTensorParallelLimits, ColumnShardsOffGroupBoundariesAreRefusedByName) {
  // The shared experts' down_proj reads 2 * 32 = 64 features; each of 2 ranks
  // holds 32 of them, half a group of 64.
  expect_error([&] { bind(fixture("quant_mlx_4bit_g64"), {0, 2}); },
               {"model.layers.2.mlp.shared_experts.down_proj.weight", "groups of 64"});
}

// ---------------------------------------------------------------------------
// FP8 checkpoints
// ---------------------------------------------------------------------------

class Fp8Checkpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(Fp8Checkpoint, LogitsMatchTransformersOnDequantizedWeights) {
  const fs::path dir = fixture(GetParam());
  expect_logits_match(dir, dir, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Fp8Checkpoint, ::testing::Values("quant_fp8_channel", "quant_fp8_block"));

TEST(Fp8CheckpointFormats, LinearsAreFp8AndTheRestStaysFloat) {
  const auto by_class = describe_formats_by_class(bind(fixture("quant_fp8_channel")));
  EXPECT_EQ(by_class.at("routed experts"), (std::map<std::string, int64_t>{{"FP8 e4m3 per-channel", 96}}));
  EXPECT_EQ(by_class.at("router"), (std::map<std::string, int64_t>{{"BF16", 2}, {"F32", 2}}));
  EXPECT_EQ(by_class.at("embedding"), (std::map<std::string, int64_t>{{"BF16", 1}}));
  EXPECT_EQ(by_class.at("lm_head"), (std::map<std::string, int64_t>{{"BF16", 1}}));
  EXPECT_EQ(describe_formats(bind(fixture("quant_fp8_block"))).count("FP8 e4m3 per-block 32x32"), 1u);
}

// ---------------------------------------------------------------------------
// Malformed quantized checkpoints
// ---------------------------------------------------------------------------

TEST(MalformedQuantized, Fp8WeightWithoutScale) {
  const std::string scale = "model.layers.0.self_attn.q_proj.weight_scale";
  const fs::path dir = rewrite(fixture("quant_fp8_channel"), "noscale", [&](auto& tensors) { tensors.erase(scale); });
  expect_error([&] { bind(dir); }, {"model.layers.0.self_attn.q_proj.weight", "F8_E4M3", scale, "missing"});
  fs::remove_all(dir);
}

TEST(MalformedQuantized, Fp8ScaleOfTheWrongShape) {
  const std::string scale = "model.layers.1.mlp.down_proj.weight_scale";
  const fs::path dir = rewrite(fixture("quant_fp8_channel"), "badscale", [&](auto& tensors) {
    TensorBytes& s = tensors[scale];
    s.shape = {s.shape[0] / 2, 2};
  });
  expect_error([&] { bind(dir); }, {scale, "expected shape [64, 1] or [64]", "found [32, 2]"});
  fs::remove_all(dir);
}

TEST(MalformedQuantized, Fp8TargetStoredAsFloat) {
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const fs::path dir = rewrite(fixture("quant_fp8_channel"), "fp8float", [&](auto& tensors) {
    tensors[name] = read_all(Checkpoint(kSource.string()))[name];
    tensors.erase("model.layers.0.mlp.up_proj.weight_scale");
  });
  expect_error([&] { bind(dir); }, {name, "expected dtype F8_E4M3", "found BF16"});
  fs::remove_all(dir);
}

// The MTP layer (bound, not run) may be left in BF16 by an FP8 exporter that
// never saw it: accepted there, unlike in the trunk.
TEST(MalformedQuantized, FloatMtpLayerInAnFp8CheckpointIsAccepted) {
  const std::string name = "model.layers.4.eh_proj.weight";
  const fs::path dir = rewrite(fixture("quant_fp8_channel"), "fp8mtp", [&](auto& tensors) {
    tensors[name] = read_all(Checkpoint(kSource.string()))[name];
    tensors.erase("model.layers.4.eh_proj.weight_scale");
  });
  const ModelWeights weights = bind(dir);
  ASSERT_TRUE(weights.mtp.has_value());
  EXPECT_EQ(weights.mtp->eh_proj.format.describe(), "BF16");
  EXPECT_EQ(weights.mtp->layer.attention.q_proj.format.describe(), "FP8 e4m3 per-channel");
  fs::remove_all(dir);
}

TEST(MalformedQuantized, MlxWeightWithoutScales) {
  const std::string scales = "model.layers.0.self_attn.q_proj.scales";
  const fs::path dir = rewrite(fixture("quant_mlx_4bit_g64"), "noscales", [&](auto& tensors) { tensors.erase(scales); });
  expect_error([&] { bind(dir); }, {"model.layers.0.self_attn.q_proj.weight", "U32", scales, "missing"});
  fs::remove_all(dir);
}

TEST(MalformedQuantized, PackedShapeDisagreesWithTheModuleEntry) {
  const fs::path dir = rewrite(fixture("quant_mlx_4bit_g64"), "badbits", {}, [](nlohmann::json& config) {
    config["quantization"]["model.layers.0.self_attn.q_proj"] = {{"bits", 8}, {"group_size", 64}};
  });
  expect_error([&] { bind(dir); },
               {"model.layers.0.self_attn.q_proj.weight", "expected packed shape [128, 16]", "8-bit g64",
                "found [128, 8]"});
  fs::remove_all(dir);
}

TEST(MalformedQuantized, ScalesOfAModuleListedAsNotQuantized) {
  const fs::path dir = rewrite(fixture("quant_mlx_4bit_g64"), "falsescales", {}, [](nlohmann::json& config) {
    config["quantization"]["model.layers.1.mlp.up_proj"] = false;
  });
  expect_error([&] { bind(dir); }, {"model.layers.1.mlp.up_proj.scales", "not quantized (false)"});
  fs::remove_all(dir);
}

TEST(MalformedQuantized, PackedWeightsWithoutAQuantizationBlock) {
  const fs::path dir = rewrite(fixture("quant_mlx_4bit_g64"), "noblock", {}, [](nlohmann::json& config) {
    config.erase("quantization");
    config.erase("quantization_config");
  });
  expect_error([&] { bind(dir); }, {"model.embed_tokens.weight", "U32", "quantization"});
  fs::remove_all(dir);
}

// A router stored quantized (mlx-lm never does, but a per-module entry could
// ask for it) binds and dequantizes like any other module.
TEST(MalformedQuantized, QuantizedRouterIsAccepted) {
  const std::string module = "model.layers.2.mlp.gate";
  const fs::path dir = rewrite(fixture("quant_mlx_4bit_g64"), "qrouter", [&](auto& tensors) {
    const TensorBytes router = tensors[module + ".weight"];  // [16, 64] bf16
    const int64_t rows = router.shape[0], width = router.shape[1];
    std::vector<float> values(width), scales(width / 64), biases(width / 64);
    std::vector<uint32_t> packed(rows * width * 4 / 32);
    std::string scale_bytes, bias_bytes;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < width; ++i)
        values[i] = bf16_to_f32(reinterpret_cast<const uint16_t*>(router.bytes.data())[r * width + i]);
      quantize_row_affine(values.data(), width, 4, 64, packed.data() + r * width * 4 / 32, scales.data(),
                          biases.data());
      for (float s : scales) scale_bytes.append(reinterpret_cast<const char*>(&s), 4);
      for (float b : biases) bias_bytes.append(reinterpret_cast<const char*>(&b), 4);
    }
    tensors[module + ".weight"] = {DType::U32, {rows, width * 4 / 32},
                                   std::string(reinterpret_cast<const char*>(packed.data()), packed.size() * 4)};
    tensors[module + ".scales"] = {DType::F32, {rows, width / 64}, scale_bytes};
    tensors[module + ".biases"] = {DType::F32, {rows, width / 64}, bias_bytes};
  });
  const ModelWeights weights = bind(dir);
  EXPECT_EQ(weights.layers[2].moe.router.format.describe(), "affine 4-bit g64");
  Engine engine(dir.string(), small_options());
  EXPECT_EQ(all_logits(engine, {1, 2, 3}).size(), 3u * 512u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace glm
