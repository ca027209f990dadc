// Reference mixture-of-experts ops: the sigmoid, group-limited, bias-corrected
// router ("noaux_tc", docs/model.md#routing) and the routed expert MLPs.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace glm::cpu {

void route_token(const float* logits, const Weight& correction_bias, int64_t n_experts, const RouterParams& params,
                 int32_t* expert_ids, float* weights) {
  // Sigmoid scores are independent per expert (unlike softmax), so an
  // expert's weight does not shrink because another expert scored high.
  // Per-thread buffers that keep their capacity: routing allocates nothing in steady state.
  thread_local std::vector<float> scores, choice, group_scores, members;
  thread_local std::vector<int64_t> groups;
  thread_local std::vector<int32_t> order;
  scores.resize(static_cast<size_t>(n_experts));
  choice.resize(static_cast<size_t>(n_experts));  // scores + bias: used only to choose
  for (int64_t e = 0; e < n_experts; ++e) {
    scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    choice[e] = scores[e] + weight_element(correction_bias, e);
  }

  // Group-limited routing: score each group by the sum of its two best biased
  // scores, keep the best topk_group groups; experts of the other groups can
  // never be chosen. We mask them with -inf as current transformers (5.24),
  // vLLM and DeepSeek-V3 do; mlx-lm and transformers up to 5.0 use 0, which
  // lets a pruned expert beat an eligible one whose biased score is negative.
  if (params.n_group > 1) {
    const int64_t group_size = n_experts / params.n_group;
    group_scores.resize(static_cast<size_t>(params.n_group));
    for (int64_t g = 0; g < params.n_group; ++g) {
      members.assign(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size);
      const int64_t best = std::min<int64_t>(2, group_size);
      std::partial_sort(members.begin(), members.begin() + best, members.end(), std::greater<float>());
      group_scores[g] = std::accumulate(members.begin(), members.begin() + best, 0.0f);
    }
    groups.resize(static_cast<size_t>(params.n_group));
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
  order.resize(static_cast<size_t>(n_experts));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + params.top_k, order.end(), [&](int32_t a, int32_t b) {
    return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
  });
  float total = 0.0f;
  for (int64_t k = 0; k < params.top_k; ++k) {
    expert_ids[k] = order[k];
    weights[k] = scores[order[k]];
    total += weights[k];
  }
  for (int64_t k = 0; k < params.top_k; ++k) {
    if (params.norm_topk_prob) weights[k] /= (total + 1e-20f);
    weights[k] *= params.routed_scaling_factor;
  }
}

// Tokens are grouped by expert so each expert's weights are read once per
// batch, and experts are visited in ascending id so every token sums its
// expert outputs in the same order whatever else is in the batch. Each
// expert's projections are one cpu::linear call that splits the expert's
// rows over all threads (a decode step's 8 experts run one after another,
// each on every core, rather than one expert per thread). The grouping and
// the expert activations live in per-thread buffers that keep their
// capacity, so a steady-state step allocates nothing.
void moe_experts(float* out, const float* x, int64_t n_tokens, int64_t hidden, const Routing& routing,
                 const ExpertTable& gate, const ExpertTable& up, const ExpertTable& down) {
  const int64_t top_k = routing.expert_ids.dim(1);
  const int32_t* ids = routing.expert_ids.i32();
  const float* mix = routing.weights.f32();
  std::fill(out, out + n_tokens * hidden, 0.0f);

  struct Assignment {
    int64_t token;
    float weight;
  };
  struct Buffers {
    std::vector<std::vector<Assignment>> per_expert;
    std::vector<float> inputs, gate_out, up_out, expert_out;
  };
  thread_local Buffers buffers;
  const int64_t first = gate.first_expert;
  const int64_t held = static_cast<int64_t>(gate.experts.size());
  auto& per_expert = buffers.per_expert;
  if (static_cast<int64_t>(per_expert.size()) < held) per_expert.resize(static_cast<size_t>(held));
  for (auto& assigned : per_expert) assigned.clear();
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t k = 0; k < top_k; ++k)
      if (gate.holds(ids[t * top_k + k])) per_expert[ids[t * top_k + k] - first].push_back({t, mix[t * top_k + k]});

  auto& inputs = buffers.inputs;
  auto& gate_out = buffers.gate_out;
  auto& up_out = buffers.up_out;
  auto& expert_out = buffers.expert_out;
  for (int64_t local = 0; local < held; ++local) {
    const auto& assigned = per_expert[local];
    if (assigned.empty()) continue;
    const int64_t expert = first + local;
    const int64_t m = static_cast<int64_t>(assigned.size());
    const int64_t width = gate.at(expert).dim(0);
    // resize() only grows the allocation (capacity is kept across calls).
    inputs.resize(static_cast<size_t>(m * hidden));
    for (int64_t i = 0; i < m; ++i)
      std::copy(x + assigned[i].token * hidden, x + (assigned[i].token + 1) * hidden, inputs.begin() + i * hidden);
    gate_out.resize(static_cast<size_t>(m * width));
    up_out.resize(static_cast<size_t>(m * width));
    expert_out.resize(static_cast<size_t>(m * hidden));
    linear(gate_out.data(), inputs.data(), m, gate.at(expert), nullptr);
    linear(up_out.data(), inputs.data(), m, up.at(expert), nullptr);
    swiglu(gate_out.data(), gate_out.data(), up_out.data(), m * width);
    linear(expert_out.data(), gate_out.data(), m, down.at(expert), nullptr);
    for (int64_t i = 0; i < m; ++i) {
      float* target = out + assigned[i].token * hidden;
      const float* source = expert_out.data() + i * hidden;
      for (int64_t d = 0; d < hidden; ++d) target[d] += assigned[i].weight * source[d];
    }
  }
}

}  // namespace glm::cpu
