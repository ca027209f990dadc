// Token choice as the engine sees it: the sampling rule itself (parameters,
// the counter-based draw, greedy and sampled choice on the host) lives in
// backend/sampling.h, where every backend implements it as the `sample` op;
// the engine adds the defaults read from a checkpoint's generation_config.json.
#pragma once

#include "backend/sampling.h"
#include "model/config.h"

namespace glm {

// transformers' defaults where generation_config.json is silent (top_k 50 when
// sampling, as GenerationConfig sets it); an explicit temperature 0 or
// do_sample false means greedy.
SamplingParams sampling_defaults(const GenerationDefaults& generation);

}  // namespace glm
