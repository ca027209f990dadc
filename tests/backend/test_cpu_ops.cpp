// Unit tests of the reference CPU ops through the Backend interface: the
// router on the hand-worked examples of docs/model.md, rotary, RMSNorm,
// projections over strided and bf16 views, paged attention against a plain
// causal attention, and the expert MLPs against a per-token loop.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "../common/random_values.h"

namespace glm {
namespace {

Weight weight_of(const std::vector<float>& values, Shape shape) {
  return float_weight("test", TensorView(values.data(), DType::F32, std::move(shape)));
}

using testing_random::random_values;

Tensor filled(Backend& backend, Shape shape, const std::vector<float>& values) {
  Tensor tensor = backend.scratch(shape);
  std::copy(values.begin(), values.end(), tensor.f32());
  return tensor;
}

struct RouteResult {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

RouteResult route_one(const std::vector<float>& logits, const std::vector<float>& bias, RouterParams params) {
  auto backend = make_cpu_backend();
  const int64_t n_experts = static_cast<int64_t>(logits.size());
  Tensor router_logits = filled(*backend, {1, n_experts}, logits);
  Routing routing;
  routing.expert_ids = backend->scratch({1, params.top_k}, DType::I32);
  routing.weights = backend->scratch({1, params.top_k});
  backend->route(routing, router_logits, weight_of(bias, {n_experts}), params);
  RouteResult result;
  result.ids.assign(routing.expert_ids.i32(), routing.expert_ids.i32() + params.top_k);
  result.weights.assign(routing.weights.f32(), routing.weights.f32() + params.top_k);
  return result;
}

float logit_of(float probability) { return std::log(probability / (1.0f - probability)); }

// docs/model.md, "Worked example": groups G2 and G1 survive, experts {5, 2}
// are chosen on biased scores, weighted by unbiased ones.
TEST(Router, WorkedExampleWithGroupsBiasAndScaling) {
  const std::vector<float> logits = {2.0f, -3.0f, 0.5f, 0.0f, 1.0f, -1.0f, 1.5f, 0.0f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.1f, 0.0f, -0.1f, 0.5f, 0.0f, -0.2f};
  RouterParams params{4, 2, 2, true, 2.5f};
  const RouteResult result = route_one(logits, bias, params);
  ASSERT_EQ(result.ids, (std::vector<int32_t>{5, 2}));
  const float s5 = 1.0f / (1.0f + std::exp(1.0f)), s2 = 1.0f / (1.0f + std::exp(-0.5f));
  EXPECT_NEAR(result.weights[0], 2.5f * s5 / (s5 + s2), 1e-6);
  EXPECT_NEAR(result.weights[1], 2.5f * s2 / (s5 + s2), 1e-6);
  EXPECT_NEAR(result.weights[0], 0.7543f, 1e-4);
  EXPECT_NEAR(result.weights[1], 1.7457f, 1e-4);
}

TEST(Router, WithoutGroupsTheBestBiasedScoresWin) {
  const std::vector<float> logits = {2.0f, -3.0f, 0.5f, 0.0f, 1.0f, -1.0f, 1.5f, 0.0f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.1f, 0.0f, -0.1f, 0.5f, 0.0f, -0.2f};
  const RouteResult result = route_one(logits, bias, RouterParams{1, 1, 2, true, 1.0f});
  EXPECT_EQ(result.ids, (std::vector<int32_t>{0, 6}));
}

// docs/model.md, "The mask value": the eligible expert 1 has a negative
// biased score; -inf masking still picks it, 0 masking would pick expert 2.
TEST(Router, PrunedGroupsAreMaskedWithMinusInfinity) {
  const std::vector<float> logits = {2.0f, -2.0f, 0.0f, -1.0f};
  const std::vector<float> bias = {0.0f, -0.2f, -0.1f, 0.0f};
  const RouteResult result = route_one(logits, bias, RouterParams{2, 1, 2, false, 1.0f});
  ASSERT_EQ(result.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(result.weights[0], 1.0f / (1.0f + std::exp(-2.0f)), 1e-6);
  EXPECT_NEAR(result.weights[1], 1.0f / (1.0f + std::exp(2.0f)), 1e-6);
}

TEST(Router, UnnormalisedWeightsAreScaledScores) {
  const std::vector<float> logits = {logit_of(0.9f), logit_of(0.2f), logit_of(0.7f), logit_of(0.4f)};
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.0f};
  const RouteResult result = route_one(logits, bias, RouterParams{1, 1, 3, false, 1.5f});
  ASSERT_EQ(result.ids, (std::vector<int32_t>{0, 2, 3}));
  EXPECT_NEAR(result.weights[0], 1.5f * 0.9f, 1e-6);
  EXPECT_NEAR(result.weights[1], 1.5f * 0.7f, 1e-6);
  EXPECT_NEAR(result.weights[2], 1.5f * 0.4f, 1e-6);
}

TEST(RmsNorm, MatchesFormula) {
  auto backend = make_cpu_backend();
  const std::vector<float> x = random_values(3 * 8, 1), gamma = random_values(8, 2);
  Tensor input = filled(*backend, {3, 8}, x);
  Tensor out = backend->scratch({3, 8});
  backend->rms_norm(out, input, weight_of(gamma, {8}), 1e-5f);
  for (int r = 0; r < 3; ++r) {
    float mean_square = 0.0f;
    for (int i = 0; i < 8; ++i) mean_square += x[r * 8 + i] * x[r * 8 + i] / 8.0f;
    for (int i = 0; i < 8; ++i)
      EXPECT_NEAR(out.f32()[r * 8 + i], gamma[i] * x[r * 8 + i] / std::sqrt(mean_square + 1e-5f), 1e-5);
  }
}

TEST(Rotary, RotatesOnlyTheRotaryPartWithHalfSplitPairs) {
  auto backend = make_cpu_backend();
  const int64_t heads = 2, head_dim = 8, rotary_dim = 4;
  const std::vector<float> x = random_values(2 * heads * head_dim, 3);
  Tensor tensor = filled(*backend, {2, heads, head_dim}, x);
  const std::vector<int32_t> positions = {0, 5};
  backend->rotary(tensor, positions, rotary_dim, 10000.0);
  // Position 0 is the identity.
  for (int i = 0; i < heads * head_dim; ++i) EXPECT_FLOAT_EQ(tensor.f32()[i], x[i]);
  for (int h = 0; h < heads; ++h) {
    const float* before = x.data() + (heads + h) * head_dim;
    const float* after = tensor.f32() + (heads + h) * head_dim;
    for (int i = 0; i < rotary_dim / 2; ++i) {
      const double angle = 5.0 * std::pow(10000.0, -2.0 * i / rotary_dim);
      EXPECT_NEAR(after[i], before[i] * std::cos(angle) - before[i + 2] * std::sin(angle), 1e-5);
      EXPECT_NEAR(after[i + 2], before[i + 2] * std::cos(angle) + before[i] * std::sin(angle), 1e-5);
    }
    for (int i = rotary_dim; i < head_dim; ++i) EXPECT_EQ(after[i], before[i]);
  }
}

TEST(Linear, Bf16AndStridedColumnViews) {
  auto backend = make_cpu_backend();
  const int64_t out_features = 5, in_features = 6;
  std::vector<float> w = random_values(out_features * in_features, 4);
  std::vector<uint16_t> w_bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w_bf16[i] = f32_to_bf16(w[i]);
    w[i] = bf16_to_f32(w_bf16[i]);  // the exact values the bf16 copy holds
  }
  const std::vector<float> x = random_values(2 * in_features, 5), b = random_values(out_features, 6);
  Tensor input = filled(*backend, {2, in_features}, x);
  const Weight weight = float_weight("w", TensorView(w_bf16.data(), DType::BF16, {out_features, in_features}));
  Weight bias = weight_of(b, {out_features});
  Tensor out = backend->scratch({2, out_features});
  backend->linear(out, input, weight, &bias);
  for (int t = 0; t < 2; ++t)
    for (int o = 0; o < out_features; ++o) {
      double expected = b[o];
      for (int i = 0; i < in_features; ++i) expected += w[o * in_features + i] * x[t * in_features + i];
      EXPECT_NEAR(out.f32()[t * out_features + o], expected, 1e-5);
    }
  // Columns [2, 6) of the matrix: a strided view, no copy.
  const Weight columns = weight.slice_columns(2, 6);
  Tensor narrow_input = filled(*backend, {1, 4}, {x.begin() + 2, x.begin() + 6});
  Tensor narrow_out = backend->scratch({1, out_features});
  backend->linear(narrow_out, narrow_input, columns, nullptr);
  for (int o = 0; o < out_features; ++o) {
    double expected = 0.0;
    for (int i = 2; i < 6; ++i) expected += w[o * in_features + i] * x[i];
    EXPECT_NEAR(narrow_out.f32()[o], expected, 1e-5);
  }
}

// Paged attention over scattered blocks equals plain causal attention.
TEST(Attention, PagedEqualsContiguousCausal) {
  auto backend = make_cpu_backend();
  const int64_t n = 7, heads = 4, kv_heads = 2, head_dim = 8, block_size = 3, n_blocks = 6;
  const std::vector<float> q = random_values(n * heads * head_dim, 7), k = random_values(n * kv_heads * head_dim, 8),
                           v = random_values(n * kv_heads * head_dim, 9);
  KvLayer cache{backend->allocate({n_blocks, block_size, kv_heads, head_dim}),
                backend->allocate({n_blocks, block_size, kv_heads, head_dim})};
  AttentionPlan plan;
  plan.block_size = block_size;
  plan.block_tables = {{4, 1, 5}};  // deliberately out of order
  for (int t = 0; t < n; ++t) {
    plan.token_sequence.push_back(0);
    plan.token_position.push_back(t);
    plan.token_slot.push_back(plan.block_tables[0][t / block_size] * block_size + t % block_size);
  }
  Tensor out = backend->scratch({n, heads, head_dim});
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  backend->attention(out, filled(*backend, {n, heads, head_dim}, q), filled(*backend, {n, kv_heads, head_dim}, k),
                     filled(*backend, {n, kv_heads, head_dim}, v), cache, plan, scale);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < heads; ++h) {
      const int kvh = h / (heads / kv_heads);
      std::vector<double> scores(t + 1);
      double max_score = -1e30, total = 0.0;
      for (int p = 0; p <= t; ++p) {
        double dot = 0.0;
        for (int d = 0; d < head_dim; ++d)
          dot += q[(t * heads + h) * head_dim + d] * k[(p * kv_heads + kvh) * head_dim + d];
        scores[p] = dot * scale;
        max_score = std::max(max_score, scores[p]);
      }
      for (double& s : scores) total += s = std::exp(s - max_score);
      for (int d = 0; d < head_dim; ++d) {
        double expected = 0.0;
        for (int p = 0; p <= t; ++p) expected += scores[p] / total * v[(p * kv_heads + kvh) * head_dim + d];
        EXPECT_NEAR(out.f32()[(t * heads + h) * head_dim + d], expected, 1e-5);
      }
    }
  backend->release(cache.keys);
  backend->release(cache.values);
}

// Expert MLPs against a per-token loop; split over two expert ranges, the
// partial outputs sum to the whole.
TEST(MoeExperts, GroupedByExpertEqualsPerTokenLoopAndShardsSum) {
  auto backend = make_cpu_backend();
  const int64_t n = 5, hidden = 6, width = 4, n_experts = 4, top_k = 2;
  std::vector<std::vector<float>> gate_w, up_w, down_w;
  ExpertTable gate, up, down;
  for (int e = 0; e < n_experts; ++e) {
    gate_w.push_back(random_values(width * hidden, 10 + e));
    up_w.push_back(random_values(width * hidden, 20 + e));
    down_w.push_back(random_values(hidden * width, 30 + e));
  }
  for (int e = 0; e < n_experts; ++e) {
    gate.experts.push_back(weight_of(gate_w[e], {width, hidden}));
    up.experts.push_back(weight_of(up_w[e], {width, hidden}));
    down.experts.push_back(weight_of(down_w[e], {hidden, width}));
  }
  const std::vector<float> x = random_values(n * hidden, 40);
  const std::vector<int32_t> ids = {0, 3, 3, 1, 2, 0, 1, 3, 3, 2};
  const std::vector<float> mix = random_values(n * top_k, 41);
  Routing routing{backend->scratch({n, top_k}, DType::I32), filled(*backend, {n, top_k}, mix)};
  std::copy(ids.begin(), ids.end(), routing.expert_ids.i32());
  Tensor input = filled(*backend, {n, hidden}, x);
  Tensor out = backend->scratch({n, hidden});
  backend->moe_experts(out, input, routing, gate, up, down);

  for (int t = 0; t < n; ++t) {
    std::vector<double> expected(hidden, 0.0);
    for (int k = 0; k < top_k; ++k) {
      const int e = ids[t * top_k + k];
      std::vector<double> activation(width);
      for (int j = 0; j < width; ++j) {
        double g = 0.0, u = 0.0;
        for (int i = 0; i < hidden; ++i) {
          g += gate_w[e][j * hidden + i] * x[t * hidden + i];
          u += up_w[e][j * hidden + i] * x[t * hidden + i];
        }
        activation[j] = g / (1.0 + std::exp(-g)) * u;
      }
      for (int d = 0; d < hidden; ++d) {
        double sum = 0.0;
        for (int j = 0; j < width; ++j) sum += down_w[e][d * width + j] * activation[j];
        expected[d] += mix[t * top_k + k] * sum;
      }
    }
    for (int d = 0; d < hidden; ++d) EXPECT_NEAR(out.f32()[t * hidden + d], expected[d], 1e-4);
  }

  // Experts [0, 2) and [2, 4) on two "ranks".
  Tensor sum = backend->scratch({n, hidden});
  std::fill(sum.f32(), sum.f32() + n * hidden, 0.0f);
  for (int half = 0; half < 2; ++half) {
    ExpertTable g, u, d;
    g.first_expert = u.first_expert = d.first_expert = half * 2;
    for (int e = half * 2; e < half * 2 + 2; ++e) {
      g.experts.push_back(gate.experts[e]);
      u.experts.push_back(up.experts[e]);
      d.experts.push_back(down.experts[e]);
    }
    Tensor part = backend->scratch({n, hidden});
    backend->moe_experts(part, input, routing, g, u, d);
    backend->add(sum, sum, part);
  }
  for (int i = 0; i < n * hidden; ++i) EXPECT_NEAR(sum.f32()[i], out.f32()[i], 1e-5);
}

TEST(Communicator, ThreadAllReduceSumsOverRanks) {
  auto group = std::make_shared<ThreadCommunicator::Group>(3);
  std::vector<std::vector<float>> data = {{1, 2}, {10, 20}, {100, 200}};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 3; ++rank)
    threads.emplace_back([&, rank] {
      ThreadCommunicator communicator(group, rank);
      for (int round = 0; round < 50; ++round) {
        std::vector<float> values = {static_cast<float>(rank + round), 1.0f};
        communicator.all_reduce_sum(values.data(), values.size());
        EXPECT_EQ(values[0], 3.0f * round + 3.0f);
        EXPECT_EQ(values[1], 3.0f);
      }
      communicator.all_reduce_sum(data[rank].data(), 2);
    });
  for (auto& thread : threads) thread.join();
  for (const auto& values : data) EXPECT_EQ(values, (std::vector<float>{111, 222}));
}

}  // namespace
}  // namespace glm

namespace glm {
namespace {

// f32 -> f16 -> f32 round trip against the exact rounding of every half value.
// The model rewinds the scratch arena after each layer: memory taken after
// a mark is handed out again, and memory taken before it is kept.
TEST(Scratch, RewindReusesWhatWasTakenAfterTheMark) {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  backend->reset_scratch();
  const Tensor kept = backend->scratch({1000});
  const Backend::ScratchMark mark = backend->scratch_mark();
  const Tensor first = backend->scratch({5000});
  backend->scratch({40 << 20});  // past the first chunk
  backend->scratch_rewind(mark);
  const Tensor again = backend->scratch({5000});
  EXPECT_EQ(again.data, first.data);
  EXPECT_NE(again.data, kept.data);
}

TEST(DTypes, HalfRoundTripRoundsToNearestEven) {
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    const float value = f16_to_f32(static_cast<uint16_t>(bits));
    ASSERT_EQ(f32_to_f16(value), bits);
    ASSERT_EQ(f32_to_f16(-value), bits | 0x8000);
    if (bits + 1 < 0x7c00) {  // halfway to the next value rounds to the even one
      const float next = f16_to_f32(static_cast<uint16_t>(bits + 1));
      const float middle = (value + next) / 2;
      ASSERT_EQ(f32_to_f16(middle), (bits & 1) ? bits + 1 : bits) << bits;
    }
  }
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);  // halfway: ties to even
}

}  // namespace
}  // namespace glm
