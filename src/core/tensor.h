// Tensor views: a pointer, an element type and a shape, never owning memory.
// Weights are views into memory-mapped checkpoint files (or into memory a
// backend repacked them to); activations are views into backend scratch.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace glm {

using Shape = std::vector<int64_t>;

std::string shape_to_string(const Shape& shape);  // "[4, 128]"
int64_t shape_numel(const Shape& shape);

// A read-only view. Row-major; the last dimension is contiguous. `row_stride`
// is the distance in elements between consecutive rows (index along the
// second-to-last dimension): it equals shape.back() for a dense tensor and is
// larger for a column slice of a matrix (a tensor-parallel shard of o_proj or
// down_proj stays a zero-copy view of the file that way).
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  int64_t row_stride = 0;

  TensorView() = default;
  TensorView(const void* data_, DType dtype_, Shape shape_)
      : data(data_), dtype(dtype_), shape(std::move(shape_)), row_stride(shape.empty() ? 0 : shape.back()) {}

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int64_t numel() const { return shape_numel(shape); }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  bool contiguous() const { return shape.empty() || row_stride == shape.back(); }
  bool empty() const { return data == nullptr; }
  // Bytes spanned in memory (dense tensors: numel * element size).
  size_t nbytes() const;
  // Pointer to row r (over all leading dimensions flattened).
  const void* row(int64_t r) const {
    return static_cast<const char*>(data) + static_cast<size_t>(r * row_stride) * dtype_size(dtype);
  }
  // The i-th slice along the first dimension (an expert of a stacked table).
  TensorView slice_first(int64_t i) const;
  // Rows [begin, end) of a 2-D matrix.
  TensorView slice_rows(int64_t begin, int64_t end) const;
  // Columns [begin, end) of a 2-D matrix (strided view).
  TensorView slice_columns(int64_t begin, int64_t end) const;
};

// A writable f32 (or other dtype) activation view, always dense.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;

  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int64_t numel() const { return shape_numel(shape); }
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }
  float* f32() const {
    GLM_CHECK(dtype == DType::F32, "internal error: f32 access to a ", dtype_name(dtype), " tensor");
    return static_cast<float*>(data);
  }
  int32_t* i32() const {
    GLM_CHECK(dtype == DType::I32, "internal error: i32 access to a ", dtype_name(dtype), " tensor");
    return static_cast<int32_t*>(data);
  }
  // Same memory seen with another shape of the same element count.
  Tensor reshaped(Shape new_shape) const;
  // Rows [begin, end) along the first dimension.
  Tensor slice_first(int64_t begin, int64_t end) const;
  TensorView view() const { return TensorView(data, dtype, shape); }
};

}  // namespace glm
