// The in-place Shape (core/tensor.h): it must behave like the
// std::vector<int64_t> it replaced for everything the engine does with a
// shape, never touch the heap, and refuse a rank above its capacity with a
// glm::Error rather than writing past its storage.
#include <gtest/gtest.h>

#include <type_traits>
#include <vector>

#include "../common/errors.h"
#include "core/tensor.h"

namespace glm {
namespace {

using testing_fixtures::expect_error;

// Copying a Tensor (every op call takes one by value) is a plain memcpy.
static_assert(std::is_trivially_copyable_v<Shape>);
static_assert(std::is_trivially_copyable_v<Tensor>);

TEST(Shape, ReadsLikeAVector) {
  const Shape shape = {4, 128, 3};
  EXPECT_EQ(shape.size(), 3u);
  EXPECT_FALSE(shape.empty());
  EXPECT_EQ(shape[1], 128);
  EXPECT_EQ(shape.at(2), 3);
  EXPECT_EQ(shape.front(), 4);
  EXPECT_EQ(shape.back(), 3);
  EXPECT_EQ(std::vector<int64_t>(shape.begin(), shape.end()), (std::vector<int64_t>{4, 128, 3}));
  EXPECT_EQ(shape.to_vector(), (std::vector<int64_t>{4, 128, 3}));
  EXPECT_EQ(shape_numel(shape), 4 * 128 * 3);
  EXPECT_EQ(shape_to_string(shape), "[4, 128, 3]");
  EXPECT_TRUE(Shape{}.empty());
  EXPECT_EQ(shape_numel(Shape{}), 1);
  EXPECT_EQ(shape_to_string(Shape{}), "[]");
}

TEST(Shape, BuildsFromRangesAndVectors) {
  const std::vector<int64_t> extents = {2, 3, 5};
  EXPECT_EQ(Shape(extents), (Shape{2, 3, 5}));
  EXPECT_EQ(Shape(extents.begin() + 1, extents.end()), (Shape{3, 5}));
  const int widths[] = {7, 9};  // another element type converts
  EXPECT_EQ(Shape(std::begin(widths), std::end(widths)), (Shape{7, 9}));
  Shape grown;
  grown.push_back(6);
  grown.push_back(1);
  EXPECT_EQ(grown, (Shape{6, 1}));
}

TEST(Shape, ComparesOnlyTheUsedExtents) {
  Shape a = {2, 3, 4};
  a.pop_back();  // leaves the 4 in storage past the rank
  EXPECT_EQ(a, (Shape{2, 3}));
  EXPECT_NE(a, (Shape{2, 3, 4}));
  EXPECT_NE(a, (Shape{2}));
  EXPECT_NE(a, (Shape{3, 2}));
}

TEST(Shape, InsertsAndErasesALeadingDimension) {
  Shape shape = {3, 5};
  shape.insert(shape.begin(), 8);  // stacking experts
  EXPECT_EQ(shape, (Shape{8, 3, 5}));
  shape.insert(shape.end(), 2);
  EXPECT_EQ(shape, (Shape{8, 3, 5, 2}));
  shape.erase(shape.begin());  // one expert of the stack
  EXPECT_EQ(shape, (Shape{3, 5, 2}));
  shape.erase(shape.begin() + 1);
  EXPECT_EQ(shape, (Shape{3, 2}));
}

TEST(Shape, RefusesMoreThanItsCapacity) {
  Shape full(std::vector<int64_t>(Shape::kMaxRank, 1));
  EXPECT_EQ(full.size(), Shape::kMaxRank);
  expect_error([&] { full.push_back(1); }, {"rank 9", "more than 8 dimensions"});
  EXPECT_EQ(full.size(), Shape::kMaxRank);  // unchanged by the refused push
  expect_error([] { Shape(std::vector<int64_t>(9, 1)); }, {"rank 9"});
  expect_error([] { Shape({1, 1, 1, 1, 1, 1, 1, 1, 1, 1}); }, {"rank 9"});
  expect_error([&] { full.insert(full.begin(), 2); }, {"rank 9"});
  float value = 0;
  const Tensor tensor{&value, DType::F32, {1}};
  expect_error([&] { tensor.reshaped({1, 1, 1, 1, 1, 1, 1, 1, 1}); }, {"rank 9"});
}

TEST(Shape, AtChecksTheIndex) {
  const Shape shape = {4, 2};
  expect_error([&] { (void)shape.at(2); }, {"dimension 2", "rank-2"});
  const TensorView view(nullptr, DType::F32, {4, 2});
  EXPECT_EQ(view.dim(-1), 2);
  expect_error([&] { (void)view.dim(3); }, {"dimension 3"});
}

}  // namespace
}  // namespace glm
