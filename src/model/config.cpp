// Reads config.json and generation_config.json into Glm4MoeConfig and
// GenerationDefaults, rejecting up front (with the field and value named)
// every setting the engine does not implement, so that an unsupported model
// fails at load instead of producing wrong logits.
#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "io/json_util.h"

namespace glm {

namespace {

using nlohmann::json;

std::string quoted(const std::string& text) { return "\"" + text + "\""; }

// Typed access to the fields of one JSON object. An absent field leaves the
// caller's default untouched, so the struct initializers (transformers'
// defaults) apply. `prefix` qualifies nested fields in messages ("rope_parameters.").
class FieldReader {
 public:
  FieldReader(const json& object, const std::string& what, const std::string& prefix = "")
      : object_(object), what_(what), prefix_(prefix) {}

  // The field's value, or nullptr when absent. JSON null counts as absent
  // only where the caller says so (token ids, rope blocks), via `present`.
  const json* find(const std::string& key) const {
    const auto found = object_.find(key);
    return found == object_.end() ? nullptr : &*found;
  }
  bool present(const std::string& key) const {
    const json* value = find(key);
    return value && !value->is_null();
  }

  [[noreturn]] void wrong_type(const std::string& key, const json& value, const char* expected) const {
    fail(what_, ": ", prefix_, key, " must be ", expected, ", found ", json_excerpt(value), " (",
         json_type_name(value), ")");
  }

  bool read_int(const std::string& key, int64_t* out) const {
    const json* value = find(key);
    if (!value) return false;
    if (!json_integral_int64(*value, out)) wrong_type(key, *value, "an integer");
    return true;
  }
  bool read_double(const std::string& key, double* out) const {
    const json* value = find(key);
    if (!value) return false;
    if (!value->is_number()) wrong_type(key, *value, "a number");
    *out = value->get<double>();
    if (!std::isfinite(*out)) wrong_type(key, *value, "a finite number");
    return true;
  }
  bool read_bool(const std::string& key, bool* out) const {
    const json* value = find(key);
    if (!value) return false;
    if (!value->is_boolean()) wrong_type(key, *value, "true or false");
    *out = value->get<bool>();
    return true;
  }
  bool read_string(const std::string& key, std::string* out) const {
    const json* value = find(key);
    if (!value) return false;
    if (!value->is_string()) wrong_type(key, *value, "a string");
    *out = value->get<std::string>();
    return true;
  }

  // Optional fields whose JSON null means "unset".
  void read_optional_int(const std::string& key, std::optional<int64_t>* out) const {
    if (!present(key)) return;
    int64_t value = 0;
    read_int(key, &value);
    *out = value;
  }
  void read_optional_double(const std::string& key, std::optional<double>* out) const {
    if (!present(key)) return;
    double value = 0;
    read_double(key, &value);
    *out = value;
  }
  void read_optional_bool(const std::string& key, std::optional<bool>* out) const {
    if (!present(key)) return;
    bool value = false;
    read_bool(key, &value);
    *out = value;
  }

  // transformers' eos_token_id is `int | list[int] | None`; all three spellings occur on the Hub.
  std::vector<int64_t> read_token_ids(const std::string& key) const {
    std::vector<int64_t> ids;
    if (!present(key)) return ids;
    const json& value = *find(key);
    int64_t id = 0;
    if (json_integral_int64(value, &id)) {
      ids.push_back(id);
    } else if (value.is_array()) {
      for (const json& element : value) {
        if (!json_integral_int64(element, &id)) wrong_type(key, value, "an integer or a list of integers");
        ids.push_back(id);
      }
    } else {
      wrong_type(key, value, "an integer or a list of integers");
    }
    for (int64_t each : ids)
      if (each < 0) fail(what_, ": ", prefix_, key, " must not be negative, found ", json_excerpt(value));
    return ids;
  }

  // A field spelled two ways (a Hub name and transformers' attribute_map alias):
  // either may appear; both must then agree.
  void read_int_either(const std::string& key, const std::string& alias, int64_t* out) const {
    int64_t from_key = 0;
    int64_t from_alias = 0;
    const bool has_key = read_int(key, &from_key);
    const bool has_alias = read_int(alias, &from_alias);
    if (has_key && has_alias && from_key != from_alias)
      fail(what_, ": ", prefix_, key, " ", from_key, " and its alias ", alias, " ", from_alias, " disagree");
    if (has_key) *out = from_key;
    else if (has_alias) *out = from_alias;
  }

 private:
  const json& object_;
  const std::string& what_;
  std::string prefix_;
};

json parse_object(const std::string& json_text, const std::string& what) {
  json root = parse_json(json_text, what);
  if (!root.is_object())
    fail(what, ": expected a JSON object at the top level, found ", json_type_name(root), " ", json_excerpt(root));
  return root;
}

// One rope block: `rope_scaling` (legacy; "type" or "rope_type") or
// `rope_parameters` (transformers 5). Only unscaled rope is implemented, so
// any other rope_type (yarn, linear, dynamic...) is refused here.
void read_rope_block(const json& root, const std::string& block, const std::string& what, Glm4MoeConfig* config) {
  const auto found = root.find(block);
  if (found == root.end() || found->is_null()) return;
  if (!found->is_object())
    fail(what, ": ", block, " must be an object or null, found ", json_excerpt(*found), " (",
         json_type_name(*found), ")");
  const FieldReader fields(*found, what, block + ".");
  for (const char* type_key : {"type", "rope_type"}) {
    std::string type;
    if (!fields.read_string(type_key, &type)) continue;
    if (type != "default")
      fail(what, ": ", block, ".", type_key, " ", quoted(type),
           " is not supported (only \"default\", i.e. no rope scaling)");
    config->rope_type = type;
  }
  fields.read_double("rope_theta", &config->rope_theta);
  fields.read_double("partial_rotary_factor", &config->partial_rotary_factor);
}

void require_choice(const std::string& what, const char* field, const std::string& value, const char* supported) {
  if (value != supported)
    fail(what, ": ", field, " ", quoted(value), " is not supported (only ", quoted(supported), ")");
}

void require_at_least(const std::string& what, const char* field, int64_t value, int64_t minimum) {
  if (value < minimum) fail(what, ": ", field, " must be at least ", minimum, ", found ", value);
}

void validate(const Glm4MoeConfig& config, const std::string& what, bool head_dim_derived) {
  require_choice(what, "model_type", config.model_type, "glm4_moe");
  require_choice(what, "hidden_act", config.hidden_act, "silu");
  require_choice(what, "topk_method", config.topk_method, "noaux_tc");
  require_choice(what, "scoring_func", config.scoring_func, "sigmoid");

  require_at_least(what, "vocab_size", config.vocab_size, 1);
  require_at_least(what, "hidden_size", config.hidden_size, 1);
  require_at_least(what, "intermediate_size", config.intermediate_size, 1);
  require_at_least(what, "moe_intermediate_size", config.moe_intermediate_size, 1);
  require_at_least(what, "num_hidden_layers", config.num_hidden_layers, 1);
  // first_k_dense_replace >= num_hidden_layers is legal: every layer is then dense.
  require_at_least(what, "first_k_dense_replace", config.first_k_dense_replace, 0);
  require_at_least(what, "max_position_embeddings", config.max_position_embeddings, 1);
  require_at_least(what, "num_attention_heads", config.num_attention_heads, 1);
  require_at_least(what, "num_key_value_heads", config.num_key_value_heads, 1);
  require_at_least(what, "head_dim", config.head_dim, 1);
  require_at_least(what, "n_routed_experts", config.n_routed_experts, 1);
  require_at_least(what, "n_shared_experts", config.n_shared_experts, 0);
  require_at_least(what, "num_experts_per_tok", config.num_experts_per_tok, 1);
  require_at_least(what, "n_group", config.n_group, 1);
  require_at_least(what, "topk_group", config.topk_group, 1);
  require_at_least(what, "num_nextn_predict_layers", config.num_nextn_predict_layers, 0);

  if (config.num_attention_heads % config.num_key_value_heads != 0)
    fail(what, ": num_attention_heads ", config.num_attention_heads, " is not a multiple of num_key_value_heads ",
         config.num_key_value_heads);

  if (!(config.rms_norm_eps > 0)) fail(what, ": rms_norm_eps must be positive, found ", config.rms_norm_eps);
  if (!(config.rope_theta > 0)) fail(what, ": rope_theta must be positive, found ", config.rope_theta);
  if (!(config.partial_rotary_factor > 0 && config.partial_rotary_factor <= 1))
    fail(what, ": partial_rotary_factor must be in (0, 1], found ", config.partial_rotary_factor);
  if (!(config.routed_scaling_factor > 0))
    fail(what, ": routed_scaling_factor must be positive, found ", config.routed_scaling_factor);
  // Rotary rotates pairs of dimensions, so it needs an even whole number of them.
  const double rotary = static_cast<double>(config.head_dim) * config.partial_rotary_factor;
  if (std::fabs(rotary - std::round(rotary)) > 1e-9 || static_cast<int64_t>(std::llround(rotary)) % 2 != 0)
    fail(what, ": head_dim ", config.head_dim, " * partial_rotary_factor ", config.partial_rotary_factor, " = ",
         rotary, " is not an even whole number of rotary dimensions",
         head_dim_derived ? " (head_dim is absent, so it is hidden_size / num_attention_heads)" : "");

  if (config.num_experts_per_tok > config.n_routed_experts)
    fail(what, ": num_experts_per_tok ", config.num_experts_per_tok, " exceeds n_routed_experts ",
         config.n_routed_experts);
  if (config.n_routed_experts % config.n_group != 0)
    fail(what, ": n_routed_experts ", config.n_routed_experts, " is not divisible by n_group ", config.n_group);
  if (config.topk_group > config.n_group)
    fail(what, ": topk_group ", config.topk_group, " exceeds n_group ", config.n_group);
  // Routing picks experts only from the topk_group best groups, so it can never pick more than they hold.
  if (config.num_experts_per_tok > config.topk_group * config.experts_per_group())
    fail(what, ": num_experts_per_tok ", config.num_experts_per_tok, " exceeds the ",
         config.topk_group * config.experts_per_group(), " experts that routing can reach (topk_group ",
         config.topk_group, " * ", config.experts_per_group(), " experts per group)");

  if (config.bos_token_id && *config.bos_token_id < 0)
    fail(what, ": bos_token_id must not be negative, found ", *config.bos_token_id);
  if (config.pad_token_id && *config.pad_token_id < 0)
    fail(what, ": pad_token_id must not be negative, found ", *config.pad_token_id);
}

}  // namespace

int64_t Glm4MoeConfig::rotary_dim() const {
  return static_cast<int64_t>(std::llround(static_cast<double>(head_dim) * partial_rotary_factor));
}

Glm4MoeConfig parse_config_json(const std::string& json_text, const std::string& what) {
  const json root = parse_object(json_text, what);
  const FieldReader fields(root, what);
  Glm4MoeConfig config;

  fields.read_string("model_type", &config.model_type);
  fields.read_int("vocab_size", &config.vocab_size);
  fields.read_int("hidden_size", &config.hidden_size);
  fields.read_int("intermediate_size", &config.intermediate_size);
  fields.read_int("moe_intermediate_size", &config.moe_intermediate_size);
  fields.read_int("num_hidden_layers", &config.num_hidden_layers);
  fields.read_int("first_k_dense_replace", &config.first_k_dense_replace);
  fields.read_int("max_position_embeddings", &config.max_position_embeddings);

  fields.read_int("num_attention_heads", &config.num_attention_heads);
  fields.read_int("num_key_value_heads", &config.num_key_value_heads);
  fields.read_bool("attention_bias", &config.attention_bias);
  fields.read_bool("use_qk_norm", &config.use_qk_norm);
  fields.read_string("hidden_act", &config.hidden_act);
  fields.read_double("rms_norm_eps", &config.rms_norm_eps);

  // Precedence as in transformers' RotaryEmbeddingConfigMixin: values inside a
  // rope block win over the top-level rope_theta / partial_rotary_factor.
  fields.read_double("rope_theta", &config.rope_theta);
  fields.read_double("partial_rotary_factor", &config.partial_rotary_factor);
  read_rope_block(root, "rope_scaling", what, &config);
  read_rope_block(root, "rope_parameters", what, &config);

  // transformers' attribute_map aliases: num_local_experts, num_mtp_layers.
  fields.read_int_either("n_routed_experts", "num_local_experts", &config.n_routed_experts);
  fields.read_int("n_shared_experts", &config.n_shared_experts);
  fields.read_int("num_experts_per_tok", &config.num_experts_per_tok);
  fields.read_int("n_group", &config.n_group);
  fields.read_int("topk_group", &config.topk_group);
  fields.read_double("routed_scaling_factor", &config.routed_scaling_factor);
  fields.read_bool("norm_topk_prob", &config.norm_topk_prob);
  fields.read_string("scoring_func", &config.scoring_func);
  fields.read_string("topk_method", &config.topk_method);
  fields.read_int_either("num_nextn_predict_layers", "num_mtp_layers", &config.num_nextn_predict_layers);

  fields.read_bool("tie_word_embeddings", &config.tie_word_embeddings);
  fields.read_optional_int("bos_token_id", &config.bos_token_id);
  fields.read_optional_int("pad_token_id", &config.pad_token_id);
  config.eos_token_ids = fields.read_token_ids("eos_token_id");

  // Checked before head_dim is derived from them, so the division below is safe.
  require_at_least(what, "hidden_size", config.hidden_size, 1);
  require_at_least(what, "num_attention_heads", config.num_attention_heads, 1);
  // transformers' attention uses getattr(config, "head_dim", hidden_size // num_attention_heads).
  const bool head_dim_derived = !fields.present("head_dim");
  if (head_dim_derived)
    config.head_dim = config.hidden_size / config.num_attention_heads;
  else
    fields.read_int("head_dim", &config.head_dim);

  validate(config, what, head_dim_derived);
  config.quantization = parse_quantization(root, what);
  return config;
}

GenerationDefaults parse_generation_config_json(const std::string& json_text, const std::string& what) {
  const json root = parse_object(json_text, what);
  const FieldReader fields(root, what);
  GenerationDefaults defaults;
  fields.read_optional_bool("do_sample", &defaults.do_sample);
  fields.read_optional_double("temperature", &defaults.temperature);
  fields.read_optional_int("top_k", &defaults.top_k);
  fields.read_optional_double("top_p", &defaults.top_p);
  fields.read_optional_double("min_p", &defaults.min_p);
  fields.read_optional_int("max_new_tokens", &defaults.max_new_tokens);
  defaults.eos_token_ids = fields.read_token_ids("eos_token_id");

  if (defaults.temperature && *defaults.temperature < 0)
    fail(what, ": temperature must not be negative, found ", *defaults.temperature);
  if (defaults.top_k && *defaults.top_k < 0) fail(what, ": top_k must not be negative, found ", *defaults.top_k);
  if (defaults.top_p && !(*defaults.top_p >= 0 && *defaults.top_p <= 1))
    fail(what, ": top_p must be in [0, 1], found ", *defaults.top_p);
  if (defaults.min_p && !(*defaults.min_p >= 0 && *defaults.min_p <= 1))
    fail(what, ": min_p must be in [0, 1], found ", *defaults.min_p);
  if (defaults.max_new_tokens && *defaults.max_new_tokens < 0)
    fail(what, ": max_new_tokens must not be negative, found ", *defaults.max_new_tokens);
  return defaults;
}

Glm4MoeConfig load_config(const std::string& directory, GenerationDefaults* generation) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::exists(directory, error)) fail("model directory ", directory, " does not exist");
  if (!fs::is_directory(directory, error)) fail("model directory ", directory, " is not a directory");

  const std::string config_path = (fs::path(directory) / "config.json").string();
  if (!fs::exists(config_path, error)) fail(config_path, " not found");
  Glm4MoeConfig config = parse_config_json(read_text_file(config_path), config_path);

  const std::string generation_path = (fs::path(directory) / "generation_config.json").string();
  GenerationDefaults defaults;
  if (fs::exists(generation_path, error))
    defaults = parse_generation_config_json(read_text_file(generation_path), generation_path);
  // generation_config.json is what transformers' generate() reads its stop
  // tokens from, and GLM ships its full eos list (e.g. <|user|>, <|observation|>)
  // only there in some releases, so its ids take precedence when given.
  if (!defaults.eos_token_ids.empty()) config.eos_token_ids = defaults.eos_token_ids;
  if (generation) *generation = defaults;
  return config;
}

}  // namespace glm
