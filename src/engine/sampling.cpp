// Sampling parameters from a checkpoint's generation defaults.
#include "engine/sampling.h"

namespace glm {

SamplingParams sampling_defaults(const GenerationDefaults& generation) {
  SamplingParams params;
  const bool do_sample = generation.do_sample.value_or(false);
  params.temperature = do_sample ? generation.temperature.value_or(1.0) : 0.0;
  params.top_k = generation.top_k.value_or(50);
  params.top_p = generation.top_p.value_or(1.0);
  params.min_p = generation.min_p.value_or(0.0);
  return params;
}

}  // namespace glm
