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

// How the bytes encode values. Today: a plain element type. Later additions
// (affine bits and group size with scale/bias views, FP8 scales) go here.
struct WeightFormat {
  DType dtype = DType::F32;
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
  TensorView view;    // the bytes, in `format`, of the part given by `shard`
  WeightFormat format;
  Placement placement;
  Shard shard;

  bool present() const { return !view.empty(); }
  const Shape& shape() const { return view.shape; }
};

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
