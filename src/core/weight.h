// The weight descriptor: what a weight is (format), where it lives (placement)
// and which part of the full tensor it is (shard). Every layer of the engine
// passes weights around as this one type, so adding a quantized format, a
// device or tensor parallelism changes what a descriptor holds, not every
// signature that carries one.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace glm {

// How the bytes encode values.
//   Float:  `view` holds the values in dtype F32, BF16 or F16.
//   Affine: mlx-lm's quantization: `view` is U32 words packing `bits`-bit
//           integers q (little end first, values may straddle words); value =
//           scale * q + bias with one scale and bias per `group_size` columns.
//   Fp8:    `view` holds F8_E4M3 values times a scale: one for the tensor,
//           one per output row (channel), or one per block_rows x block_cols
//           block (block).
struct WeightFormat {
  enum class Kind { Float, Affine, Fp8 } kind = Kind::Float;
  DType dtype = DType::F32;    // element type of the stored bytes in `view`
  int bits = 0;               // Affine: bits per value (2..8)
  int64_t group_size = 0;     // Affine: columns sharing one scale and bias
  TensorView scales;          // Affine [out, in / group]; Fp8 [] / [out] / [out, 1] / [blocks_out, blocks_in]
  TensorView biases;          // Affine [out, in / group]
  // Affine, optional: a backend's copy of scales and biases laid out for its
  // kernels (the CPU's int8 decode kernel: U32 [ceil(out / 16) * in / group * 16],
  // per block of 16 rows and group the 16 rows' (scale | bias << 16)). Slices
  // drop it; the values stay those of `scales` and `biases`.
  TensorView block_scale_pairs;
  enum class Fp8Scale { Tensor, Channel, Block } fp8_scale = Fp8Scale::Channel;
  int64_t block_rows = 0;     // Fp8 Block
  int64_t block_cols = 0;     // Fp8 Block

  bool quantized() const { return kind != Kind::Float; }
  std::string describe() const;  // "BF16", "affine 4-bit g64", "FP8 e4m3 per-channel"
};

// Which memory holds the bytes: the host (a memory-mapped file or host memory
// a backend owns) or a device of some backend, by index.
struct Placement {
  enum class Kind { Host, Device } kind = Kind::Host;
  int device_index = 0;
};

// Which part of the unsharded tensor this descriptor covers.
//   Rows:    output features [begin, end) (q/k/v, gate/up projections)
//   Columns: input features  [begin, end) (o_proj, down_proj)
//   Experts: experts [begin, end) of an expert table
struct Shard {
  enum class Kind { None, Rows, Columns, Experts } kind = Kind::None;
  int rank = 0;
  int world_size = 1;
  int64_t begin = 0;
  int64_t end = 0;
};

struct Weight {
  std::string name;   // checkpoint tensor name, for messages and `info`
  Shape shape;        // logical shape of the values, e.g. [out_features, in_features]
  TensorView view;    // the stored bytes (in `format`) of the part given by `shard`
  WeightFormat format;
  Placement placement;
  Shard shard;
  // Whether the activations this weight multiplies must stay f32 whatever a
  // backend's activation mode (which may round them to bf16 or quantize them
  // to int8 for speed): the MoE router's, whose logits decide discrete expert
  // choices, and which the reference computes in f32 on purpose.
  bool f32_activations = false;

  bool present() const { return !view.empty(); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  // Bytes read to use the whole weight once (values + scales + biases).
  size_t nbytes() const;

  // Zero-copy slices, carrying the format's scale/bias views along. Column
  // slices of quantized weights must fall on group / block / word boundaries.
  Weight slice_rows(int64_t begin, int64_t end) const;     // output features
  Weight slice_columns(int64_t begin, int64_t end) const;  // input features
  Weight slice_first(int64_t index) const;                 // one expert of a stacked [E, out, in] weight
};

// A float weight viewing `view` as it is.
Weight float_weight(std::string name, const TensorView& view);

// One projection of every routed expert: entry e is expert e's matrix
// [out_features, in_features]. Entries are views into the checkpoint, whether
// it stores experts one by one or stacked (mlx-lm's switch_mlp layout), so no
// bytes are copied at load. With expert parallelism only entries
// [first_expert, first_expert + experts.size()) are held.
struct ExpertTable {
  std::vector<Weight> experts;
  int64_t first_expert = 0;

  bool holds(int64_t expert) const {
    return expert >= first_expert && expert < first_expert + static_cast<int64_t>(experts.size());
  }
  const Weight& at(int64_t expert) const { return experts.at(static_cast<size_t>(expert - first_expert)); }
};

}  // namespace glm
