// Shape arithmetic and slicing of tensor views.
#include "core/tensor.h"

#include <sstream>

namespace glm {

namespace detail {
void shape_rank_overflow(size_t rank) {
  fail("a tensor of rank ", rank, " (more than ", Shape::kMaxRank, " dimensions) is not supported");
}
void shape_index_out_of_range(size_t index, size_t rank) {
  fail("internal error: dimension ", index, " of a rank-", rank, " shape");
}
}  // namespace detail

std::string shape_to_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  return count;
}

size_t TensorView::nbytes() const {
  if (shape.empty()) return dtype_size(dtype);
  const int64_t row_count = rows();
  if (row_count == 0) return 0;
  return static_cast<size_t>((row_count - 1) * row_stride + shape.back()) * dtype_size(dtype);
}

TensorView TensorView::slice_first(int64_t i) const {
  GLM_CHECK(rank() >= 2 && i >= 0 && i < shape[0], "internal error: slice ", i, " of ", shape_to_string(shape));
  Shape inner(shape.begin() + 1, shape.end());
  const int64_t inner_rows = shape_numel(inner) / inner.back();
  TensorView out(static_cast<const char*>(data) + static_cast<size_t>(i * inner_rows * row_stride) * dtype_size(dtype),
                 dtype, inner);
  out.row_stride = row_stride;
  return out;
}

TensorView TensorView::slice_rows(int64_t begin, int64_t end) const {
  GLM_CHECK(rank() == 2 && 0 <= begin && begin <= end && end <= shape[0],
            "internal error: rows [", begin, ", ", end, ") of ", shape_to_string(shape));
  TensorView out(row(begin), dtype, {end - begin, shape[1]});
  out.row_stride = row_stride;
  return out;
}

TensorView TensorView::slice_columns(int64_t begin, int64_t end) const {
  GLM_CHECK(rank() == 2 && 0 <= begin && begin <= end && end <= shape[1],
            "internal error: columns [", begin, ", ", end, ") of ", shape_to_string(shape));
  TensorView out(static_cast<const char*>(data) + static_cast<size_t>(begin) * dtype_size(dtype), dtype,
                 {shape[0], end - begin});
  out.row_stride = row_stride;
  return out;
}

Tensor Tensor::reshaped(Shape new_shape) const {
  GLM_CHECK(shape_numel(new_shape) == numel(), "internal error: reshape ", shape_to_string(shape), " to ",
            shape_to_string(new_shape));
  Tensor out = *this;
  out.shape = std::move(new_shape);
  return out;
}

Tensor Tensor::slice_first(int64_t begin, int64_t end) const {
  GLM_CHECK(!shape.empty() && 0 <= begin && begin <= end && end <= shape[0],
            "internal error: slice [", begin, ", ", end, ") of ", shape_to_string(shape));
  Tensor out = *this;
  const int64_t row_elements = shape[0] ? numel() / shape[0] : 0;
  out.data = static_cast<char*>(data) + static_cast<size_t>(begin * row_elements) * dtype_size(dtype);
  out.shape[0] = end - begin;
  return out;
}

}  // namespace glm
