// The GLM-4 MoE forward pass, step by step as docs/model.md describes it:
//
//   h = embed(tokens)
//   for each layer:
//     h = h + o_proj(attention(rotary(qk_norm(q, k)), v))      (all-reduce)
//     h = h + (dense SwiGLU MLP | routed experts + shared experts)(norm(h))  (all-reduce)
//   logits = lm_head(norm(h))
//
// Only the rows that need logits leave the last layer: its attention writes
// every token's k and v to the cache (later steps read them), but o_proj, the
// residual and the feed-forward block run on the logit rows alone, since
// nothing reads the other rows' outputs. A 512-token prompt asking for its
// last token's logits skips 511 rows of the last layer's o_proj and experts:
// 1/L of a prompt's projections on an L-layer model. llama.cpp skips the
// same rows of the last feed-forward block (its o_proj keeps them), so a
// side by side on a model of few layers compares like work.
//
// Shapes: n = tokens in the step, H = hidden_size, D = head_dim,
// Nq / Nkv = query / KV heads held by this rank.
#include "model/glm4moe.h"

#include <cmath>

namespace glm {

Glm4MoeModel::Glm4MoeModel(const Glm4MoeConfig& config, ModelWeights weights, Backend& backend)
    : config_(config), weights_(std::move(weights)), backend_(backend) {
  n_heads_ = config_.num_attention_heads / weights_.parallel.world_size;
  n_kv_heads_ = config_.num_key_value_heads / weights_.parallel.world_size;
  router_params_.n_group = config_.n_group;
  router_params_.topk_group = config_.topk_group;
  router_params_.top_k = config_.num_experts_per_tok;
  router_params_.norm_topk_prob = config_.norm_topk_prob;
  router_params_.routed_scaling_factor = static_cast<float>(config_.routed_scaling_factor);
}

void Glm4MoeModel::forward(const StepInput& step, std::vector<KvLayer>& cache, StepOutput& output) {
  const int64_t n = static_cast<int64_t>(step.token_ids.size());
  const int64_t H = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  GLM_CHECK(n > 0, "a step needs at least one token");
  GLM_CHECK(cache.size() == weights_.layers.size(), "internal error: KV cache has ", cache.size(), " layers");
  backend_.reset_scratch();

  Tensor hidden = backend_.scratch({n, H});  // [n, H] the residual stream
  backend_.embedding(hidden, weights_.embed_tokens, step.token_ids);
  trace("embedding", -1, hidden);

  // Each residual add is fused with the RMSNorm that reads its result (the
  // next sublayer's input norm): add_rms_norm(h, normed, delta, gamma) is
  // h = h + delta; normed = RMSNorm(h) * gamma.
  Tensor normed = backend_.scratch({n, H});  // [n, H]
  if (!weights_.layers.empty()) backend_.rms_norm(normed, hidden, weights_.layers.front().input_norm, eps);

  // The rows that leave the last layer: all of them when every token wants
  // logits (decode steps, LogitsWanted::All), else the logit rows, whose
  // residual and normed rows the last layer then keeps here (allocated before
  // the layer's scratch mark, so that they outlive its rewind).
  const int64_t rows = static_cast<int64_t>(step.logit_rows.size());
  bool every_row = rows == n;
  for (int64_t i = 0; every_row && i < rows; ++i) every_row = step.logit_rows[i] == i;
  const bool trimmed = !every_row && !weights_.layers.empty();  // the last layer keeps only the logit rows
  Tensor kept_hidden, kept_normed;  // [rows, H] when trimmed
  if (trimmed && rows > 0) {
    kept_hidden = backend_.scratch({rows, H});
    kept_normed = backend_.scratch({rows, H});
  }

  for (size_t index = 0; index < weights_.layers.size(); ++index) {
    const LayerWeights& layer = weights_.layers[index];
    const int layer_index = static_cast<int>(index);
    const bool trim_here = trimmed && index + 1 == weights_.layers.size();
    const Backend::ScratchMark layer_start = backend_.scratch_mark();

    // In the last layer, when trimmed: k and v of every token go to the
    // cache, but no row's output is wanted past it except the logit rows',
    // and with none, nothing is.
    Tensor attention_out = attention(layer, normed, step, cache[index], layer_index,
                                     trim_here ? &step.logit_rows : nullptr);  // [n or rows, H]
    if (trim_here) {
      if (rows == 0) break;
      backend_.gather_rows(kept_hidden, hidden, step.logit_rows);
      hidden = kept_hidden;  // [rows, H] from here on
      normed = kept_normed;  // [rows, H]
    }
    backend_.add_rms_norm(hidden, normed, attention_out, layer.post_attention_norm, eps);
    trace("after_attention", layer_index, hidden);

    Tensor ffn_out = layer.is_moe ? mixture_of_experts(layer.moe, normed, layer_index)  // [n or rows, H]
                                  : swiglu_mlp(layer.dense, normed);
    backend_.all_reduce(ffn_out);
    if (index + 1 < weights_.layers.size()) {
      backend_.add_rms_norm(hidden, normed, ffn_out, weights_.layers[index + 1].input_norm, eps);
    } else {
      backend_.add(hidden, hidden, ffn_out);
    }
    trace("layer_output", layer_index, hidden);
    backend_.scratch_rewind(layer_start);  // the layer's activations are dead; the next layer reuses their memory
  }

  // Only the rows that need logits go through the final norm and lm_head
  // (when the last layer kept only them, `hidden` holds them in order).
  const int64_t samples = static_cast<int64_t>(step.sample_rows.size());
  GLM_CHECK(step.sampling.size() == step.sample_rows.size(), "internal error: ", samples, " sample rows with ",
            step.sampling.size(), " sampling requests");
  output.logits.clear();
  output.final_hidden.clear();
  output.tokens.clear();
  if (rows == 0) return;
  Tensor selected = backend_.scratch({rows, H});  // [rows, H]
  if (trimmed) {
    backend_.rms_norm(selected, hidden, weights_.final_norm, eps);
  } else {
    backend_.gather_rows(selected, hidden, step.logit_rows);
    backend_.rms_norm(selected, selected, weights_.final_norm, eps);
  }
  trace("final_norm", -1, selected);
  Tensor logits = backend_.scratch({rows, config_.vocab_size});  // [rows, vocab]
  backend_.linear(logits, selected, weights_.lm_head, nullptr);
  if (samples > 0) {
    // Sampling every row in order (a decode batch) reads the logits in
    // place; otherwise the sampled rows are gathered first.
    bool every_row = samples == rows;
    for (int64_t i = 0; every_row && i < samples; ++i) every_row = step.sample_rows[i] == i;
    const Tensor* sampled = &logits;  // [samples, vocab]
    Tensor gathered;
    if (!every_row) {
      for (int32_t row : step.sample_rows)
        GLM_CHECK(row >= 0 && row < rows, "internal error: sample row ", row, " of ", rows, " logit rows");
      gathered = backend_.scratch({samples, config_.vocab_size});  // [samples, vocab]
      backend_.gather_rows(gathered, logits, step.sample_rows);
      sampled = &gathered;
    }
    output.tokens.resize(static_cast<size_t>(samples));
    backend_.sample(output.tokens, *sampled, step.sampling);
  }
  if (!step.return_logits) return;
  output.final_hidden.resize(static_cast<size_t>(rows * H));
  output.logits.resize(static_cast<size_t>(rows * config_.vocab_size));
  backend_.copy_to_host(output.final_hidden, selected);
  backend_.copy_to_host(output.logits, logits);
}

// Grouped-query attention with GLM's details: q/k/v bias, per-head RMSNorm on
// q and k before rotary, rotary on only the first rotary_dim dims of a head.
Tensor Glm4MoeModel::attention(const LayerWeights& layer, const Tensor& x, const StepInput& step, KvLayer& cache,
                               int index, const std::vector<int32_t>* kept_rows) {
  const AttentionWeights& w = layer.attention;
  const int64_t n = x.dim(0), D = config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  auto bias = [](const Weight& b) { return b.present() ? &b : nullptr; };

  Tensor q = backend_.scratch({n, n_heads_ * D});     // [n, Nq * D]
  Tensor k = backend_.scratch({n, n_kv_heads_ * D});  // [n, Nkv * D]
  Tensor v = backend_.scratch({n, n_kv_heads_ * D});  // [n, Nkv * D]
  const LinearOutput projections[] = {{q, &w.q_proj, bias(w.q_bias)},
                                      {k, &w.k_proj, bias(w.k_bias)},
                                      {v, &w.v_proj, bias(w.v_bias)}};
  backend_.linears(x, projections);  // q, k and v from one read of x
  q = q.reshaped({n, n_heads_, D});     // [n, Nq, D]
  k = k.reshaped({n, n_kv_heads_, D});  // [n, Nkv, D]
  v = v.reshaped({n, n_kv_heads_, D});  // [n, Nkv, D]

  // With use_qk_norm, each head's q and k vector is RMS-normalised on its
  // own before the rotation; the rotation covers the first rotary_dim dims,
  // at each token's position. The new k and v then go to their KV-cache
  // slots, and each query attends over its sequence's cache, softmax scaled
  // by 1/sqrt(head_dim). One op for the three steps (Backend::rotary_attention
  // spells them out): a GPU does them in its decode attention kernel.
  const bool qk_norm = config_.use_qk_norm;
  Tensor context = backend_.scratch({n, n_heads_, D});  // [n, Nq, D]
  backend_.rotary_attention(context, q, k, v, qk_norm ? &w.q_norm : nullptr, qk_norm ? &w.k_norm : nullptr, eps,
                            config_.rotary_dim(), config_.rope_theta, cache, step.attention,
                            1.0f / std::sqrt(static_cast<float>(D)));

  Tensor attended = context.reshaped({n, n_heads_ * D});  // [n, Nq * D]
  const int64_t out_rows = kept_rows ? static_cast<int64_t>(kept_rows->size()) : n;
  if (out_rows == 0) return {};
  if (kept_rows) {  // the last layer: o_proj for the kept rows only
    Tensor kept = backend_.scratch({out_rows, n_heads_ * D});  // [rows, Nq * D]
    backend_.gather_rows(kept, attended, *kept_rows);
    attended = kept;
  }
  Tensor out = backend_.scratch({out_rows, config_.hidden_size});  // [rows, H] partial sum over this rank's heads
  backend_.linear(out, attended, w.o_proj, nullptr);
  backend_.all_reduce(out);
  trace("attention_output", index, out);
  return out;
}

Tensor Glm4MoeModel::swiglu_mlp(const MlpWeights& mlp, const Tensor& x) {
  const int64_t n = x.dim(0), width = mlp.gate_proj.dim(0);
  Tensor gate = backend_.scratch({n, width});  // [n, width]
  Tensor up = backend_.scratch({n, width});    // [n, width]
  const LinearOutput projections[] = {{gate, &mlp.gate_proj}, {up, &mlp.up_proj}};
  backend_.linears(x, projections);  // gate and up from one read of x
  backend_.swiglu(gate, gate, up);
  Tensor out = backend_.scratch({n, config_.hidden_size});  // [n, H]
  backend_.linear(out, gate, mlp.down_proj, nullptr);
  return out;
}

// Routed experts chosen per token by the router, plus the always-on shared
// experts (docs/model.md#routing).
Tensor Glm4MoeModel::mixture_of_experts(const MoeWeights& moe, const Tensor& x, int index) {
  const int64_t n = x.dim(0), top_k = config_.num_experts_per_tok;
  Tensor router_logits = backend_.scratch({n, config_.n_routed_experts});  // [n, E] f32
  backend_.linear(router_logits, x, moe.router, nullptr);

  Routing routing;
  routing.expert_ids = backend_.scratch({n, top_k}, DType::I32);  // [n, top_k]
  routing.weights = backend_.scratch({n, top_k});                 // [n, top_k]
  backend_.route(routing, router_logits, moe.correction_bias, router_params_);
  trace("routing_weights", index, routing.weights);

  // routed experts + the shared expert's SwiGLU MLP, in one op (a device
  // runs the shared expert as one more expert of the same kernels).
  Tensor out = backend_.scratch({n, config_.hidden_size});  // [n, H]
  const SharedExpert shared{&moe.shared.gate_proj, &moe.shared.up_proj, &moe.shared.down_proj};
  backend_.moe_experts_and_shared(out, x, routing, moe.gate, moe.up, moe.down, shared);
  return out;
}

}  // namespace glm
