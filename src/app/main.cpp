// The glm4moe command line: `logits`, `generate` and `info` over a checkpoint
// directory, `chat`, `bench`, `quantize`, `perplexity` of a text, and `tokenize`. Every failure is reported as one "error: ..." line on stderr with
// exit status 1; nothing here lets an exception escape.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "app/bench_command.h"
#include "app/chat_command.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "engine/perplexity.h"
#include "engine/quantize.h"
#include "io/npy.h"
#include "model/quantization.h"
#include "model/weights.h"
#include "text/tokenizer.h"

namespace {

using glm::fail;

// "61,172,256" -> ids; anything that is not a list of non-negative integers is an error.
std::vector<int32_t> parse_prompt_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    GLM_CHECK(first != std::string::npos, "--prompt-ids: empty entry in \"", text, "\"");
    item = item.substr(first, last - first + 1);
    GLM_CHECK(item.find_first_not_of("0123456789") == std::string::npos && item.size() <= 10,
              "--prompt-ids: \"", item, "\" is not a token id");
    const long long value = std::stoll(item);
    GLM_CHECK(value <= INT32_MAX, "--prompt-ids: ", item, " is too large");
    ids.push_back(static_cast<int32_t>(value));
  }
  GLM_CHECK(!ids.empty(), "--prompt-ids: the prompt is empty");
  return ids;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) {
    bytes /= 1024.0;
    ++unit;
  }
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.2f %s", bytes, units[unit]);
  return buffer;
}

struct CommonOptions {
  std::string model;
  std::string device = "cpu";
  int threads = 0;
  int64_t max_context = 0;
};

void add_common(CLI::App* command, CommonOptions& options) {
  command->add_option("--model", options.model, "checkpoint directory (config.json + *.safetensors)")->required();
  command->add_option("--threads", options.threads, "CPU threads (default: all cores)");
  command->add_option("--device", options.device, "cpu (default), cuda or cuda:N");
  command->add_option("--max-context", options.max_context, "KV cache capacity in tokens (default: prompt + output)");
}

glm::EngineOptions engine_options(const CommonOptions& common, int64_t tokens_needed) {
  if (common.threads > 0) omp_set_num_threads(common.threads);
  glm::EngineOptions options;
  options.device = common.device;
  options.max_context = common.max_context > 0 ? common.max_context : std::max<int64_t>(tokens_needed, 16);
  return options;
}

int run_logits(const CommonOptions& common, const std::string& prompt_ids, const std::string& output) {
  const std::vector<int32_t> prompt = parse_prompt_ids(prompt_ids);
  glm::Engine engine(common.model, engine_options(common, static_cast<int64_t>(prompt.size())));
  const int32_t sequence = engine.cache().create_sequence();
  auto results = engine.step({glm::SequenceWork{sequence, prompt, glm::LogitsWanted::All}});
  glm::write_npy(output, results[0].logits,
                 {static_cast<int64_t>(prompt.size()), engine.config().vocab_size});
  return 0;
}

struct GenerateOptions {
  std::string prompt_ids;
  bool has_prompt_ids = false;  // given, even if empty
  std::string prompt_text;
  std::string prompt_file;
  int64_t max_tokens = 128;
  double temperature = -1.0;
  int64_t top_k = -1;
  double top_p = -1.0;
  double min_p = -1.0;
  uint64_t seed = 0;
  int64_t prefill_chunk = 0;  // <= 0: default_prefill_chunk(device)
  bool ignore_eos = false;
  bool json = false;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GLM_CHECK(in, "cannot read ", path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int run_generate(const CommonOptions& common, const GenerateOptions& options) {
  const int sources = options.has_prompt_ids + !options.prompt_text.empty() + !options.prompt_file.empty();
  GLM_CHECK(sources == 1, "give exactly one of --prompt-ids, --prompt and --prompt-file");
  // Text prompts go through the checkpoint's tokenizer.json, encoded as they
  // are (no special tokens added: a raw completion), and the output streams
  // as text.
  std::optional<glm::Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  if (options.has_prompt_ids) {
    prompt = parse_prompt_ids(options.prompt_ids);
  } else {
    tokenizer = glm::Tokenizer::from_file(common.model);
    prompt = tokenizer->encode(options.prompt_text.empty() ? read_file(options.prompt_file) : options.prompt_text);
    GLM_CHECK(!prompt.empty(), "the prompt is empty");
  }
  GLM_CHECK(options.max_tokens >= 0, "--max-tokens must not be negative");
  glm::Engine engine(common.model,
                     engine_options(common, static_cast<int64_t>(prompt.size()) + options.max_tokens));
  glm::GenerationRequest request;
  request.prompt = prompt;
  request.max_tokens = options.max_tokens;
  request.ignore_eos = options.ignore_eos;
  request.eos_token_ids = engine.config().eos_token_ids;
  request.sampling = glm::sampling_defaults(engine.generation_defaults());
  // An explicit temperature decides greedy (0) vs sampling (> 0) regardless of do_sample.
  if (options.temperature >= 0.0) request.sampling.temperature = options.temperature;
  if (options.top_k >= 0) request.sampling.top_k = options.top_k;
  if (options.top_p >= 0.0) request.sampling.top_p = options.top_p;
  if (options.min_p >= 0.0) request.sampling.min_p = options.min_p;
  request.sampling.seed = options.seed;
  request.prefill_chunk =
      options.prefill_chunk > 0 ? options.prefill_chunk : glm::default_prefill_chunk(common.device);

  std::optional<glm::StreamingDecoder> decoder;
  if (tokenizer) decoder.emplace(*tokenizer);
  auto stream = [&](int32_t token) {
    if (options.json) return true;
    if (decoder) {
      std::fputs(decoder->push(token).c_str(), stdout);
    } else {
      std::printf("%d ", token);
    }
    std::fflush(stdout);
    return true;
  };
  const glm::GenerationResult result = glm::generate(engine, request, stream);
  const double prompt_rate = result.prompt_seconds > 0 ? prompt.size() / result.prompt_seconds : 0.0;
  const double generation_rate =
      result.generation_seconds > 0 ? result.tokens.size() / result.generation_seconds : 0.0;
  if (options.json) {
    nlohmann::json out;
    out["token_ids"] = result.tokens;
    out["prompt_tokens"] = prompt.size();
    out["generated_tokens"] = result.tokens.size();
    out["prompt_tokens_per_s"] = prompt_rate;
    out["generated_tokens_per_s"] = generation_rate;
    out["finish_reason"] = result.finish_reason;
    if (tokenizer) out["text"] = tokenizer->decode(result.tokens);
    std::printf("%s\n", out.dump().c_str());
  } else {
    if (decoder) std::fputs(decoder->flush().c_str(), stdout);
    std::printf("\n");
    std::fprintf(stderr, "prompt: %zu tokens, %.1f tok/s; generated: %zu tokens, %.1f tok/s; finish: %s\n",
                 prompt.size(), prompt_rate, result.tokens.size(), generation_rate, result.finish_reason.c_str());
  }
  return 0;
}

int run_info(const CommonOptions& common, bool json) {
  glm::GenerationDefaults generation;
  const glm::Glm4MoeConfig config = glm::load_config(common.model, &generation);
  const glm::Checkpoint checkpoint(common.model);
  glm::ModelWeights weights = glm::bind_weights(checkpoint, config);
  // Placing the weights on the chosen backend shows what it repacks or uploads.
  const std::unique_ptr<glm::Backend> backend = glm::make_backend(common.device);
  glm::place_weights(weights, *backend);
  const glm::ParameterCounts counts = glm::count_parameters(config);

  nlohmann::ordered_json out;
  out["model"] = common.model;
  nlohmann::ordered_json c;
  c["vocab_size"] = config.vocab_size;
  c["hidden_size"] = config.hidden_size;
  c["intermediate_size"] = config.intermediate_size;
  c["moe_intermediate_size"] = config.moe_intermediate_size;
  c["num_hidden_layers"] = config.num_hidden_layers;
  c["first_k_dense_replace"] = config.first_k_dense_replace;
  c["num_attention_heads"] = config.num_attention_heads;
  c["num_key_value_heads"] = config.num_key_value_heads;
  c["head_dim"] = config.head_dim;
  c["partial_rotary_factor"] = config.partial_rotary_factor;
  c["rotary_dim"] = config.rotary_dim();
  c["rope_theta"] = config.rope_theta;
  c["max_position_embeddings"] = config.max_position_embeddings;
  c["attention_bias"] = config.attention_bias;
  c["use_qk_norm"] = config.use_qk_norm;
  c["rms_norm_eps"] = config.rms_norm_eps;
  c["n_routed_experts"] = config.n_routed_experts;
  c["n_shared_experts"] = config.n_shared_experts;
  c["num_experts_per_tok"] = config.num_experts_per_tok;
  c["n_group"] = config.n_group;
  c["topk_group"] = config.topk_group;
  c["routed_scaling_factor"] = config.routed_scaling_factor;
  c["norm_topk_prob"] = config.norm_topk_prob;
  c["num_nextn_predict_layers"] = config.num_nextn_predict_layers;
  c["tie_word_embeddings"] = config.tie_word_embeddings;
  c["eos_token_ids"] = config.eos_token_ids;
  out["config"] = c;
  out["formats"] = glm::describe_formats(weights);
  out["quantization"] = config.quantization.describe();
  out["parameters"] = {{"total", counts.total}, {"active_per_token", counts.active_per_token}, {"mtp", counts.mtp}};
  out["weights"] = {{"files", checkpoint.file_count()},
                    {"bytes_in_files", checkpoint.total_bytes()},
                    {"bytes_bound", weights.bound_bytes},
                    {"expert_layout", weights.expert_layout.empty() ? "none" : weights.expert_layout},
                    {"mtp_layer", weights.mtp ? "bound (not run)" : "absent"},
                    {"repacked", backend->placement_summary()}};
  if (json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("model: %s\n\nconfiguration:\n", common.model.c_str());
  for (auto& [key, value] : c.items()) std::printf("  %-26s %s\n", key.c_str(), value.dump().c_str());
  std::printf("\nparameters:\n  total                      %lld (%.3f B)\n", static_cast<long long>(counts.total),
              counts.total / 1e9);
  std::printf("  active per token           %lld (%.3f B)\n", static_cast<long long>(counts.active_per_token),
              counts.active_per_token / 1e9);
  std::printf("  MTP layers                 %lld\n", static_cast<long long>(counts.mtp));
  std::printf("\nweights:\n  files                      %zu\n", checkpoint.file_count());
  std::printf("  memory needed              %s (%llu bytes, all tensors in the files)\n",
              human_bytes(static_cast<double>(checkpoint.total_bytes())).c_str(),
              static_cast<unsigned long long>(checkpoint.total_bytes()));
  std::printf("  bound by the model         %s\n", human_bytes(static_cast<double>(weights.bound_bytes)).c_str());
  std::printf("  quantization               %s\n", config.quantization.describe().c_str());
  for (const auto& [format, count] : glm::describe_formats(weights))
    std::printf("    %-24s %lld tensors\n", format.c_str(), static_cast<long long>(count));
  std::printf("  expert layout              %s\n", weights.expert_layout.empty() ? "none" : weights.expert_layout.c_str());
  std::printf("  MTP layer                  %s\n", weights.mtp ? "bound (not run)" : "absent");
  std::printf("  repacked                   %s\n", backend->placement_summary().c_str());
  return 0;
}

int run_perplexity(const CommonOptions& common, const std::string& file, int64_t context, int64_t stride) {
  const glm::Tokenizer tokenizer = glm::Tokenizer::from_file(common.model);
  const std::vector<int32_t> tokens = tokenizer.encode(read_file(file));
  if (stride <= 0) stride = context / 2 > 0 ? context / 2 : 1;
  glm::Engine engine(common.model, engine_options(common, context));
  const glm::PerplexityResult result = glm::perplexity(engine, tokens, context, stride);
  nlohmann::ordered_json out;
  out["perplexity"] = result.perplexity;
  out["scored_tokens"] = result.scored_tokens;
  out["mean_nll"] = result.total_nll / static_cast<double>(result.scored_tokens);
  out["context"] = context;
  out["stride"] = stride;
  out["tokens_per_s"] = result.seconds > 0 ? result.processed_tokens / result.seconds : 0.0;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

namespace {

// OpenMP threads that wait at a barrier spin for a short while (10000
// iterations, some microseconds: the serial work between two parallel
// regions of a decode step) and then sleep, instead of libgomp's default
// of spinning about 30 times longer, unless the environment already says
// how they should wait. libgomp reads that before main, so the process runs
// itself again with GOMP_SPINCOUNT set. Why: on a machine shared with other
// work a spinning thread takes the core its team-mate (or another process)
// needs. int4 decode on 2 cores (int8 activations, docs/benchmarks.md),
// beside one busy loop: 11.6-13.8 tok/s with the default, 12.8-20.3 with
// this, 25.3-26.8 sleeping at once (OMP_WAIT_POLICY=passive); on an idle
// machine 36.8-37.2, 37.2-37.6 and 33.8-36.5. So the short spin costs
// nothing idle; passive gains most under load but costs 3-8% idle.
void prefer_short_openmp_spins(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", "10000", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  unsetenv("GOMP_SPINCOUNT");
}

}  // namespace

int main(int argc, char** argv) {
  prefer_short_openmp_spins(argv);
  CLI::App app{"glm4moe: run GLM-4 MoE models (GLM-4.5, 4.5-Air, 4.6, 4.7) from their Hugging Face checkpoints"};
  app.require_subcommand(1);

  CommonOptions logits_common;
  std::string logits_ids, logits_output;
  CLI::App* logits = app.add_subcommand("logits", "write the logits at every prompt position to a .npy file");
  add_common(logits, logits_common);
  logits->add_option("--prompt-ids", logits_ids, "comma-separated token ids")->required();
  logits->add_option("--output", logits_output, "output .npy path (float32 [T, vocab_size])")->required();

  CommonOptions generate_common;
  GenerateOptions generate_options;
  CLI::App* generate = app.add_subcommand("generate", "continue a prompt");
  add_common(generate, generate_common);
  CLI::Option* prompt_ids_option =
      generate->add_option("--prompt-ids", generate_options.prompt_ids, "comma-separated token ids");
  generate->add_option("--prompt", generate_options.prompt_text, "prompt text (encoded with the model's tokenizer.json)");
  generate->add_option("--prompt-file", generate_options.prompt_file, "file holding the prompt text");
  generate->add_option("--max-tokens", generate_options.max_tokens, "most tokens to generate (default 128)");
  generate->add_option("--temperature", generate_options.temperature, "0 = greedy (default: generation_config.json)");
  generate->add_option("--top-k", generate_options.top_k, "keep the k most likely tokens (0 = off)");
  generate->add_option("--top-p", generate_options.top_p, "nucleus sampling mass (1 = off)");
  generate->add_option("--min-p", generate_options.min_p, "drop tokens below min-p times the best (0 = off)");
  generate->add_option("--seed", generate_options.seed, "random seed (default 0)");
  generate->add_option("--prefill-chunk", generate_options.prefill_chunk,
                       "prompt tokens per step (default 4096 on cuda, 512 on cpu)");
  generate->add_flag("--ignore-eos", generate_options.ignore_eos, "do not stop at eos ids");
  generate->add_flag("--json", generate_options.json, "print one JSON object with the result");

  CommonOptions info_common;
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "print the configuration, parameter counts and memory needed");
  add_common(info, info_common);
  info->add_flag("--json", info_json, "print JSON");

  CommonOptions perplexity_common;
  std::string perplexity_file;
  int64_t perplexity_context = 1024, perplexity_stride = 0;
  CLI::App* perplexity = app.add_subcommand("perplexity", "perplexity of a text file with sliding windows");
  add_common(perplexity, perplexity_common);
  perplexity->add_option("--file", perplexity_file, "text to score (special tokens are not added)")->required();
  perplexity->add_option("--context", perplexity_context, "window length in tokens (default 1024)");
  perplexity->add_option("--stride", perplexity_stride, "tokens between window starts (default context / 2)");

  glm::app::ChatCommandOptions chat_options;
  CLI::App* chat = app.add_subcommand("chat", "talk with the model in the terminal (its own chat template)");
  chat->add_option("--model", chat_options.model, "checkpoint directory with tokenizer.json and a chat template")
      ->required();
  chat->add_option("--system", chat_options.system, "system message");
  chat->add_flag("--no-think", chat_options.no_think, "turn reasoning off (enable_thinking=false)");
  chat->add_flag("--hide-reasoning", chat_options.hide_reasoning, "do not print the reasoning");
  chat->add_option("--max-tokens", chat_options.max_tokens, "most tokens per reply (default 1024)");
  chat->add_option("--max-context", chat_options.max_context, "KV cache capacity in tokens (default 8192)");
  chat->add_option("--temperature", chat_options.temperature, "0 = greedy (default: generation_config.json)");
  chat->add_option("--top-k", chat_options.top_k, "keep the k most likely tokens (0 = off)");
  chat->add_option("--top-p", chat_options.top_p, "nucleus sampling mass (1 = off)");
  chat->add_option("--min-p", chat_options.min_p, "drop tokens below min-p times the best (0 = off)");
  chat->add_option("--seed", chat_options.seed, "random seed (default 0)");
  chat->add_option("--prefill-chunk", chat_options.prefill_chunk,
                   "prompt tokens per step (default 4096 on cuda, 512 on cpu)");
  chat->add_option("--threads", chat_options.threads, "CPU threads (default: all cores)");
  chat->add_option("--device", chat_options.device, "cpu (default), cuda or cuda:N");
  chat->add_option("--chat-template-arg", chat_options.template_arguments,
                   "key=value passed to the template (value parsed as JSON when it parses)");
  chat->add_option("--stop", chat_options.stop_strings, "stop the reply at this string (repeatable)");

  glm::app::BenchOptions bench_options;
  CLI::App* bench = app.add_subcommand("bench", "prompt and generation throughput, bytes and bandwidth per component");
  bench->add_option("--model", bench_options.model, "checkpoint directory");
  bench->add_option("--synthetic", bench_options.synthetic, "random weights of a real shape: glm-4.5-air, glm-4.5");
  bench->add_option("--layers", bench_options.layers, "synthetic decoder layers (default: full depth)");
  bench->add_option("--dtype", bench_options.dtype, "synthetic weights: bf16, f16, f32, int8, int4, fp8 (default bf16)");
  bench->add_option("--group-size", bench_options.group_size, "synthetic int8/int4 group size (default 64)");
  bench->add_option("--synthetic-dir", bench_options.synthetic_dir, "where to write the synthetic checkpoint");
  bench->add_option("--prompt-tokens", bench_options.prompt_tokens, "prompt lengths (default 512)")->delimiter(',');
  bench->add_option("--context", bench_options.contexts, "cached tokens before generating (default 0)")
      ->delimiter(',');
  bench->add_option("--gen-tokens", bench_options.generate_tokens, "generated tokens timed (default 16)");
  bench->add_option("--batch", bench_options.batches,
                    "also time decoding this many sequences together, e.g. 8,32 (at context 0)")
      ->delimiter(',');
  bench->add_option("--temperature", bench_options.sampling.temperature,
                    "generate by sampling at this temperature (default 0: greedy)");
  bench->add_option("--top-k", bench_options.sampling.top_k, "sampling: keep the k most likely tokens (0 = off)");
  bench->add_option("--top-p", bench_options.sampling.top_p, "sampling: nucleus mass (1 = off)");
  bench->add_option("--min-p", bench_options.sampling.min_p, "sampling: drop tokens below min-p x the best's (0 = off)");
  bench->add_option("--seed", bench_options.sampling.seed, "sampling: random seed (default 0)");
  bench->add_option("--threads", bench_options.threads, "CPU threads (default: all cores)");
  bench->add_option("--device", bench_options.device, "cpu (default), cuda or cuda:N");
  bench->add_flag("--json", bench_options.json, "print JSON");
  bench->add_flag("--profile", bench_options.profile,
                  "also time every op of decoding on the device (CUDA events): kernel time vs launch gaps");
  bench->add_flag("--prompt-components,!--no-prompt-components", bench_options.prompt_components,
                  "run each prompt a second time with a mark after each component, for its time and FLOP/s by "
                  "component (default on; off halves the prompts' share of the run)");

  glm::QuantizeOptions quantize_options;
  CLI::App* quantize = app.add_subcommand("quantize", "write an mlx-compatible affine-quantized copy of a checkpoint");
  quantize->add_option("--model", quantize_options.model, "source checkpoint directory (float weights)")->required();
  quantize->add_option("--bits", quantize_options.bits, "4 or 8")->required()->check(CLI::IsMember({4, 8}));
  quantize->add_option("--group-size", quantize_options.group_size, "values per scale and bias: 32, 64 (default) or 128")
      ->check(CLI::IsMember({32, 64, 128}));
  quantize->add_option("--output", quantize_options.output, "output directory (must not exist or be empty)")
      ->required();

  std::string tokenizer_path, text_file;
  CLI::App* tokenize = app.add_subcommand("tokenize", "print {\"ids\": [...]} for a file's exact bytes");
  tokenize->add_option("--tokenizer", tokenizer_path, "tokenizer.json or a model directory")->required();
  tokenize->add_option("--text-file", text_file, "the text to encode (no special tokens are added)")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  }
  try {
    if (logits->parsed()) return run_logits(logits_common, logits_ids, logits_output);
    if (generate->parsed()) {
      generate_options.has_prompt_ids = prompt_ids_option->count() > 0;
      return run_generate(generate_common, generate_options);
    }
    if (info->parsed()) return run_info(info_common, info_json);
    if (chat->parsed()) return glm::app::run_chat(chat_options);
    if (bench->parsed()) return glm::app::run_bench(bench_options);
    if (quantize->parsed()) {
      const glm::QuantizeReport report = glm::quantize_checkpoint(quantize_options);
      std::fprintf(stderr, "wrote %s: %lld tensors (%lld quantized modules) in %lld shards, %.2f GB -> %.2f GB\n",
                   quantize_options.output.c_str(), static_cast<long long>(report.tensors_written),
                   static_cast<long long>(report.modules_quantized), static_cast<long long>(report.shards),
                   report.bytes_read / 1e9, report.bytes_written / 1e9);
      return 0;
    }
    if (perplexity->parsed())
      return run_perplexity(perplexity_common, perplexity_file, perplexity_context, perplexity_stride);
    if (tokenize->parsed()) {
      std::printf("%s\n", glm::tokenize_file_to_json(tokenizer_path, text_file).c_str());
      return 0;
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
