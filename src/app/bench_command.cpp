// The benchmark: memory made warm first (every mapped page touched), timed
// prompt steps, then the yardsticks measured in the same run (a read-bandwidth
// kernel and, on the CPU, the FMA / VDPBF16PS / VPDPBUSD peaks; on a device,
// its copy bandwidth), then decode steps. Prompts and decode steps are split
// into components with the model's tracer (attention incl. its projections
// and KV-cache reads, dense MLP, MoE, lm_head): a prompt's components with
// the FLOPs they do and the rate that implies, a decode step's with the bytes
// they read per token and the bandwidth that implies.
#include "app/bench_command.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "backend/cpu/peak.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/sampling.h"
#include "model/synthetic.h"

namespace glm::app {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string format_number(double value) {  // shortest form: 0.95, not 0.950000
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

// Best of several passes summing a 1 GiB buffer with all threads: the read
// bandwidth the weights could at best stream at.
double measure_read_bandwidth() {
  const size_t count = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buffer(count);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; ++i) buffer[i] = i * 2654435761u;
  double best = 0.0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = Clock::now();
    uint64_t total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (size_t i = 0; i < count; i += 8) {
      uint64_t lane = 0;
      for (size_t j = 0; j < 8; ++j) lane += buffer[i + j];
      total += lane;
    }
    volatile uint64_t sink = total;
    (void)sink;
    best = std::max(best, static_cast<double>(count * sizeof(uint64_t)) / seconds_since(start));
  }
  return best;
}

struct Usage {
  long max_resident_kib = 0;
  long major_faults = 0;
};
Usage usage() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return {r.ru_maxrss, r.ru_majflt};
}

// Bytes of mapped files this process maps with 2 MiB page-table entries
// (FilePmdMapped in /proc/self/smaps_rollup; -1 where there is none). Decode
// reads the weights ~2% faster so mapped than in 4 KiB pages (MappedFile).
double file_bytes_in_2mib_pages() {
  std::FILE* rollup = std::fopen("/proc/self/smaps_rollup", "r");
  if (!rollup) return -1;
  double bytes = -1;
  char line[256];
  long long kib = 0;
  while (std::fgets(line, sizeof line, rollup))
    if (std::sscanf(line, "FilePmdMapped: %lld kB", &kib) == 1) bytes = static_cast<double>(kib) * 1024.0;
  std::fclose(rollup);
  return bytes;
}

// Bytes one decode step reads, by component (weights of this rank).
struct ComponentBytes {
  double attention = 0, dense_mlp = 0, experts = 0, lm_head = 0;
  double kv_cache_per_context_token = 0;
};

ComponentBytes bytes_per_token(const Glm4MoeConfig& config, const ModelWeights& weights) {
  ComponentBytes bytes;
  for (const LayerWeights& layer : weights.layers) {
    const AttentionWeights& a = layer.attention;
    for (const Weight* w : {&layer.input_norm, &a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &a.q_bias, &a.k_bias,
                            &a.v_bias, &a.q_norm, &a.k_norm})
      if (w->present()) bytes.attention += static_cast<double>(w->nbytes());
    if (!layer.is_moe) {
      for (const Weight* w : {&layer.post_attention_norm, &layer.dense.gate_proj, &layer.dense.up_proj,
                              &layer.dense.down_proj})
        bytes.dense_mlp += static_cast<double>(w->nbytes());
      continue;
    }
    const MoeWeights& m = layer.moe;
    double expert_bytes = 0;
    for (size_t e = 0; e < m.gate.experts.size(); ++e)
      expert_bytes += static_cast<double>(m.gate.experts[e].nbytes() + m.up.experts[e].nbytes() +
                                          m.down.experts[e].nbytes());
    expert_bytes /= static_cast<double>(std::max<size_t>(1, m.gate.experts.size()));
    bytes.experts += static_cast<double>(layer.post_attention_norm.nbytes() + m.router.nbytes() +
                                         m.correction_bias.nbytes() + m.shared.gate_proj.nbytes() +
                                         m.shared.up_proj.nbytes() + m.shared.down_proj.nbytes()) +
                     static_cast<double>(config.num_experts_per_tok) * expert_bytes;
  }
  bytes.lm_head = static_cast<double>(weights.lm_head.nbytes() + weights.final_norm.nbytes());
  // The CPU backend keeps K and V in f32.
  bytes.kv_cache_per_context_token = static_cast<double>(weights.layers.size()) * 2.0 *
                                     static_cast<double>(config.num_key_value_heads / weights.parallel.world_size) *
                                     static_cast<double>(config.head_dim) * sizeof(float);
  return bytes;
}

// FLOPs of a prompt of n tokens (from position 0) by component, this rank's
// weights: 2 per multiply-add of the projections; the attention core 4 x
// head_dim x query heads per (query, key) pair, causal (n (n + 1) / 2 pairs);
// lm_head for the last token only (the only row that asks for logits). The
// last layer's o_proj and feed-forward block count that one row too: the
// model runs them on the logit rows only (model/glm4moe.cpp), so these are
// the FLOPs the prompt does, not 2 x active parameters x n.
struct ComponentFlops {
  double attention = 0, dense_mlp = 0, moe = 0, head = 0;
  double attention_core = 0;  // the part of `attention` that is not projections
  double projections() const { return attention - attention_core + dense_mlp + moe; }
};

ComponentFlops prompt_flops(const Glm4MoeConfig& config, const ModelWeights& weights, int64_t n) {
  auto numel = [](const Weight& w) { return w.present() ? static_cast<double>(shape_numel(w.shape)) : 0.0; };
  const double tokens = static_cast<double>(n), pairs = tokens * (tokens + 1) / 2;
  ComponentFlops flops;
  for (size_t index = 0; index < weights.layers.size(); ++index) {
    const LayerWeights& layer = weights.layers[index];
    const double kept = index + 1 == weights.layers.size() ? 1.0 : tokens;  // rows past the attention core
    const AttentionWeights& a = layer.attention;
    const double query_heads = static_cast<double>(a.q_proj.dim(0) / config.head_dim);
    const double core = 4 * static_cast<double>(config.head_dim) * query_heads * pairs;
    flops.attention += 2 * tokens * (numel(a.q_proj) + numel(a.k_proj) + numel(a.v_proj)) + 2 * kept * numel(a.o_proj) + core;
    flops.attention_core += core;
    if (!layer.is_moe) {
      flops.dense_mlp += 2 * kept * (numel(layer.dense.gate_proj) + numel(layer.dense.up_proj) + numel(layer.dense.down_proj));
      continue;
    }
    const MoeWeights& m = layer.moe;
    const double expert = m.gate.experts.empty() ? 0.0 : numel(m.gate.experts[0]) + numel(m.up.experts[0]) + numel(m.down.experts[0]);
    flops.moe += 2 * kept * (numel(m.router) + numel(m.shared.gate_proj) + numel(m.shared.up_proj) + numel(m.shared.down_proj) +
                             static_cast<double>(config.num_experts_per_tok) * expert);
  }
  flops.head = 2 * numel(weights.lm_head);
  return flops;
}

// Accumulates wall time between the model's trace points.
struct ComponentClock {
  double attention = 0, dense_mlp = 0, moe = 0, head = 0, total = 0;
  Clock::time_point mark;
  const Glm4MoeConfig* config = nullptr;

  // Each mark waits for the device, so asynchronous backends (CUDA) charge
  // time to the component that issued the work; it adds one synchronisation
  // per mark, so the per-component run is slower than an unmarked one.
  void attach(Glm4MoeModel& model, Backend& backend) {
    model.set_tracer([this, &backend](const std::string& name, int layer, const Tensor&) {
      backend.synchronize();
      const auto now = Clock::now();
      const double elapsed = std::chrono::duration<double>(now - mark).count();
      if (name == "embedding") {
        mark = now;
      } else if (name == "after_attention") {
        attention += elapsed;
        mark = now;
      } else if (name == "layer_output") {
        (config->layer_is_moe(layer) ? moe : dense_mlp) += elapsed;
        mark = now;
      } else if (name == "final_norm") {
        mark = now;
      }
    });
  }
};

}  // namespace

int run_bench(const BenchOptions& options) {
  if (options.threads > 0) omp_set_num_threads(options.threads);
  GLM_CHECK(options.model.empty() != options.synthetic.empty(), "give exactly one of --model and --synthetic");
  check_sampling_request(SamplingRequest{options.sampling}, 1);  // bad settings fail before any loading
  std::string directory = options.model;
  if (!options.synthetic.empty()) {
    SyntheticOptions synthetic;
    synthetic.shape = options.synthetic;
    synthetic.layers = options.layers;
    synthetic.dtype = options.dtype;
    synthetic.group_size = options.group_size;
    synthetic.directory = options.synthetic_dir;
    directory = make_synthetic_checkpoint(synthetic);
  }
  const int64_t max_prompt = *std::max_element(options.prompt_tokens.begin(), options.prompt_tokens.end());
  const int64_t max_context = *std::max_element(options.contexts.begin(), options.contexts.end());
  EngineOptions engine_options;
  // Decoding runs twice (unmarked, then marked), three times with --profile.
  engine_options.max_context = std::max(max_prompt, max_context + 3 * options.generate_tokens) + 64;
  for (int64_t batch : options.batches)  // batched sequences share the cache: a few blocks of room each
    engine_options.max_context = std::max(engine_options.max_context, batch * (options.generate_tokens + 5 + 32));
  engine_options.device = options.device;
  Engine engine(directory, engine_options);
  const Glm4MoeConfig& config = engine.config();

  // Memory warm: every page of the checkpoint touched, then the pages of
  // what place() copied and no kernel reads given back, and the peak
  // resident reset (Linux: /proc/self/clear_refs), so the reported peak is
  // that of prompts and decoding, not of this touching.
  engine.checkpoint().touch_all_pages();
  const double weights_in_2mib_pages = file_bytes_in_2mib_pages();
  engine.backend().release_copied_pages();
  if (std::FILE* refs = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", refs);
    std::fclose(refs);
  }
  const Usage before = usage();

  nlohmann::ordered_json report;
  report["model"] = directory;
  report["device"] = options.device;
  report["threads"] = omp_get_max_threads();
  report["omp_wait_policy"] = std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "";
  report["gomp_spincount"] = std::getenv("GOMP_SPINCOUNT") ? std::getenv("GOMP_SPINCOUNT") : "";
  report["weights_bytes"] = engine.model().weights().bound_bytes;

  auto random_tokens = [&](int64_t count, uint64_t seed) {
    std::vector<int32_t> tokens(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i)
      tokens[i] = static_cast<int32_t>(counter_uniform(seed, 0, static_cast<uint64_t>(i)) * 0.9 * config.vocab_size);
    return tokens;
  };
  PagedKvCache& cache = engine.cache();
  {  // Warm-up: an untimed prompt one token longer than the longest timed
     // one, so the timed ones find their buffers grown and paged in
     // (llama-bench warms up with its prompt too; a process's first 512-token
     // bf16 prompt on the 2-core CPU took a median 4% longer than the next
     // two, 18 runs), without repeating a timed length (a device backend
     // captures a repeated step's pieces into graphs, not inside the timing).
    const int32_t sequence = cache.create_sequence();
    engine.step({SequenceWork{sequence, random_tokens(max_prompt + 1, 99), LogitsWanted::Last}});
    cache.release_sequence(sequence);
  }

  report["prompt"] = nlohmann::ordered_json::array();
  for (int64_t length : options.prompt_tokens) {
    const int32_t sequence = cache.create_sequence();
    const auto tokens = random_tokens(length, 7);
    const auto start = Clock::now();
    engine.step({SequenceWork{sequence, tokens, LogitsWanted::Last}});
    const double seconds = seconds_since(start);
    cache.release_sequence(sequence);
    const ComponentFlops flops = prompt_flops(config, engine.model().weights(), length);
    report["prompt"].push_back({{"tokens", length},
                                {"seconds", seconds},
                                {"tokens_per_s", length / seconds},
                                {"GFLOP_per_s_excluding_attention", flops.projections() / seconds / 1e9}});
    if (options.prompt_components) {  // The same prompt again, marked: each component's time (a synchronisation at each mark) and FLOPs.
      ComponentClock clock;
      clock.config = &config;
      clock.attach(engine.model(), engine.backend());
      const int32_t marked = cache.create_sequence();
      const auto marked_start = Clock::now();
      clock.mark = marked_start;
      engine.step({SequenceWork{marked, tokens, LogitsWanted::Last}});
      const double marked_seconds = seconds_since(marked_start);
      engine.model().set_tracer({});
      cache.release_sequence(marked);
      clock.head = marked_seconds - (clock.attention + clock.dense_mlp + clock.moe);
      nlohmann::ordered_json components = nlohmann::ordered_json::array();
      auto component = [&](const char* name, double component_flops, double component_seconds) {
        if (component_flops == 0 && component_seconds < 1e-6) return;  // e.g. no dense layer
        components.push_back({{"component", name},
                              {"seconds", component_seconds},
                              {"GFLOP", component_flops / 1e9},
                              {"GFLOP_per_s", component_seconds > 0 ? component_flops / component_seconds / 1e9 : 0.0}});
      };
      component("attention (q/k/v/o and attention itself)", flops.attention, clock.attention);
      component("dense MLP", flops.dense_mlp, clock.dense_mlp);
      component("MoE (router, shared, top-k experts)", flops.moe, clock.moe);
      component("lm_head (last token; + embedding, final norm, step overhead)", flops.head, clock.head);
      report["prompt"].back()["marked_seconds"] = marked_seconds;
      report["prompt"].back()["components"] = components;
    }
    if (options.profile) {  // the same prompt again, each op timed on the device
      const int32_t again = cache.create_sequence();
      engine.backend().op_profile();  // drop anything timed before
      engine.backend().set_op_profiling(true);
      engine.step({SequenceWork{again, tokens, LogitsWanted::Last}});
      engine.backend().set_op_profiling(false);
      cache.release_sequence(again);
      nlohmann::ordered_json ops = nlohmann::ordered_json::array();
      for (const OpTime& op : engine.backend().op_profile())
        ops.push_back({{"op", op.op}, {"calls", op.calls}, {"device_seconds", op.device_seconds}});
      report["prompt"].back()["op_device_times"] = ops;
    }
  }

  // The yardstick runs after the prompts (its buffer must not count in their
  // resident memory) and before generation (whose rates are read against it).
  const Usage after_prompts = usage();
  const double read_bandwidth = measure_read_bandwidth();
  report["read_bandwidth_GBps"] = read_bandwidth / 1e9;
  // A device's weights stream from its own memory: its copy bandwidth is the yardstick there.
  const double copy_bandwidth = engine.backend().measure_copy_bandwidth();
  if (copy_bandwidth > 0) report["device_copy_bandwidth_GBps"] = copy_bandwidth / 1e9;
  const double yardstick = copy_bandwidth > 0 ? copy_bandwidth : read_bandwidth;
  // On the CPU, prompt rates against the peak of each instruction the kernels
  // use, measured now (exact activations run on FMA, the bf16 prompt path on
  // VDPBF16PS, int8 activations on VPDPBUSD or, without VNNI, VPMADDUBSW).
  if (copy_bandwidth == 0) {
    const cpu::CpuPeaks peaks = cpu::measure_cpu_peaks();
    report["peaks"] = {{"fma_isa", peaks.fma_isa},
                       {"fma_GFLOPps", peaks.fma_gflops},
                       {"vdpbf16ps_GFLOPps", peaks.bf16_gflops},
                       {"vpdpbusd_GOPps", peaks.vnni_gops},
                       {"vpmaddubsw_GOPps", peaks.maddubs_gops}};
    for (auto& p : report["prompt"]) {
      const double rate = p["GFLOP_per_s_excluding_attention"].get<double>();
      p["fraction_of_fma_peak"] = peaks.fma_gflops > 0 ? rate / peaks.fma_gflops : 0.0;
      p["fraction_of_vdpbf16ps_peak"] = peaks.bf16_gflops > 0 ? rate / peaks.bf16_gflops : 0.0;
      p["fraction_of_vpdpbusd_peak"] = peaks.vnni_gops > 0 ? rate / peaks.vnni_gops : 0.0;
      p["fraction_of_vpmaddubsw_peak"] = peaks.maddubs_gops > 0 ? rate / peaks.maddubs_gops : 0.0;
    }
  }
  // On a device, prompt rates against a large bf16 matrix product's rate
  // (the tensor cores' practical peak), measured now.
  if (copy_bandwidth > 0) {
    const double matmul_rate = engine.backend().measure_matmul_rate();
    if (matmul_rate > 0) {
      report["bf16_matmul_TFLOPps"] = matmul_rate / 1e12;
      for (auto& p : report["prompt"]) {
        p["fraction_of_bf16_matmul_rate"] = p["GFLOP_per_s_excluding_attention"].get<double>() * 1e9 / matmul_rate;
        if (p.contains("components"))  // (not with --no-prompt-components; p["components"] would make a null)
          for (auto& c : p["components"])
            c["fraction_of_bf16_matmul_rate"] = c["GFLOP_per_s"].get<double>() * 1e9 / matmul_rate;
      }
    }
  }
  const char* yardstick_name = copy_bandwidth > 0 ? "device copy bandwidth" : "read bandwidth";

  const ComponentBytes bytes = bytes_per_token(config, engine.model().weights());
  report["generation"] = nlohmann::ordered_json::array();
  for (int64_t context : options.contexts) {
    const int32_t sequence = cache.create_sequence();
    int32_t token = argmax(prefill(engine, sequence, random_tokens(context + 1, 11), 512));
    SamplingRequest choice{options.sampling, static_cast<uint64_t>(sequence), 0};
    // First an unmarked run for the rate, then a marked one (a synchronisation
    // per component, which slows a device) for the split. The second starts
    // generate_tokens later in the context: both are reported at their means.
    auto decode_step = [&] {  // one token, chosen on the backend: only its id comes back
      token = engine.step({SequenceWork{sequence, {token}, LogitsWanted::None, choice}})[0].token;
      ++choice.step;
    };
    auto decode_run = [&] {  // seconds for generate_tokens steps
      const auto start = Clock::now();
      for (int64_t step = 0; step < options.generate_tokens; ++step) decode_step();
      return seconds_since(start);
    };
    // Untimed steps first: a device backend replays a repeating step from a
    // graph captured at its third occurrence, and capturing is not decoding.
    for (int warm = 0; warm < 3; ++warm) decode_step();
    engine.backend().reset_host_idle();
    const double seconds = decode_run();
    const double host_idle_us = engine.backend().host_idle_median_us();
    ComponentClock clock;
    clock.config = &config;
    clock.attach(engine.model(), engine.backend());
    for (int64_t step = 0; step < options.generate_tokens; ++step) {
      const auto step_start = Clock::now();
      clock.mark = step_start;
      const double layers_before = clock.attention + clock.dense_mlp + clock.moe;
      decode_step();
      const double step_seconds = seconds_since(step_start);
      clock.head += step_seconds - (clock.attention + clock.dense_mlp + clock.moe - layers_before);
    }
    engine.model().set_tracer({});
    // Per-op device time (a third run): what the kernels take, and by
    // difference what launching and host work between them cost.
    nlohmann::ordered_json op_times = nlohmann::ordered_json::array();
    if (options.profile) {
      engine.backend().op_profile();  // drop anything timed before
      engine.backend().set_op_profiling(true);
      const double profile_seconds = decode_run();
      engine.backend().set_op_profiling(false);
      double device_seconds = 0.0;
      for (const OpTime& op : engine.backend().op_profile()) {
        device_seconds += op.device_seconds;
        op_times.push_back({{"op", op.op},
                            {"calls_per_token", static_cast<double>(op.calls) / options.generate_tokens},
                            {"device_seconds_per_token", op.device_seconds / options.generate_tokens}});
      }
      op_times.push_back({{"op", "(wall time of the profiled run)"},
                          {"calls_per_token", 0},
                          {"device_seconds_per_token", profile_seconds / options.generate_tokens}});
      op_times.push_back({{"op", "(sum of op device times)"},
                          {"calls_per_token", 0},
                          {"device_seconds_per_token", device_seconds / options.generate_tokens}});
    }
    cache.release_sequence(sequence);

    const double n = static_cast<double>(options.generate_tokens);
    const double mean_context = static_cast<double>(context) + 1.0 + n / 2.0;
    const double kv_bytes = bytes.kv_cache_per_context_token * mean_context;
    const double total_bytes = bytes.attention + bytes.dense_mlp + bytes.experts + bytes.lm_head + kv_bytes;
    nlohmann::ordered_json components = nlohmann::ordered_json::array();
    auto component = [&](const char* name, double component_bytes, double component_seconds) {
      components.push_back({{"component", name},
                            {"bytes_per_token", component_bytes},
                            {"seconds_per_token", component_seconds / n},
                            {"GBps", component_seconds > 0 ? component_bytes * n / component_seconds / 1e9 : 0.0}});
    };
    component("attention (weights + KV cache)", bytes.attention + kv_bytes, clock.attention);
    component("dense MLP", bytes.dense_mlp, clock.dense_mlp);
    component("MoE (router, shared, top-k experts)", bytes.experts, clock.moe);
    component("lm_head (+ final norm, sampling, step overhead)", bytes.lm_head, clock.head);
    report["generation"].push_back({{"context", context},
                                    {"tokens", options.generate_tokens},
                                    {"tokens_per_s", n / seconds},
                                    {"bytes_per_token", total_bytes},
                                    {"kv_cache_bytes_per_token", kv_bytes},
                                    {"GBps", total_bytes * n / seconds / 1e9},
                                    {"yardstick", yardstick_name},
                                    {"fraction_of_yardstick", total_bytes * n / seconds / yardstick},
                                    {"components", components},
                                    {"host_idle_us_per_step", host_idle_us},
                                    {"op_device_times", op_times}});
  }
  // Batched decoding: `batch` sequences of one prompt token each take a
  // token per step together, so each step reads the shared weights once.
  report["batched"] = nlohmann::ordered_json::array();
  for (int64_t batch : options.batches) {
    GLM_CHECK(batch >= 1, "--batch wants sequence counts of at least 1, not ", batch);
    std::vector<SequenceWork> plan;
    for (int64_t s = 0; s < batch; ++s) {
      SequenceWork work{cache.create_sequence(), random_tokens(1, 20 + static_cast<uint64_t>(s)), LogitsWanted::None};
      work.sample = SamplingRequest{options.sampling, static_cast<uint64_t>(work.sequence), 0};
      plan.push_back(work);
    }
    auto batch_step = [&] {
      const std::vector<SequenceResult> results = engine.step(plan);
      for (size_t s = 0; s < plan.size(); ++s) {
        plan[s].tokens = {results[s].token};
        ++plan[s].sample->step;
      }
    };
    for (int warm = 0; warm < 4; ++warm) batch_step();  // the prompt token, then graph capture
    const auto start = Clock::now();
    for (int64_t step = 0; step < options.generate_tokens; ++step) batch_step();
    const double seconds = seconds_since(start);
    for (const SequenceWork& work : plan) cache.release_sequence(work.sequence);
    report["batched"].push_back({{"batch", batch},
                                 {"steps", options.generate_tokens},
                                 {"step_seconds", seconds / options.generate_tokens},
                                 {"tokens_per_s", static_cast<double>(batch * options.generate_tokens) / seconds}});
  }
  const Usage after = usage();
  report["peak_resident_bytes_before_yardstick"] = static_cast<double>(after_prompts.max_resident_kib) * 1024.0;
  report["major_page_faults_while_timing"] = after.major_faults - before.major_faults;
  report["weights_mapped_in_2MiB_pages_bytes"] = weights_in_2mib_pages;
  report["execution"] = engine.backend().execution_summary();
  const SamplingParams& sampling = options.sampling;
  report["token_choice"] = sampling.greedy()
                               ? std::string("greedy")
                               : "sampled: temperature " + format_number(sampling.temperature) + ", top-k " +
                                     std::to_string(sampling.top_k) + ", top-p " + format_number(sampling.top_p) +
                                     ", min-p " + format_number(sampling.min_p) + ", seed " +
                                     std::to_string(sampling.seed);

  if (options.json) {
    std::printf("%s\n", report.dump(2).c_str());
    return 0;
  }
  std::printf("model %s on %s, %d threads, weights %.2f GB, host read bandwidth %.1f GB/s\n", directory.c_str(),
              options.device.c_str(), omp_get_max_threads(), report["weights_bytes"].get<double>() / 1e9, read_bandwidth / 1e9);
  if (copy_bandwidth > 0) std::printf("device copy bandwidth %.1f GB/s (read + write)\n", copy_bandwidth / 1e9);
  std::printf("tokens generated: %s\n", report["token_choice"].get<std::string>().c_str());
  if (!report["execution"].get<std::string>().empty())
    std::printf("execution: %s\n", report["execution"].get<std::string>().c_str());
  if (report.contains("peaks"))
    std::printf("CPU peaks: FMA (%s) %.0f GFLOP/s, VDPBF16PS %.0f GFLOP/s, VPDPBUSD %.0f GOP/s, VPMADDUBSW %.0f GOP/s\n",
                report["peaks"]["fma_isa"].get<std::string>().c_str(), report["peaks"]["fma_GFLOPps"].get<double>(),
                report["peaks"]["vdpbf16ps_GFLOPps"].get<double>(), report["peaks"]["vpdpbusd_GOPps"].get<double>(),
                report["peaks"]["vpmaddubsw_GOPps"].get<double>());
  for (const auto& p : report["prompt"]) {
    std::printf("prompt %6lld tokens: %8.1f tok/s  %7.1f GFLOP/s (projections done: the last layer past attention on the logit row; attention apart)",
                static_cast<long long>(p["tokens"].get<int64_t>()), p["tokens_per_s"].get<double>(),
                p["GFLOP_per_s_excluding_attention"].get<double>());
    if (p.contains("fraction_of_fma_peak"))
      std::printf(" = %.0f%% of FMA, %.0f%% of VDPBF16PS, %.0f%% of VPDPBUSD, %.0f%% of VPMADDUBSW peak",
                  100.0 * p["fraction_of_fma_peak"].get<double>(), 100.0 * p["fraction_of_vdpbf16ps_peak"].get<double>(),
                  100.0 * p["fraction_of_vpdpbusd_peak"].get<double>(),
                  100.0 * p["fraction_of_vpmaddubsw_peak"].get<double>());
    if (p.contains("fraction_of_bf16_matmul_rate"))
      std::printf(" = %.0f%% of a bf16 matmul's %.0f TFLOP/s", 100.0 * p["fraction_of_bf16_matmul_rate"].get<double>(),
                  report["bf16_matmul_TFLOPps"].get<double>());
    std::printf("\n");
    if (p.contains("components")) {
      std::printf("  by component (the prompt again, %.2fx the time with a mark after each component):\n",
                  p["marked_seconds"].get<double>() / p["seconds"].get<double>());
      for (const auto& c : p["components"]) {
        std::printf("  %-62s %9.2f ms %10.1f GFLOP/s", c["component"].get<std::string>().c_str(),
                    c["seconds"].get<double>() * 1e3, c["GFLOP_per_s"].get<double>());
        if (c.contains("fraction_of_bf16_matmul_rate"))
          std::printf(" = %3.0f%% of the matmul rate", 100.0 * c["fraction_of_bf16_matmul_rate"].get<double>());
        std::printf("\n");
      }
    }
    if (p.contains("op_device_times"))
      for (const auto& op : p["op_device_times"])
        std::printf("    op %-46s %6lld calls %9.1f us\n", op["op"].get<std::string>().c_str(),
                    static_cast<long long>(op["calls"].get<int64_t>()), op["device_seconds"].get<double>() * 1e6);
  }
  for (const auto& b : report["batched"])
    std::printf("decode %lld sequences together: %.1f tok/s (%.2f ms a step)\n",
                static_cast<long long>(b["batch"].get<int64_t>()), b["tokens_per_s"].get<double>(),
                b["step_seconds"].get<double>() * 1e3);
  for (const auto& g : report["generation"]) {
    std::printf("generate at context %lld: %.2f tok/s, %.1f MB/token, %.1f GB/s = %.0f%% of %s\n",
                static_cast<long long>(g["context"].get<int64_t>()), g["tokens_per_s"].get<double>(),
                g["bytes_per_token"].get<double>() / 1e6, g["GBps"].get<double>(),
                100.0 * g["fraction_of_yardstick"].get<double>(), yardstick_name);
    if (g["host_idle_us_per_step"].get<double>() >= 0)
      std::printf("  host work per step with the device idle (median, from the ids' download to the replay): %.1f us "
                  "= %.0f%% of the step\n",
                  g["host_idle_us_per_step"].get<double>(),
                  g["host_idle_us_per_step"].get<double>() * 1e-4 * g["tokens_per_s"].get<double>());
    for (const auto& c : g["components"])
      std::printf("  %-48s %9.1f MB/token %8.2f ms/token %7.1f GB/s\n", c["component"].get<std::string>().c_str(),
                  c["bytes_per_token"].get<double>() / 1e6, c["seconds_per_token"].get<double>() * 1e3,
                  c["GBps"].get<double>());
    for (const auto& op : g["op_device_times"])
      std::printf("    op %-46s %6.1f calls/token %9.1f us/token\n", op["op"].get<std::string>().c_str(),
                  op["calls_per_token"].get<double>(), op["device_seconds_per_token"].get<double>() * 1e6);
  }
  std::printf("peak resident %.2f GB (before the 1 GiB yardstick buffer), major page faults while timing: %lld\n",
              report["peak_resident_bytes_before_yardstick"].get<double>() / 1e9,
              static_cast<long long>(report["major_page_faults_while_timing"].get<long>()));
  if (weights_in_2mib_pages >= 0) {
    const double weights_bytes = report["weights_bytes"].get<double>();
    std::printf("weights mapped in 2 MiB pages: %.2f of %.2f GB (docs/design.md, Page sizes)\n",
                weights_in_2mib_pages / 1e9, weights_bytes / 1e9);
    // At most ~1/9 of an affine file stays out (the scales and biases the CPU
    // backend copies); much more means pages cached in write()'s folios.
    if (options.device == "cpu" && weights_bytes >= 1e9 && weights_in_2mib_pages < 0.75 * weights_bytes)
      std::printf("  the rest in 4 KiB pages costs CPU decoding a few percent: drop the checkpoint from the page "
                  "cache (vmtouch -e DIR) and run again\n");
  }
  return 0;
}

}  // namespace glm::app
