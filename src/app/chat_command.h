// `glm4moe chat`: an interactive terminal conversation with a checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace glm::app {

struct ChatCommandOptions {
  std::string model;
  std::string device = "cpu";
  std::string system;
  bool no_think = false;
  bool hide_reasoning = false;
  int64_t max_tokens = 1024;
  int64_t max_context = 8192;
  int64_t prefill_chunk = 0;  // <= 0: default_prefill_chunk(device)
  double temperature = -1.0;  // < 0: generation_config.json
  int64_t top_k = -1;
  double top_p = -1.0;
  double min_p = -1.0;
  uint64_t seed = 0;
  int threads = 0;
  std::vector<std::string> template_arguments;  // key=value
  std::vector<std::string> stop_strings;
};

int run_chat(const ChatCommandOptions& options);

}  // namespace glm::app
