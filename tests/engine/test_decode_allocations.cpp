// The decode loop allocates nothing (issue #4): this test program replaces
// the global operator new with a counting one, and checks that one bare
// Glm4MoeModel::forward decode step (after two to warm up) allocates nothing,
// and that generation on the bundled trained model, watched from its 4th
// token to its last (greedy and sampled), allocates nothing either: forward
// pass, engine bookkeeping and sampling together; on every CPU ISA and
// activation mode. Also that the reusing Engine::step gives the tokens the
// returning one gives.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "backend/cpu/kernels/kernels.h"
#include "engine/generate.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

// Every allocation of the program (all threads) goes through here; array and
// nothrow forms call it too.
void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* pointer = std::malloc(size == 0 ? 1 : size)) return pointer;
  throw std::bad_alloc();
}
void operator delete(void* pointer) noexcept { std::free(pointer); }
void operator delete(void* pointer, std::size_t) noexcept { std::free(pointer); }

namespace glm {
namespace {

const std::string kModel = std::string(GLM_SOURCE_DIR) + "/models/glm4moe-tiny-fortunes";

// Allocations of one bare forward pass of a decode token (after two to warm
// up): what the model allocates by itself.
long allocations_of_model_forward(Engine& engine) {
  PagedKvCache& cache = engine.cache();
  const int32_t sequence = cache.create_sequence();
  long counted = 0;
  StepOutput output;
  for (int32_t position = 0; position < 3; ++position) {
    StepInput input;
    input.token_ids = {100 + position};
    input.attention.block_size = cache.shape().block_size;
    input.attention.token_sequence = {0};
    input.attention.token_position = {position};
    input.attention.token_slot = cache.append(sequence, 1);
    input.attention.block_tables = {cache.block_table(sequence)};
    input.logit_rows = {0};
    allocations = 0;
    counting = position == 2;
    engine.model().forward(input, cache.layers(), output);
    counting = false;
    counted = allocations.load();
  }
  cache.release_sequence(sequence);
  return counted;
}

// Allocations from the callback for token `first` to the callback for the
// last token: every decode step but the first few (which may still grow
// buffers sized by the context seen so far) and every sampling call between.
long allocations_while_decoding(Engine& engine, GenerationRequest request, int64_t first) {
  allocations = 0;
  int64_t seen = 0;
  const GenerationResult result = generate(engine, request, [&](int32_t) {
    if (seen == first) counting = true;
    if (++seen == request.max_tokens) counting = false;
    return true;
  });
  counting = false;
  EXPECT_EQ(static_cast<int64_t>(result.tokens.size()), request.max_tokens);
  return allocations.load();
}

TEST(DecodeLoop, ForwardEngineAndSamplingAllocateNothingPerStep) {
  EngineOptions options;
  options.max_context = 512;
  Engine engine(kModel, options);
  // Every CPU path this machine can run: the reference loops (attention,
  // projections) keep grow-only buffers as the SIMD paths do.
  const cpu::kernels::Options saved = cpu::kernels::options();
  for (const cpu::kernels::Isa isa : {cpu::kernels::Isa::Reference, cpu::kernels::Isa::Avx2, cpu::kernels::Isa::Avx512})
    for (const cpu::kernels::Activations activations :
         {cpu::kernels::Activations::Exact, cpu::kernels::Activations::Fast, cpu::kernels::Activations::Int8}) {
      if (isa > cpu::kernels::supported_isa()) continue;
      if (isa == cpu::kernels::Isa::Reference && activations != cpu::kernels::Activations::Exact) continue;
      cpu::kernels::options().isa = isa;
      cpu::kernels::options().activations = activations;
      SCOPED_TRACE(std::string(cpu::kernels::isa_name(isa)) + " activations " +
                   std::to_string(static_cast<int>(activations)));
      GenerationRequest request;
      request.prompt = {12, 400, 33, 901, 7, 250, 1200, 64};
      request.max_tokens = 60;  // crosses several 16-token KV blocks
      request.ignore_eos = true;
      request.sampling.temperature = 0.0;
      EXPECT_EQ(allocations_of_model_forward(engine), 0) << "one forward pass of a decode token";
      EXPECT_EQ(allocations_while_decoding(engine, request, 3), 0) << "greedy";

      request.sampling.temperature = 0.8;
      request.sampling.top_k = 40;
      request.sampling.top_p = 0.9;
      request.sampling.min_p = 0.01;
      request.sampling.seed = 5;
      EXPECT_EQ(allocations_while_decoding(engine, request, 3), 0) << "sampled";
    }
  cpu::kernels::options() = saved;
}

TEST(DecodeLoop, ReusingStepGivesTheTokensOfFreshSteps) {
  EngineOptions options;
  options.max_context = 512;
  Engine engine(kModel, options);
  GenerationRequest request;
  request.prompt = {12, 400, 33, 901, 7, 250, 1200, 64};
  request.max_tokens = 40;
  request.ignore_eos = true;
  request.sampling.temperature = 0.0;
  const std::vector<int32_t> generated = generate(engine, request).tokens;

  const int32_t sequence = engine.cache().create_sequence();
  std::vector<float> logits = engine.step({SequenceWork{sequence, request.prompt, LogitsWanted::Last}})[0].logits;
  std::vector<int32_t> fresh;
  for (int64_t i = 0; i < request.max_tokens; ++i) {
    fresh.push_back(argmax(logits));
    logits = engine.step({SequenceWork{sequence, {fresh.back()}, LogitsWanted::Last}})[0].logits;
  }
  engine.cache().release_sequence(sequence);
  EXPECT_EQ(generated, fresh);
}

}  // namespace
}  // namespace glm
