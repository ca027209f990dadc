// Loading a checkpoint directory into an engine, and turning a batch plan into
// the model's StepInput (token ids, positions, KV slots, block tables).
#include "engine/engine.h"

#include <map>

namespace glm {

Engine::Engine(const std::string& model_directory, const EngineOptions& options) {
  config_ = load_config(model_directory, &generation_);
  checkpoint_ = std::make_unique<Checkpoint>(model_directory);
  backend_ = make_backend(options.device, options.communicator);
  ModelWeights weights = bind_weights(*checkpoint_, config_, options.parallel);
  place_weights(weights, *backend_);
  model_ = std::make_unique<Glm4MoeModel>(config_, std::move(weights), *backend_);
  KvCacheShape shape;
  shape.n_layers = config_.num_hidden_layers;
  shape.n_kv_heads = model_->local_kv_heads();
  shape.head_dim = config_.head_dim;
  shape.block_size = options.block_size;
  shape.n_blocks = (options.max_context + options.block_size - 1) / options.block_size;
  cache_ = std::make_unique<PagedKvCache>(*backend_, shape);
}

Engine::~Engine() = default;

std::vector<SequenceResult> Engine::step(const std::vector<SequenceWork>& plan) {
  StepInput input;
  input.attention.block_size = cache_->shape().block_size;
  std::map<int32_t, int32_t> table_index;  // sequence id -> index into block_tables
  std::vector<SequenceResult> results;
  std::vector<std::pair<size_t, int64_t>> result_rows;  // (result, first logit row)

  for (const SequenceWork& work : plan) {
    GLM_CHECK(!work.tokens.empty(), "sequence ", work.sequence, " has no tokens in this step");
    GLM_CHECK(!table_index.count(work.sequence), "sequence ", work.sequence, " appears twice in one step");
    for (int32_t id : work.tokens)
      GLM_CHECK(id >= 0 && id < config_.vocab_size, "token id ", id, " is outside the vocabulary (vocab_size ",
                config_.vocab_size, ")");
    const int64_t start = cache_->length(work.sequence);
    GLM_CHECK(start + static_cast<int64_t>(work.tokens.size()) <= config_.max_position_embeddings,
              "sequence ", work.sequence, " would reach ", start + work.tokens.size(),
              " tokens, past max_position_embeddings ", config_.max_position_embeddings);
    const std::vector<int64_t> slots = cache_->append(work.sequence, static_cast<int64_t>(work.tokens.size()));
    const int32_t table = static_cast<int32_t>(table_index.size());
    table_index[work.sequence] = table;

    SequenceResult result;
    result.sequence = work.sequence;
    const int64_t first_logit_row = static_cast<int64_t>(input.logit_rows.size());
    for (size_t i = 0; i < work.tokens.size(); ++i) {
      const int32_t token_index = static_cast<int32_t>(input.token_ids.size());
      input.token_ids.push_back(work.tokens[i]);
      input.attention.token_sequence.push_back(table);
      input.attention.token_position.push_back(static_cast<int32_t>(start + static_cast<int64_t>(i)));
      input.attention.token_slot.push_back(slots[i]);
      const bool last = i + 1 == work.tokens.size();
      if (work.logits == LogitsWanted::All || (work.logits == LogitsWanted::Last && last)) {
        input.logit_rows.push_back(token_index);
        ++result.rows;
      }
    }
    result_rows.emplace_back(results.size(), first_logit_row);
    results.push_back(std::move(result));
  }
  // Block tables are read after every append so they include this step's blocks.
  for (const SequenceWork& work : plan) input.attention.block_tables.push_back(cache_->block_table(work.sequence));

  StepOutput output;
  model_->forward(input, cache_->layers(), output);

  const int64_t vocab = config_.vocab_size, hidden = config_.hidden_size;
  for (auto [index, first_row] : result_rows) {
    SequenceResult& result = results[index];
    result.logits.assign(output.logits.begin() + first_row * vocab,
                         output.logits.begin() + (first_row + result.rows) * vocab);
    result.final_hidden.assign(output.final_hidden.begin() + first_row * hidden,
                               output.final_hidden.begin() + (first_row + result.rows) * hidden);
  }
  return results;
}

}  // namespace glm
