// Loading a checkpoint directory into an engine, and turning a batch plan into
// the model's StepInput (token ids, positions, KV slots, block tables).
#include "engine/engine.h"

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
  std::vector<SequenceResult> results;
  step(plan, results);
  return results;
}

void Engine::step(const std::vector<SequenceWork>& plan, std::vector<SequenceResult>& results) {
  StepInput& input = step_input_;
  AttentionPlan& attention = input.attention;
  input.token_ids.clear();
  input.logit_rows.clear();
  input.sample_rows.clear();
  input.sampling.clear();
  input.return_logits = false;
  attention.block_size = cache_->shape().block_size;
  attention.token_sequence.clear();
  attention.token_position.clear();
  attention.token_slot.clear();
  first_logit_row_.clear();
  sample_index_.clear();
  results.resize(plan.size());

  for (size_t index = 0; index < plan.size(); ++index) {
    const SequenceWork& work = plan[index];
    GLM_CHECK(!work.tokens.empty(), "sequence ", work.sequence, " has no tokens in this step");
    for (size_t earlier = 0; earlier < index; ++earlier)
      GLM_CHECK(plan[earlier].sequence != work.sequence, "sequence ", work.sequence, " appears twice in one step");
    for (int32_t id : work.tokens)
      GLM_CHECK(id >= 0 && id < config_.vocab_size, "token id ", id, " is outside the vocabulary (vocab_size ",
                config_.vocab_size, ")");
    const int64_t start = cache_->length(work.sequence);
    GLM_CHECK(start + static_cast<int64_t>(work.tokens.size()) <= config_.max_position_embeddings,
              "sequence ", work.sequence, " would reach ", start + work.tokens.size(),
              " tokens, past max_position_embeddings ", config_.max_position_embeddings);
    // The sequence's block table is entry `index` of the plan's tables.
    cache_->append(work.sequence, static_cast<int64_t>(work.tokens.size()), attention.token_slot);

    SequenceResult& result = results[index];
    result.sequence = work.sequence;
    result.rows = 0;
    result.token = -1;
    first_logit_row_.push_back(static_cast<int64_t>(input.logit_rows.size()));
    sample_index_.push_back(-1);
    input.return_logits = input.return_logits || work.logits != LogitsWanted::None;
    for (size_t i = 0; i < work.tokens.size(); ++i) {
      const int32_t token_index = static_cast<int32_t>(input.token_ids.size());
      input.token_ids.push_back(work.tokens[i]);
      attention.token_sequence.push_back(static_cast<int32_t>(index));
      attention.token_position.push_back(static_cast<int32_t>(start + static_cast<int64_t>(i)));
      const bool last = i + 1 == work.tokens.size();
      const bool returned = work.logits == LogitsWanted::All || (work.logits == LogitsWanted::Last && last);
      const bool sampled = last && work.sample.has_value();
      // A sampled row goes through lm_head even when its logits are not returned.
      if (returned || sampled) input.logit_rows.push_back(token_index);
      if (returned) ++result.rows;
      if (sampled) {
        sample_index_.back() = static_cast<int64_t>(input.sample_rows.size());
        input.sample_rows.push_back(static_cast<int32_t>(input.logit_rows.size() - 1));
        input.sampling.push_back(*work.sample);
      }
    }
  }
  // Block tables are read after every append so they include this step's
  // blocks. Each keeps room for the whole cache, so a growing sequence never
  // reallocates its copy.
  attention.block_tables.resize(plan.size());
  for (size_t index = 0; index < plan.size(); ++index) {
    std::vector<int32_t>& table = attention.block_tables[index];
    table.reserve(static_cast<size_t>(cache_->shape().n_blocks));
    const std::vector<int32_t>& blocks = cache_->block_table(plan[index].sequence);
    table.assign(blocks.begin(), blocks.end());
  }

  model_->forward(input, cache_->layers(), step_output_);

  const int64_t vocab = config_.vocab_size, hidden = config_.hidden_size;
  const StepOutput& output = step_output_;
  for (size_t index = 0; index < plan.size(); ++index) {
    SequenceResult& result = results[index];
    if (sample_index_[index] >= 0) result.token = output.tokens[static_cast<size_t>(sample_index_[index])];
    if (result.rows == 0) {  // nothing returned (a sampled-only row is not handed back)
      result.logits.clear();
      result.final_hidden.clear();
      continue;
    }
    const int64_t first_row = first_logit_row_[index];
    result.logits.assign(output.logits.begin() + first_row * vocab,
                         output.logits.begin() + (first_row + result.rows) * vocab);
    result.final_hidden.assign(output.final_hidden.begin() + first_row * hidden,
                               output.final_hidden.begin() + (first_row + result.rows) * hidden);
  }
}

}  // namespace glm
