// Tests of the CPU ops' fast paths against their plain references
// (backend/cpu/cpu_ops.h): GQA-blocked AVX-512 and AVX2 attention over the paged cache,
// SwiGLU / RMSNorm / add (AVX-512 and AVX2), the one-pass router and the grouped expert MLPs. On
// random inputs with sizes that are not multiples of any vector width, ragged
// batches, and 1/2/3 threads. Also the property the engine's ragged-batch test
// relies on: a token's result is bit-identical alone and inside any batch.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kernels/kernels.h"
#include "backend/cpu/simd_ops.h"
#include "../common/random_values.h"

namespace glm {
namespace {

using testing_random::random_values;

Weight weight_of(const std::vector<float>& values, Shape shape) {
  return float_weight("test", TensorView(values.data(), DType::F32, std::move(shape)));
}

// Largest |actual - expected| over the largest |expected|; infinite when a
// value is not finite (NaN would slip through the max).
double relative_error(const std::vector<float>& actual, const std::vector<float>& expected) {
  double difference = 0.0, scale = 1e-30;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!std::isfinite(actual[i])) return INFINITY;
    difference = std::max(difference, std::abs(static_cast<double>(actual[i]) - expected[i]));
    scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
  }
  return difference / scale;
}

bool same_bits(const float* a, const float* b, size_t count) { return std::memcmp(a, b, count * sizeof(float)) == 0; }

// Runs the body under each thread count, restoring the caller's.
class ThreadCounts {
 public:
  ~ThreadCounts() { omp_set_num_threads(saved_); }
  template <class Body>
  void each(Body body) {
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      body(threads);
    }
  }

 private:
  int saved_ = omp_get_max_threads();
};

// ---- attention ----

// Of AVX2 and AVX-512, those this CPU can run and this build compiled an op's
// version for; a test selects each through GLM_CPU_ISA's option.
std::vector<cpu::kernels::Isa> isas_compiled(bool avx2, bool avx512) {
  std::vector<cpu::kernels::Isa> isas;
  const cpu::kernels::Isa supported = cpu::kernels::supported_isa();
  if (supported >= cpu::kernels::Isa::Avx2 && avx2) isas.push_back(cpu::kernels::Isa::Avx2);
  if (supported >= cpu::kernels::Isa::Avx512 && avx512) isas.push_back(cpu::kernels::Isa::Avx512);
  return isas;
}

// The fast attention paths: AVX-512 blocks, and their AVX2 version.
std::vector<cpu::kernels::Isa> attention_isas() {
  return isas_compiled(cpu::simd::avx2_attention_compiled(), cpu::simd::compiled_for_avx512());
}

class IsaScope {
 public:
  explicit IsaScope(cpu::kernels::Isa isa) { cpu::kernels::options().isa = isa; }
  ~IsaScope() { cpu::kernels::options().isa = saved_; }

 private:
  cpu::kernels::Isa saved_ = cpu::kernels::options().isa;
};

#define SKIP_WITHOUT_FAST_ATTENTION() \
  if (attention_isas().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 attention on this CPU"

// A paged cache with scattered blocks and the plan of one step: each
// sequence has `cached` tokens stored already and appends `fresh` ones.
struct AttentionSetup {
  int64_t heads, kv_heads, head_dim, block_size;
  std::vector<std::pair<int64_t, int64_t>> sequences;  // (cached, fresh)

  int64_t n_blocks() const {
    int64_t blocks = 0;
    for (auto [cached, fresh] : sequences) blocks += (cached + fresh + block_size - 1) / block_size;
    return blocks + 3;
  }
};

struct AttentionCase {
  std::vector<float> keys, values;  // cache storage [n_blocks, block_size, kv_heads, head_dim]
  KvLayer cache;
  AttentionPlan prefill, step;  // writes the cached tokens; the step under test
  std::vector<float> prefill_k, prefill_v, q, k, v;
};

AttentionCase make_case(const AttentionSetup& s, unsigned seed) {
  AttentionCase c;
  const int64_t slot = s.kv_heads * s.head_dim, n_blocks = s.n_blocks();
  c.keys.assign(static_cast<size_t>(n_blocks * s.block_size * slot), 0.0f);
  c.values = c.keys;
  c.cache.keys.data = c.keys.data();
  c.cache.keys.dtype = DType::F32;
  c.cache.keys.shape = {n_blocks, s.block_size, s.kv_heads, s.head_dim};
  c.cache.values = c.cache.keys;
  c.cache.values.data = c.values.data();

  std::vector<int32_t> pool(static_cast<size_t>(n_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));  // blocks deliberately out of order
  size_t next_block = 0;
  for (AttentionPlan* plan : {&c.prefill, &c.step}) plan->block_size = s.block_size;
  for (size_t index = 0; index < s.sequences.size(); ++index) {
    const auto [cached, fresh] = s.sequences[index];
    std::vector<int32_t> table;
    for (int64_t b = 0; b < (cached + fresh + s.block_size - 1) / s.block_size; ++b) table.push_back(pool[next_block++]);
    for (AttentionPlan* plan : {&c.prefill, &c.step}) plan->block_tables.push_back(table);
    for (int64_t p = 0; p < cached + fresh; ++p) {
      AttentionPlan& plan = p < cached ? c.prefill : c.step;
      plan.token_sequence.push_back(static_cast<int32_t>(index));
      plan.token_position.push_back(static_cast<int32_t>(p));
      plan.token_slot.push_back(table[p / s.block_size] * s.block_size + p % s.block_size);
    }
  }
  const int64_t cached_tokens = static_cast<int64_t>(c.prefill.token_slot.size());
  const int64_t n = static_cast<int64_t>(c.step.token_slot.size());
  c.prefill_k = random_values(static_cast<size_t>(cached_tokens * slot), seed + 1);
  c.prefill_v = random_values(static_cast<size_t>(cached_tokens * slot), seed + 2);
  c.q = random_values(static_cast<size_t>(n * s.heads * s.head_dim), seed + 3, 2.0f);
  c.k = random_values(static_cast<size_t>(n * slot), seed + 4);
  c.v = random_values(static_cast<size_t>(n * slot), seed + 5);
  if (cached_tokens > 0) {
    std::vector<float> ignored(static_cast<size_t>(cached_tokens * s.heads * s.head_dim));
    std::vector<float> prefill_q(ignored.size(), 0.0f);
    cpu::attention_reference(ignored.data(), prefill_q.data(), c.prefill_k.data(), c.prefill_v.data(), cached_tokens,
                             s.heads, s.kv_heads, s.head_dim, c.cache, c.prefill, 1.0f);
  }
  return c;
}

std::vector<float> run_attention(AttentionCase& c, const AttentionSetup& s, bool reference) {
  const int64_t n = static_cast<int64_t>(c.step.token_slot.size());
  std::vector<float> out(static_cast<size_t>(n * s.heads * s.head_dim), NAN);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  (reference ? cpu::attention_reference : cpu::attention)(out.data(), c.q.data(), c.k.data(), c.v.data(), n, s.heads,
                                                          s.kv_heads, s.head_dim, c.cache, c.step, scale);
  return out;
}

TEST(FastAttention, MatchesReferenceOnOddShapesRaggedBatchesAndThreadCounts) {
  SKIP_WITHOUT_FAST_ATTENTION();
  const std::vector<AttentionSetup> setups = {
      {12, 1, 128, 16, {{0, 150}}},                        // a GLM-4.5-Air KV group, prompt over 3 key chunks
      {24, 2, 128, 16, {{0, 9}, {70, 1}, {130, 5}}},       // ragged: prompt, decode, mid-sequence chunk
      {8, 2, 48, 3, {{0, 37}, {64, 1}, {63, 2}}},          // tiny-model heads, positions at chunk edges
      {6, 2, 40, 5, {{11, 13}, {0, 1}}},                   // head_dim not a multiple of 16
      {4, 4, 24, 7, {{0, 66}}},                            // one query head per KV head
      {70, 1, 16, 16, {{0, 3}, {5, 2}}},                   // 70 heads per KV head: split in two blocks
      {3, 1, 8, 2, {{1, 4}, {0, 129}}},                    // 3 heads (odd rows per token), tiny head_dim
  };
  ThreadCounts threads;
  // Both widths run attention_vector.inc's one sequence of operations per
  // lane (and exp8 is exp16's arithmetic), so where both run they must agree
  // bit for bit, as every thread count must.
  std::vector<std::vector<float>> first_isa(setups.size());
  for (const cpu::kernels::Isa isa : attention_isas()) {
    const IsaScope scope(isa);
    SCOPED_TRACE(cpu::kernels::isa_name(isa));
    for (size_t i = 0; i < setups.size(); ++i) {
      AttentionCase c = make_case(setups[i], 100 + static_cast<unsigned>(i));
      const std::vector<float> expected = run_attention(c, setups[i], true);
      std::vector<float> first;
      threads.each([&](int count) {
        const std::vector<float> actual = run_attention(c, setups[i], false);
        EXPECT_LT(relative_error(actual, expected), 1e-5) << "setup " << i << ", " << count << " threads";
        if (first.empty()) first = actual;
        EXPECT_TRUE(same_bits(actual.data(), first.data(), first.size())) << "setup " << i << ", " << count << " threads";
      });
      if (first_isa[i].empty()) first_isa[i] = first;
      EXPECT_TRUE(same_bits(first.data(), first_isa[i].data(), first.size())) << "setup " << i << ": not the first ISA's bits";
    }
  }
}

void token_alone_equals_token_in_batch();

// Every token of a 150-token prompt, attended again on its own (as a decode
// step would), gets the same bits it got inside the prompt's blocks.
TEST(FastAttention, TokenAloneEqualsTokenInsideABatchToTheBit) {
  SKIP_WITHOUT_FAST_ATTENTION();
  for (const cpu::kernels::Isa isa : attention_isas()) {
    const IsaScope scope(isa);
    SCOPED_TRACE(cpu::kernels::isa_name(isa));
    token_alone_equals_token_in_batch();
  }
}

void token_alone_equals_token_in_batch() {
  const AttentionSetup setup{12, 2, 64, 16, {{0, 150}}};
  AttentionCase c = make_case(setup, 7);
  const std::vector<float> batch = run_attention(c, setup, false);
  const int64_t row = setup.heads * setup.head_dim, slot = setup.kv_heads * setup.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(setup.head_dim));
  for (int64_t t : {0, 1, 15, 47, 63, 64, 65, 100, 127, 128, 149}) {
    AttentionPlan alone;
    alone.block_size = setup.block_size;
    alone.block_tables = c.step.block_tables;
    alone.token_sequence = {0};
    alone.token_position = {c.step.token_position[t]};
    alone.token_slot = {c.step.token_slot[t]};
    std::vector<float> out(static_cast<size_t>(row));
    cpu::attention(out.data(), c.q.data() + t * row, c.k.data() + t * slot, c.v.data() + t * slot, 1, setup.heads,
                   setup.kv_heads, setup.head_dim, c.cache, alone, scale);
    EXPECT_TRUE(same_bits(out.data(), batch.data() + t * row, static_cast<size_t>(row))) << "token " << t;
  }
}

// ---- elementwise ----

void elementwise_matches_the_reference();

// The elementwise tables: AVX2 and AVX-512.
std::vector<cpu::kernels::Isa> elementwise_isas() {
  return isas_compiled(cpu::simd::avx2_elementwise_ops() != nullptr, cpu::simd::avx512_elementwise_ops() != nullptr);
}

TEST(FastElementwise, SwigluRmsNormAndAddMatchTheReference) {
  if (elementwise_isas().empty()) GTEST_SKIP() << "no AVX2 or AVX-512 elementwise ops on this CPU";
  for (cpu::kernels::Isa isa : elementwise_isas()) {
    IsaScope scope(isa);
    SCOPED_TRACE(isa == cpu::kernels::Isa::Avx512 ? "avx512" : "avx2");
    ASSERT_EQ(cpu::simd::elementwise_ops(), isa == cpu::kernels::Isa::Avx512 ? cpu::simd::avx512_elementwise_ops()
                                                                             : cpu::simd::avx2_elementwise_ops());
    elementwise_matches_the_reference();
  }
}

void elementwise_matches_the_reference() {
  ThreadCounts threads;
  for (int64_t count : {1, 15, 17, 1000, 4099, 300001}) {
    const std::vector<float> gate = random_values(static_cast<size_t>(count), 1, 4.0f);
    const std::vector<float> up = random_values(static_cast<size_t>(count), 2);
    std::vector<float> expected(static_cast<size_t>(count)), actual(static_cast<size_t>(count));
    cpu::swiglu_reference(expected.data(), gate.data(), up.data(), count);
    threads.each([&](int n) {
      cpu::swiglu(actual.data(), gate.data(), up.data(), count);
      EXPECT_LT(relative_error(actual, expected), 1e-6) << count << " elements, " << n << " threads";
      cpu::add(actual.data(), gate.data(), up.data(), count);
      for (int64_t i = 0; i < count; ++i) ASSERT_EQ(actual[i], gate[i] + up[i]);
    });
    // An expert's weighted row added to a token: one fused multiply-add per element.
    actual = up;
    cpu::simd::elementwise_ops()->add_scaled(actual.data(), gate.data(), 0.37f, count);
    for (int64_t i = 0; i < count; ++i) ASSERT_EQ(actual[i], std::fma(0.37f, gate[i], up[i])) << i << " of " << count;
  }
  // Saturated inputs stay finite and signed like the reference.
  const std::vector<float> extreme = {-200.0f, -90.0f, -20.0f, 0.0f, 20.0f, 90.0f, 200.0f};
  const std::vector<float> ones(extreme.size(), 1.0f);
  std::vector<float> expected(extreme.size()), actual(extreme.size());
  cpu::swiglu_reference(expected.data(), extreme.data(), ones.data(), static_cast<int64_t>(extreme.size()));
  cpu::swiglu(actual.data(), extreme.data(), ones.data(), static_cast<int64_t>(extreme.size()));
  for (size_t i = 0; i < extreme.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-6 * std::abs(expected[i]) + 1e-30);

  for (int64_t dim : {1, 16, 33, 4096}) {
    for (int64_t rows : {1, 7, 300}) {
      const std::vector<float> x = random_values(static_cast<size_t>(rows * dim), 3);
      const std::vector<float> gamma = random_values(static_cast<size_t>(dim), 4);
      std::vector<float> expected(x.size()), actual(x.size());
      cpu::rms_norm_reference(expected.data(), x.data(), weight_of(gamma, {dim}), rows, dim, 1e-5f);
      threads.each([&](int n) {
        cpu::rms_norm(actual.data(), x.data(), weight_of(gamma, {dim}), rows, dim, 1e-5f);
        EXPECT_LT(relative_error(actual, expected), 2e-6) << rows << " x " << dim << ", " << n << " threads";
      });
    }
  }
}

// ---- router ----

TEST(FastRouter, OnePassSelectionEqualsTheSortedDefinition) {
  struct Shape {
    int64_t experts, n_group, topk_group, top_k;
  };
  for (const Shape shape : {Shape{128, 1, 1, 8}, Shape{160, 8, 4, 8}, Shape{16, 4, 2, 4}, Shape{8, 2, 1, 2},
                            Shape{7, 1, 1, 7}, Shape{12, 3, 3, 5}}) {
    for (unsigned seed = 0; seed < 40; ++seed) {
      std::vector<float> logits = random_values(static_cast<size_t>(shape.experts), seed, 2.0f);
      std::vector<float> bias = random_values(static_cast<size_t>(shape.experts), seed + 1000, 0.3f);
      if (seed % 2 == 1) {  // coarse values: ties between experts and between groups
        for (float& l : logits) l = std::round(l);
        for (float& b : bias) b = 0.0f;
      }
      RouterParams params{shape.n_group, shape.topk_group, shape.top_k, seed % 3 != 0, seed % 4 == 0 ? 2.5f : 1.0f};
      std::vector<int32_t> ids(static_cast<size_t>(shape.top_k)), expected_ids(ids.size());
      std::vector<float> weights(ids.size()), expected_weights(ids.size());
      const Weight bias_weight = weight_of(bias, {shape.experts});
      cpu::route_token_reference(logits.data(), bias_weight, shape.experts, params, expected_ids.data(),
                                 expected_weights.data());
      cpu::route_token(logits.data(), bias_weight, shape.experts, params, ids.data(), weights.data());
      EXPECT_EQ(ids, expected_ids) << shape.experts << " experts, seed " << seed;
      EXPECT_EQ(weights, expected_weights) << shape.experts << " experts, seed " << seed;
    }
  }
}

// ---- experts ----

struct Experts {
  std::vector<std::vector<float>> storage;
  ExpertTable gate, up, down;
};

Experts random_experts(int64_t n_experts, int64_t hidden, int64_t width, unsigned seed) {
  Experts e;
  e.storage.reserve(static_cast<size_t>(3 * n_experts));
  for (int64_t i = 0; i < n_experts; ++i) {
    e.storage.push_back(random_values(static_cast<size_t>(width * hidden), seed + 3 * i, 0.3f));
    e.gate.experts.push_back(weight_of(e.storage.back(), {width, hidden}));
    e.storage.push_back(random_values(static_cast<size_t>(width * hidden), seed + 3 * i + 1, 0.3f));
    e.up.experts.push_back(weight_of(e.storage.back(), {width, hidden}));
    e.storage.push_back(random_values(static_cast<size_t>(hidden * width), seed + 3 * i + 2, 0.3f));
    e.down.experts.push_back(weight_of(e.storage.back(), {hidden, width}));
  }
  return e;
}

struct RoutingData {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Routing routing;
};

RoutingData random_routing(int64_t n_tokens, int64_t n_experts, int64_t top_k, unsigned seed) {
  RoutingData r;
  std::mt19937 generator(seed);
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<int32_t> experts(static_cast<size_t>(n_experts));
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), generator);
    r.ids.insert(r.ids.end(), experts.begin(), experts.begin() + top_k);
  }
  r.weights = random_values(static_cast<size_t>(n_tokens * top_k), seed + 1);
  r.routing.expert_ids.data = r.ids.data();
  r.routing.expert_ids.dtype = DType::I32;
  r.routing.expert_ids.shape = {n_tokens, top_k};
  r.routing.weights.data = r.weights.data();
  r.routing.weights.dtype = DType::F32;
  r.routing.weights.shape = {n_tokens, top_k};
  return r;
}

TEST(FastExperts, GroupedExpertsMatchThePerTokenDefinitionAndAreBatchInvariant) {
  const int64_t hidden = 67, width = 45, n_experts = 6, top_k = 3;
  const Experts experts = random_experts(n_experts, hidden, width, 50);
  ThreadCounts threads;
  for (int64_t n_tokens : {1, 2, 13, 70}) {
    const RoutingData routing = random_routing(n_tokens, n_experts, top_k, 60 + static_cast<unsigned>(n_tokens));
    const std::vector<float> x = random_values(static_cast<size_t>(n_tokens * hidden), 70);
    std::vector<float> expected(x.size()), actual(x.size());
    cpu::moe_experts_reference(expected.data(), x.data(), n_tokens, hidden, routing.routing, experts.gate, experts.up,
                               experts.down);
    threads.each([&](int count) {
      cpu::moe_experts(actual.data(), x.data(), n_tokens, hidden, routing.routing, experts.gate, experts.up,
                       experts.down);
      EXPECT_LT(relative_error(actual, expected), 1e-5) << n_tokens << " tokens, " << count << " threads";
      // Each token alone gives the bits it got in the batch.
      for (int64_t t = 0; t < n_tokens; t += std::max<int64_t>(1, n_tokens / 5)) {
        RoutingData one;
        one.ids.assign(routing.ids.begin() + t * top_k, routing.ids.begin() + (t + 1) * top_k);
        one.weights.assign(routing.weights.begin() + t * top_k, routing.weights.begin() + (t + 1) * top_k);
        one.routing = routing.routing;
        one.routing.expert_ids.data = one.ids.data();
        one.routing.expert_ids.shape = {1, top_k};
        one.routing.weights.data = one.weights.data();
        one.routing.weights.shape = {1, top_k};
        std::vector<float> alone(static_cast<size_t>(hidden));
        cpu::moe_experts(alone.data(), x.data() + t * hidden, 1, hidden, one.routing, experts.gate, experts.up,
                         experts.down);
        EXPECT_TRUE(same_bits(alone.data(), actual.data() + t * hidden, static_cast<size_t>(hidden)))
            << "token " << t << " of " << n_tokens << ", " << count << " threads";
      }
    });
  }
}

}  // namespace
}  // namespace glm
