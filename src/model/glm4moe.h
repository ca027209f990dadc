// The GLM-4 MoE forward pass over a ragged batch, written once in terms of
// backend ops. It never names a device: the Backend it is given decides where
// the computation runs.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/weights.h"

namespace glm {

// One step's input: any mix of prompt chunks and decode tokens of any
// sequences. `attention` says, for each token, its sequence, position and KV
// slot; `logit_rows` lists the tokens whose logits (and final hidden states)
// are computed — usually the last token of each sequence. Rows listed in
// `sample_rows` get their next token chosen on the backend (only the ids come
// back); the logits themselves come back only when `return_logits` is set.
struct StepInput {
  std::vector<int32_t> token_ids;   // [n_tokens]
  AttentionPlan attention;          // per token: sequence, position, slot
  std::vector<int32_t> logit_rows;  // [n_logit_rows] indices into token_ids
  std::vector<int32_t> sample_rows;           // [n_samples] indices into logit_rows
  std::vector<SamplingRequest> sampling;      // [n_samples] how each of them chooses
  bool return_logits = true;                  // copy logits and final hidden states to the host
};

struct StepOutput {
  std::vector<float> logits;        // [n_logit_rows, vocab_size], empty unless return_logits
  std::vector<float> final_hidden;  // [n_logit_rows, hidden_size] after the final norm (lm_head input), the same
  std::vector<int32_t> tokens;      // [n_samples] the chosen next tokens
};

// Called with every named intermediate when set (for layer-by-layer comparison
// with a reference): name, layer index (-1 outside layers), tensor.
using Tracer = std::function<void(const std::string& name, int layer, const Tensor& value)>;

class Glm4MoeModel {
 public:
  Glm4MoeModel(const Glm4MoeConfig& config, ModelWeights weights, Backend& backend);

  const Glm4MoeConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  int64_t local_kv_heads() const { return n_kv_heads_; }

  void forward(const StepInput& step, std::vector<KvLayer>& cache, StepOutput& output);
  void set_tracer(Tracer tracer) { tracer_ = std::move(tracer); }

 private:
  // With kept_rows, o_proj runs on those rows of the attention output only
  // (the last layer; none: no o_proj, an empty result).
  Tensor attention(const LayerWeights& layer, const Tensor& x, const StepInput& step, KvLayer& cache, int index,
                   const std::vector<int32_t>* kept_rows);
  Tensor swiglu_mlp(const MlpWeights& mlp, const Tensor& x);
  Tensor mixture_of_experts(const MoeWeights& moe, const Tensor& x, int index);
  void trace(const char* name, int layer, const Tensor& value) const {
    if (tracer_) tracer_(name, layer, value);
  }

  Glm4MoeConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  int64_t n_heads_;     // query heads on this rank
  int64_t n_kv_heads_;  // KV heads on this rank
  RouterParams router_params_;
  Tracer tracer_;
};

}  // namespace glm
