// Mixture-of-experts ops: the sigmoid, group-limited, bias-corrected router
// ("noaux_tc", docs/model.md#routing) and the routed expert MLPs, each with
// the plain version of its definition kept beside it as the tests' oracle.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd_ops.h"

namespace glm::cpu {
namespace {

// Sigmoid scores (the mixing weights) and scores + correction bias (used only
// to choose) of one token. Sigmoid scores are independent per expert (unlike
// softmax), so an expert's weight does not shrink because another scored high.
void score_experts(const float* logits, const Weight& correction_bias, int64_t n_experts, float* scores,
                   float* choice) {
  for (int64_t e = 0; e < n_experts; ++e) {
    scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    choice[e] = scores[e] + weight_element(correction_bias, e);
  }
}

// The chosen experts' unbiased scores, renormalised and scaled.
void mixing_weights(const float* scores, const int32_t* expert_ids, const RouterParams& params, float* weights) {
  float total = 0.0f;
  for (int64_t k = 0; k < params.top_k; ++k) {
    weights[k] = scores[expert_ids[k]];
    total += weights[k];
  }
  for (int64_t k = 0; k < params.top_k; ++k) {
    if (params.norm_topk_prob) weights[k] /= (total + 1e-20f);
    weights[k] *= params.routed_scaling_factor;
  }
}

// a ranks before b: higher value, then lower index (the order of a stable
// descending sort).
inline bool ranks_before(float value_a, int64_t a, float value_b, int64_t b) {
  return value_a > value_b || (value_a == value_b && a < b);
}

// The best `count` of values[0, n) by ranks_before, best first, into chosen:
// one pass keeping a sorted list (count is small: top_k, topk_group).
template <class Index>
void select_best(const float* values, int64_t n, int64_t count, Index* chosen) {
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (kept == count && !ranks_before(values[i], i, values[chosen[kept - 1]], chosen[kept - 1])) continue;
    int64_t at = kept < count ? kept++ : count - 1;
    while (at > 0 && ranks_before(values[i], i, values[chosen[at - 1]], chosen[at - 1])) {
      chosen[at] = chosen[at - 1];
      --at;
    }
    chosen[at] = static_cast<Index>(i);
  }
}

}  // namespace

void route_token_reference(const float* logits, const Weight& correction_bias, int64_t n_experts,
                           const RouterParams& params, int32_t* expert_ids, float* weights) {
  std::vector<float> scores(static_cast<size_t>(n_experts)), choice(static_cast<size_t>(n_experts));
  score_experts(logits, correction_bias, n_experts, scores.data(), choice.data());

  // Group-limited routing: score each group by the sum of its two best biased
  // scores, keep the best topk_group groups; experts of the other groups can
  // never be chosen. We mask them with -inf as current transformers (5.24),
  // vLLM and DeepSeek-V3 do; mlx-lm and transformers up to 5.0 use 0, which
  // lets a pruned expert beat an eligible one whose biased score is negative.
  if (params.n_group > 1) {
    const int64_t group_size = n_experts / params.n_group;
    std::vector<float> group_scores(static_cast<size_t>(params.n_group));
    for (int64_t g = 0; g < params.n_group; ++g) {
      std::vector<float> members(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
      const int64_t best = std::min<int64_t>(2, group_size);
      std::partial_sort(members.begin(), members.begin() + best, members.end(), std::greater<float>());
      group_scores[g] = std::accumulate(members.begin(), members.begin() + best, 0.0f);
    }
    std::vector<int64_t> groups(static_cast<size_t>(params.n_group));
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(),
                     [&](int64_t a, int64_t b) { return group_scores[a] > group_scores[b]; });
    for (int64_t rank = params.topk_group; rank < params.n_group; ++rank) {
      const int64_t g = groups[rank];
      std::fill(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size, -INFINITY);
    }
  }

  // The bias steers which experts are chosen (it is tuned during training to
  // balance load), but the weights come from the unbiased scores.
  std::vector<int32_t> order(static_cast<size_t>(n_experts));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + params.top_k, order.end(), [&](int32_t a, int32_t b) {
    return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + params.top_k, expert_ids);
  mixing_weights(scores.data(), expert_ids, params, weights);
}

// The same decision in one pass per selection instead of sorts, with
// per-thread buffers that keep their capacity (routing allocates nothing in
// steady state). A group's score is (0 + best) + second, the sum the
// reference's accumulate forms.
void route_token(const float* logits, const Weight& correction_bias, int64_t n_experts, const RouterParams& params,
                 int32_t* expert_ids, float* weights) {
  thread_local std::vector<float> scores, choice, group_scores;
  thread_local std::vector<int64_t> kept_groups;
  scores.resize(static_cast<size_t>(n_experts));
  choice.resize(static_cast<size_t>(n_experts));
  score_experts(logits, correction_bias, n_experts, scores.data(), choice.data());

  if (params.n_group > 1) {
    const int64_t group_size = n_experts / params.n_group;
    group_scores.resize(static_cast<size_t>(params.n_group));
    for (int64_t g = 0; g < params.n_group; ++g) {
      int64_t best_two[2];
      const int64_t best = std::min<int64_t>(2, group_size);
      select_best(choice.data() + g * group_size, group_size, best, best_two);
      float sum = 0.0f;
      for (int64_t i = 0; i < best; ++i) sum += choice[g * group_size + best_two[i]];
      group_scores[g] = sum;
    }
    kept_groups.resize(static_cast<size_t>(params.topk_group));
    select_best(group_scores.data(), params.n_group, params.topk_group, kept_groups.data());
    for (int64_t g = 0; g < params.n_group; ++g)
      if (std::find(kept_groups.begin(), kept_groups.end(), g) == kept_groups.end())
        std::fill(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size, -INFINITY);
  }
  select_best(choice.data(), n_experts, params.top_k, expert_ids);
  mixing_weights(scores.data(), expert_ids, params, weights);
}

void route(int32_t* expert_ids, float* weights, const float* logits, int64_t n_tokens, const Weight& correction_bias,
           int64_t n_experts, const RouterParams& params) {
#pragma omp parallel for schedule(static) if (n_tokens * n_experts * 16 >= kParallelMinElements)
  for (int64_t t = 0; t < n_tokens; ++t)
    route_token(logits + t * n_experts, correction_bias, n_experts, params, expert_ids + t * params.top_k,
                weights + t * params.top_k);
}

void moe_experts_reference(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Routing& routing,
                           const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  const int64_t top_k = routing.expert_ids.dim(1);
  const int32_t* ids = routing.expert_ids.i32();
  const float* mix = routing.weights.f32();
  std::fill(out, out + n_tokens * hidden, 0.0f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    // This token's experts in ascending id: the order every path sums them in.
    std::vector<int64_t> order(static_cast<size_t>(top_k));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[t * top_k + a] < ids[t * top_k + b]; });
    for (int64_t k : order) {
      const int32_t expert = ids[t * top_k + k];
      if (!gate.holds(expert)) continue;
      const int64_t width = gate.at(expert).dim(0);
      std::vector<float> gate_out(static_cast<size_t>(width)), up_out(static_cast<size_t>(width)),
          expert_out(static_cast<size_t>(hidden));
      linear_reference(gate_out.data(), x + t * hidden, 1, gate.at(expert), nullptr);
      linear_reference(up_out.data(), x + t * hidden, 1, up.at(expert), nullptr);
      swiglu_reference(gate_out.data(), gate_out.data(), up_out.data(), width);
      linear_reference(expert_out.data(), gate_out.data(), 1, down.at(expert), nullptr);
      for (int64_t d = 0; d < hidden; ++d) out[t * hidden + d] += mix[t * top_k + k] * expert_out[d];
    }
  }
}

namespace {

// Steps of up to this many tokens run every expert's projections together
// (two parallel regions per layer, moe_experts_together); larger ones one
// expert at a time, each projection over all threads.
constexpr int64_t kTogetherTokens = 8;

// The step's (token, expert) assignments grouped by expert: a counting sort,
// tokens ascending within an expert. Buffers belong to the calling thread
// and keep their capacity, so a steady-state step allocates nothing.
struct Assignments {
  std::vector<int64_t> first;   // [held + 1] start of each expert's assignments
  std::vector<int64_t> filled;  // [held] assignments placed so far
  std::vector<int32_t> token;   // [assignments] grouped by expert, tokens ascending
  std::vector<float> weight;    // [assignments]

  void sort(const Routing& routing, int64_t n_tokens, const ExpertTable& gate) {
    const int64_t top_k = routing.expert_ids.dim(1);
    const int32_t* ids = routing.expert_ids.i32();  // [n_tokens, top_k]
    const float* mix = routing.weights.f32();       // [n_tokens, top_k]
    const int64_t first_expert = gate.first_expert;
    const int64_t held = static_cast<int64_t>(gate.experts.size());
    first.assign(static_cast<size_t>(held + 1), 0);
    filled.assign(static_cast<size_t>(held), 0);
    for (int64_t i = 0; i < n_tokens * top_k; ++i)
      if (gate.holds(ids[i])) ++first[ids[i] - first_expert + 1];
    for (int64_t e = 0; e < held; ++e) first[e + 1] += first[e];
    token.resize(static_cast<size_t>(first[held]));
    weight.resize(static_cast<size_t>(first[held]));
    for (int64_t t = 0; t < n_tokens; ++t)
      for (int64_t k = 0; k < top_k; ++k) {
        const int32_t expert = ids[t * top_k + k];
        if (!gate.holds(expert)) continue;
        const int64_t local = expert - first_expert;
        const int64_t at = first[local] + filled[local]++;
        token[at] = static_cast<int32_t>(t);
        weight[at] = mix[t * top_k + k];
      }
  }
  int64_t count(int64_t local) const { return first[local + 1] - first[local]; }
};

// out[token] += weight * source for each of the m rows of `source`. Each
// token appears once per expert, so the rows are disjoint. Small calls stay
// out of OpenMP altogether: even a region whose `if` is false costs a call
// into the runtime, and a decode step makes one per chosen expert.
void add_weighted_rows(float* out, const float* source, const int32_t* tokens, const float* weights, int64_t m,
                       int64_t hidden, const simd::ElementwiseOps* ops) {
  auto add_row = [&](int64_t i) {
    float* target = out + tokens[i] * hidden;
    const float* row = source + i * hidden;
    if (ops) {
      ops->add_scaled(target, row, weights[i], hidden);
    } else {
      for (int64_t d = 0; d < hidden; ++d) target[d] += weights[i] * row[d];
    }
  };
  if (m * hidden < kParallelMinElements) {
    for (int64_t i = 0; i < m; ++i) add_row(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) add_row(i);
}

// Small steps (decoding): every chosen expert's gate and up projections in
// one linear_many call (the token quantized once for all of them when the
// kernels take int8 activations), SwiGLU over all, every down projection in
// a second call, then the weighted outputs summed per token in ascending
// expert order. Every projection gives the bits it gives alone, so this
// agrees bit for bit with moe_experts_one_by_one.
void moe_experts_together(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Assignments& assigned,
                          const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  struct Buffers {
    std::vector<float> inputs;            // [assignments, hidden] tokens gathered per expert
    std::vector<float> gate_out, up_out;  // [assignments, width]
    std::vector<float> expert_out;        // [assignments, hidden]
    std::vector<kernels::LinearJob> jobs;
  };
  thread_local Buffers buffers;
  const int64_t held = static_cast<int64_t>(gate.experts.size());
  const int64_t assignments = assigned.first[held];
  if (assignments == 0) return;
  const int64_t width = gate.at(gate.first_expert).dim(0);
  buffers.gate_out.resize(static_cast<size_t>(assignments * width));
  buffers.up_out.resize(static_cast<size_t>(assignments * width));
  buffers.expert_out.resize(static_cast<size_t>(assignments * hidden));
  buffers.inputs.resize(static_cast<size_t>(assignments * hidden));
  auto& jobs = buffers.jobs;

  jobs.clear();
  for (int64_t local = 0; local < held; ++local) {
    const int64_t m = assigned.count(local);
    if (m == 0) continue;
    const int64_t at = assigned.first[local];
    const int64_t expert = gate.first_expert + local;
    // Every token of the step (decoding one token): x itself, shared by all experts.
    const float* inputs = x;
    if (m != n_tokens) {
      float* gathered = buffers.inputs.data() + at * hidden;
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(gathered + i * hidden, x + assigned.token[at + i] * hidden, sizeof(float) * hidden);
      inputs = gathered;
    }
    // step_tokens: the kernels chosen for the step (as moe_experts_one_by_one's).
    jobs.push_back({buffers.gate_out.data() + at * width, inputs, m, &gate.at(expert), nullptr, n_tokens});
    jobs.push_back({buffers.up_out.data() + at * width, inputs, m, &up.at(expert), nullptr, n_tokens});
  }
  cpu::linear_many(jobs.data(), static_cast<int64_t>(jobs.size()));
  swiglu(buffers.gate_out.data(), buffers.gate_out.data(), buffers.up_out.data(), assignments * width);

  jobs.clear();
  for (int64_t local = 0; local < held; ++local) {
    const int64_t m = assigned.count(local);
    if (m == 0) continue;
    const int64_t at = assigned.first[local];
    jobs.push_back({buffers.expert_out.data() + at * hidden, buffers.gate_out.data() + at * width, m,
                    &down.at(gate.first_expert + local), nullptr, n_tokens});
  }
  cpu::linear_many(jobs.data(), static_cast<int64_t>(jobs.size()));

  const simd::ElementwiseOps* ops = simd::elementwise_ops();
  for (int64_t local = 0; local < held; ++local) {
    if (assigned.count(local) == 0) continue;
    const int64_t at = assigned.first[local];
    add_weighted_rows(out, buffers.expert_out.data() + at * hidden, assigned.token.data() + at,
                      assigned.weight.data() + at, assigned.count(local), hidden, ops);
  }
}

// Larger steps (prompts): one expert after another, each projection one
// cpu::linear call that splits the expert's rows over all threads (rather
// than one expert per thread); gathering its tokens' rows is split over
// tokens when large enough.
void moe_experts_one_by_one(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Assignments& assigned,
                            const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  struct Buffers {
    std::vector<float> inputs;            // [m, hidden] one expert's tokens
    std::vector<float> gate_out, up_out;  // [m, width]
    std::vector<float> expert_out;        // [m, hidden]
  };
  thread_local Buffers buffers;
  const simd::ElementwiseOps* ops = simd::elementwise_ops();
  const int64_t held = static_cast<int64_t>(gate.experts.size());
  for (int64_t local = 0; local < held; ++local) {
    const int64_t m = assigned.count(local);
    if (m == 0) continue;
    const int32_t* tokens = assigned.token.data() + assigned.first[local];
    const int64_t expert = gate.first_expert + local;
    const int64_t width = gate.at(expert).dim(0);
    // resize() only grows the allocation (capacity is kept across calls).
    buffers.gate_out.resize(static_cast<size_t>(m * width));
    buffers.up_out.resize(static_cast<size_t>(m * width));
    buffers.expert_out.resize(static_cast<size_t>(m * hidden));

    // Every token of the step, in order: x as it is.
    const float* inputs = x;
    if (m != n_tokens) {
      buffers.inputs.resize(static_cast<size_t>(m * hidden));
      float* gathered = buffers.inputs.data();
#pragma omp parallel for schedule(static) if (m * hidden >= kParallelMinElements)
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(gathered + i * hidden, x + tokens[i] * hidden, sizeof(float) * hidden);
      inputs = gathered;
    }
    {
      const SerialBelowMinMacs small(m * width * hidden);  // each of the three projections
      // The step's token count picks the kernels (FastPrompts): an expert's
      // few tokens of a prompt still take the prompt's kernels.
      linear(buffers.gate_out.data(), inputs, m, gate.at(expert), nullptr, n_tokens);
      linear(buffers.up_out.data(), inputs, m, up.at(expert), nullptr, n_tokens);
      swiglu(buffers.gate_out.data(), buffers.gate_out.data(), buffers.up_out.data(), m * width);
      linear(buffers.expert_out.data(), buffers.gate_out.data(), m, down.at(expert), nullptr, n_tokens);
    }
    add_weighted_rows(out, buffers.expert_out.data(), tokens, assigned.weight.data() + assigned.first[local], m,
                      hidden, ops);
  }
}

}  // namespace

// Tokens are grouped by expert so each expert's weights are read once per
// batch, and experts are visited in ascending id so every token sums its
// expert outputs in the same order whatever else is in the batch (and
// whichever of the two ways above runs).
void moe_experts(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Routing& routing,
                 const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  thread_local Assignments assigned;
  std::fill(out, out + n_tokens * hidden, 0.0f);
  assigned.sort(routing, n_tokens, gate);
  if (n_tokens <= kTogetherTokens) moe_experts_together(out, x, n_tokens, hidden, assigned, gate, up, down);
  else moe_experts_one_by_one(out, x, n_tokens, hidden, assigned, gate, up, down);
}

}  // namespace glm::cpu
