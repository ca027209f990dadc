// Tensor views: a pointer, an element type and a shape, never owning memory.
// Weights are views into memory-mapped checkpoint files (or into memory a
// backend repacked them to); activations are views into backend scratch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace glm {

namespace detail {
[[noreturn]] void shape_rank_overflow(size_t rank);  // throws glm::Error naming the rank
[[noreturn]] void shape_index_out_of_range(size_t index, size_t rank);
}  // namespace detail

// A tensor's extents, stored in place: a Tensor is made, reshaped and copied
// many times per decoded token, and a heap-backed shape made each of those a
// malloc (issue #4: nothing allocated inside the decode loop). The interface
// is the subset of std::vector<int64_t> the engine uses, so shapes read like
// vectors; asking for more than kMaxRank dimensions throws glm::Error instead
// of writing past the end. Trivially copyable: copying a Tensor is a memcpy.
class Shape {
 public:
  // GLM tensors have rank <= 4 (a paged KV cache); 8 leaves room for any
  // checkpoint tensor a loader might meet before it rejects it by name.
  static constexpr size_t kMaxRank = 8;

  using value_type = int64_t;
  using size_type = size_t;
  using difference_type = std::ptrdiff_t;
  using reference = int64_t&;
  using const_reference = const int64_t&;
  using pointer = int64_t*;
  using const_pointer = const int64_t*;
  using iterator = int64_t*;
  using const_iterator = const int64_t*;

  constexpr Shape() = default;
  Shape(std::initializer_list<int64_t> extents) : Shape(extents.begin(), extents.end()) {}
  template <typename Iterator, typename = decltype(*std::declval<Iterator&>()++)>
  Shape(Iterator first, Iterator last) {
    for (; first != last; ++first) push_back(static_cast<int64_t>(*first));
  }
  // From a vector (parsed JSON, test tables); explicit so that a stray
  // vector does not silently become a shape.
  explicit Shape(const std::vector<int64_t>& extents) : Shape(extents.begin(), extents.end()) {}

  size_t size() const { return rank_; }
  bool empty() const { return rank_ == 0; }
  static constexpr size_t max_size() { return kMaxRank; }
  static constexpr size_t capacity() { return kMaxRank; }

  int64_t& operator[](size_t i) { return extents_[i]; }
  const int64_t& operator[](size_t i) const { return extents_[i]; }
  int64_t& at(size_t i) {
    if (i >= rank_) detail::shape_index_out_of_range(i, rank_);
    return extents_[i];
  }
  const int64_t& at(size_t i) const {
    if (i >= rank_) detail::shape_index_out_of_range(i, rank_);
    return extents_[i];
  }
  int64_t& front() { return extents_[0]; }
  const int64_t& front() const { return extents_[0]; }
  int64_t& back() { return extents_[rank_ - 1]; }
  const int64_t& back() const { return extents_[rank_ - 1]; }
  int64_t* data() { return extents_; }
  const int64_t* data() const { return extents_; }

  iterator begin() { return extents_; }
  iterator end() { return extents_ + rank_; }
  const_iterator begin() const { return extents_; }
  const_iterator end() const { return extents_ + rank_; }
  const_iterator cbegin() const { return begin(); }
  const_iterator cend() const { return end(); }

  void push_back(int64_t extent) {
    if (rank_ == kMaxRank) detail::shape_rank_overflow(rank_ + 1);
    extents_[rank_++] = extent;
  }
  void pop_back() { --rank_; }
  void clear() { rank_ = 0; }
  // Inserts one extent before `position` (a leading expert dimension).
  iterator insert(const_iterator position, int64_t extent) {
    const size_t index = static_cast<size_t>(position - extents_);
    push_back(extent);
    for (size_t i = rank_ - 1; i > index; --i) extents_[i] = extents_[i - 1];
    extents_[index] = extent;
    return extents_ + index;
  }
  // Removes the extent at `position` (dropping a leading dimension).
  iterator erase(const_iterator position) {
    const size_t index = static_cast<size_t>(position - extents_);
    for (size_t i = index; i + 1 < rank_; ++i) extents_[i] = extents_[i + 1];
    --rank_;
    return extents_ + index;
  }

  std::vector<int64_t> to_vector() const { return std::vector<int64_t>(begin(), end()); }

  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (size_t i = 0; i < a.rank_; ++i)
      if (a.extents_[i] != b.extents_[i]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

 private:
  // Zero-filled so that copies and comparisons never read indeterminate values.
  int64_t extents_[kMaxRank] = {};
  size_t rank_ = 0;
};

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
