// Slicing of weight descriptors: a tensor-parallel shard or one expert of a
// stacked table is a view of the same bytes, with the scales and biases of a
// quantized format sliced to match.
#include "core/weight.h"

#include <sstream>

namespace glm {

std::string WeightFormat::describe() const {
  std::ostringstream out;
  switch (kind) {
    case Kind::Float: out << dtype_name(dtype); break;
    case Kind::Affine: out << "affine " << bits << "-bit g" << group_size; break;
    case Kind::Fp8:
      out << "FP8 e4m3 per-"
          << (fp8_scale == Fp8Scale::Tensor ? "tensor" : fp8_scale == Fp8Scale::Channel ? "channel" : "block");
      if (fp8_scale == Fp8Scale::Block) out << " " << block_rows << "x" << block_cols;
      break;
  }
  return out.str();
}

Weight float_weight(std::string name, const TensorView& view) {
  Weight weight;
  weight.name = std::move(name);
  weight.shape = view.shape;
  weight.view = view;
  weight.format.dtype = view.dtype;
  return weight;
}

size_t Weight::nbytes() const {
  size_t bytes = view.nbytes();
  if (!format.scales.empty()) bytes += format.scales.nbytes();
  if (!format.biases.empty()) bytes += format.biases.nbytes();
  return bytes;
}

namespace {

// Rows [begin, end) of a 1-D vector or a 2-D matrix view.
TensorView view_rows(const TensorView& view, int64_t begin, int64_t end) {
  if (view.rank() == 1) {
    TensorView out(static_cast<const char*>(view.data) + begin * dtype_size(view.dtype), view.dtype, {end - begin});
    return out;
  }
  return view.slice_rows(begin, end);
}

}  // namespace

Weight Weight::slice_rows(int64_t begin, int64_t end) const {
  GLM_CHECK(0 <= begin && begin <= end && end <= shape.at(0), "internal error: rows [", begin, ", ", end, ") of ",
            name);
  Weight out = *this;
  out.format.block_scale_pairs = TensorView();  // laid out for the whole weight
  out.shape[0] = end - begin;
  out.view = view_rows(view, begin, end);
  switch (format.kind) {
    case WeightFormat::Kind::Float: break;
    case WeightFormat::Kind::Affine:
      out.format.scales = format.scales.slice_rows(begin, end);
      out.format.biases = format.biases.slice_rows(begin, end);
      break;
    case WeightFormat::Kind::Fp8:
      if (format.fp8_scale == WeightFormat::Fp8Scale::Channel) {
        out.format.scales = view_rows(format.scales, begin, end);
      } else if (format.fp8_scale == WeightFormat::Fp8Scale::Block) {
        GLM_CHECK(begin % format.block_rows == 0 && (end % format.block_rows == 0 || end == shape[0]),
                  name, ": a row slice [", begin, ", ", end, ") must fall on FP8 blocks of ", format.block_rows);
        out.format.scales = format.scales.slice_rows(begin / format.block_rows,
                                                     (end + format.block_rows - 1) / format.block_rows);
      }
      break;
  }
  return out;
}

Weight Weight::slice_columns(int64_t begin, int64_t end) const {
  GLM_CHECK(shape.size() == 2 && 0 <= begin && begin <= end && end <= shape[1], "internal error: columns [", begin,
            ", ", end, ") of ", name);
  Weight out = *this;
  out.format.block_scale_pairs = TensorView();  // laid out for the whole weight
  out.shape[1] = end - begin;
  switch (format.kind) {
    case WeightFormat::Kind::Float: out.view = view.slice_columns(begin, end); break;
    case WeightFormat::Kind::Affine: {
      const int64_t group = format.group_size;
      GLM_CHECK(begin % group == 0 && end % group == 0 && (begin * format.bits) % 32 == 0 &&
                    (end * format.bits) % 32 == 0,
                name, ": a column slice [", begin, ", ", end, ") must fall on groups of ", group, " and 32-bit words");
      out.view = view.slice_columns(begin * format.bits / 32, end * format.bits / 32);
      out.format.scales = format.scales.slice_columns(begin / group, end / group);
      out.format.biases = format.biases.slice_columns(begin / group, end / group);
      break;
    }
    case WeightFormat::Kind::Fp8:
      out.view = view.slice_columns(begin, end);
      if (format.fp8_scale == WeightFormat::Fp8Scale::Block) {
        GLM_CHECK(begin % format.block_cols == 0 && (end % format.block_cols == 0 || end == shape[1]), name,
                  ": a column slice [", begin, ", ", end, ") must fall on FP8 blocks of ", format.block_cols);
        out.format.scales = format.scales.slice_columns(begin / format.block_cols,
                                                        (end + format.block_cols - 1) / format.block_cols);
      }
      break;
  }
  return out;
}

Weight Weight::slice_first(int64_t index) const {
  GLM_CHECK(shape.size() >= 2 && 0 <= index && index < shape[0], "internal error: slice ", index, " of ", name);
  Weight out = *this;
  out.format.block_scale_pairs = TensorView();  // laid out for the whole weight
  out.shape.erase(out.shape.begin());
  out.view = view.slice_first(index);
  // Stacked scales/biases carry the expert dimension first, like the values.
  if (!format.scales.empty() && format.scales.rank() == view.rank()) out.format.scales = format.scales.slice_first(index);
  if (!format.biases.empty() && format.biases.rank() == view.rank()) out.format.biases = format.biases.slice_first(index);
  out.name = name + "[" + std::to_string(index) + "]";
  return out;
}

}  // namespace glm
