// Visiting every weight of the model once to place it on a backend.
#include "backend/backend.h"
#include "model/weights.h"

namespace glm {
namespace {

void place(Weight& weight, Backend& backend) {
  if (weight.present()) weight = backend.place(weight);
}

void place_mlp(MlpWeights& mlp, Backend& backend) {
  for (Weight* w : {&mlp.gate_proj, &mlp.up_proj, &mlp.down_proj}) place(*w, backend);
}

void place_layer(LayerWeights& layer, Backend& backend) {
  AttentionWeights& a = layer.attention;
  for (Weight* w : {&layer.input_norm, &layer.post_attention_norm, &a.q_proj, &a.k_proj, &a.v_proj, &a.q_bias,
                    &a.k_bias, &a.v_bias, &a.q_norm, &a.k_norm, &a.o_proj})
    place(*w, backend);
  if (!layer.is_moe) {
    place_mlp(layer.dense, backend);
    return;
  }
  place(layer.moe.router, backend);
  place(layer.moe.correction_bias, backend);
  for (ExpertTable* table : {&layer.moe.gate, &layer.moe.up, &layer.moe.down})
    for (Weight& expert : table->experts) place(expert, backend);
  place_mlp(layer.moe.shared, backend);
}

}  // namespace

void place_weights(ModelWeights& weights, Backend& backend) {
  const bool tied = weights.lm_head.view.data == weights.embed_tokens.view.data;
  place(weights.embed_tokens, backend);
  for (LayerWeights& layer : weights.layers) place_layer(layer, backend);
  place(weights.final_norm, backend);
  if (tied) {
    weights.lm_head = weights.embed_tokens;  // one copy serves both
  } else {
    place(weights.lm_head, backend);
  }
  // The MTP layer is not run yet: it stays where the loader bound it.
}

}  // namespace glm
