// `glm4moe quantize`: turns a float GLM-4 MoE checkpoint into an mlx-lm
// compatible affine-quantized one (the format mlx-community publishes), tensor
// by tensor so a 355B model converts in a few GB of memory. The output loads
// in this engine and in mlx-lm; its packed integers, scales and biases are
// bit-identical to mlx's mx.quantize.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/weight.h"

namespace glm {

struct QuantizeOptions {
  std::string model;                          // source directory: config.json + float safetensors
  std::string output;                         // destination; must not exist or be empty
  int bits = 4;                               // 2, 3, 4, 5, 6 or 8
  int64_t group_size = 64;                    // 32, 64 or 128
  uint64_t max_shard_bytes = uint64_t{5} << 30;  // mlx-lm's 5 GiB shards
  bool progress = true;                       // progress bar on stderr
};

struct QuantizeReport {
  int64_t tensors_written = 0;
  int64_t modules_quantized = 0;    // a stacked expert projection counts once
  int64_t shards = 0;
  uint64_t bytes_read = 0;          // tensor bytes of the source
  uint64_t bytes_written = 0;       // tensor bytes of the output
  // Matrices left in full precision because their input width is not a
  // multiple of the group size (mlx-lm skips them the same way).
  std::vector<std::string> kept_float;
};

// Writes OUTPUT/model[-0000i-of-0000n].safetensors, model.safetensors.index.json,
// config.json (the source's, plus mlx-lm's `quantization` and
// `quantization_config` blocks) and copies of the other files of the source
// directory (tokenizer, chat template, generation config). Quantized, as
// mlx-lm does: embed_tokens, lm_head and every projection (attention,
// dense/shared MLPs, routed experts stacked as mlp.switch_mlp.*, the MTP
// layer's eh_proj and decoder layer). Kept in the model dtype: norms, biases,
// the routers (mlp.gate.weight); e_score_correction_bias keeps its own dtype.
// Float tensors are cast to config.json's torch_dtype first, as mlx_lm.convert
// does. Throws glm::Error naming the file, tensor or option at fault.
QuantizeReport quantize_checkpoint(const QuantizeOptions& options);

// mx.quantize of one row of `width` values (f32 holding values of the model
// dtype): packed `bits`-bit integers [width * bits / 32] (a little-endian bit
// stream over 32-bit words), and per group of `group_size` the f32 scale and
// bias, before mlx casts them to the model dtype.
void quantize_row_affine(const float* values, int64_t width, int bits, int64_t group_size, uint32_t* packed,
                         float* scales, float* biases);

// An mlx affine matrix owning its storage, quantized from f32 values row by
// row as mx.quantize does, scales and biases in bf16 (mlx's usual model
// dtype). For tests and benchmarks that need quantized weights without a
// checkpoint; `weight` views the vectors (the object must not move: it is
// handed out in a unique_ptr).
struct AffineMatrix {
  std::vector<uint32_t> words;   // [rows, cols * bits / 32]
  std::vector<uint16_t> scales;  // [rows, cols / group_size] bf16
  std::vector<uint16_t> biases;  // [rows, cols / group_size] bf16
  Weight weight;
};
std::unique_ptr<AffineMatrix> quantize_matrix_affine(const std::vector<float>& values /*[rows, cols]*/, int64_t rows,
                                                     int64_t cols, int bits, int64_t group_size,
                                                     const std::string& name);

}  // namespace glm
