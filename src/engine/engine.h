// The engine: a loaded model, its backend and KV cache, driven one step at a
// time over a batch plan (any mix of prompt chunks and decode tokens of any
// sequences), returning per-sequence results. Generation loops and, later,
// the scheduler and server are built on `step`.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/kv_cache.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/glm4moe.h"

namespace glm {

struct EngineOptions {
  std::string device = "cpu";  // cpu | cuda | cuda:N
  int64_t max_context = 4096;  // tokens the KV cache holds (all sequences together)
  int64_t block_size = 16;     // tokens per KV block
  TensorParallel parallel;     // this process's slice of the model
  Communicator* communicator = nullptr;
};

enum class LogitsWanted { None, Last, All };

// One sequence's share of a step: tokens appended after what the cache holds.
// With `sample` set, the next token is chosen from the last token's logits on
// the backend (so only its id crosses to the host); `logits` says which
// logits come back besides.
struct SequenceWork {
  int32_t sequence = 0;
  std::vector<int32_t> tokens;
  LogitsWanted logits = LogitsWanted::Last;
  std::optional<SamplingRequest> sample = std::nullopt;
};

struct SequenceResult {
  int32_t sequence = 0;
  int64_t rows = 0;                 // 0, 1 (Last) or tokens.size() (All)
  std::vector<float> logits;        // [rows, vocab_size]
  std::vector<float> final_hidden;  // [rows, hidden_size]
  int32_t token = -1;               // the sampled next token when the work had `sample`
};

class Engine {
 public:
  explicit Engine(const std::string& model_directory, const EngineOptions& options = {});
  ~Engine();

  const Glm4MoeConfig& config() const { return config_; }
  const GenerationDefaults& generation_defaults() const { return generation_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  Glm4MoeModel& model() { return *model_; }
  PagedKvCache& cache() { return *cache_; }
  Backend& backend() { return *backend_; }

  // Runs the model over every sequence's new tokens in one forward pass.
  std::vector<SequenceResult> step(const std::vector<SequenceWork>& plan);
  // The same into `results` (one per plan entry, in plan order), reusing the
  // storage its entries already have: a decode loop that keeps its plan and
  // results allocates nothing per step.
  void step(const std::vector<SequenceWork>& plan, std::vector<SequenceResult>& results);

 private:
  Glm4MoeConfig config_;
  GenerationDefaults generation_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Glm4MoeModel> model_;
  std::unique_ptr<PagedKvCache> cache_;
  // One step's model input and output, kept between steps: cleared, never
  // shrunk, so steady-state steps reuse their storage.
  StepInput step_input_;
  StepOutput step_output_;
  std::vector<int64_t> first_logit_row_;  // [plan entries] first row of each entry's logits
  std::vector<int64_t> sample_index_;     // [plan entries] its index among the sampled rows, or -1
};

}  // namespace glm
