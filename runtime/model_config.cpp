#include "runtime/model_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/core/error.h"

namespace retro::runtime {

using nlohmann::json;

const char* rope_scaling_type_name(RopeScalingType type) {
  switch (type) {
    case RopeScalingType::kNone: return "default";
    case RopeScalingType::kLinear: return "linear";
    case RopeScalingType::kLlama3: return "llama3";
    case RopeScalingType::kYarn: return "yarn";
  }
  return "unknown";
}

namespace {

// The model families the forward pass implements; they differ only in the defaults and in the few
// switches (q/k/v bias, sliding window) read below.
enum class Family { kLlama, kQwen2, kMistral };

struct KnownFamily {
  const char* model_type;
  const char* architecture;
  Family family;
};
constexpr KnownFamily kKnownFamilies[] = {
    {"llama", "LlamaForCausalLM", Family::kLlama},
    {"qwen2", "Qwen2ForCausalLM", Family::kQwen2},
    {"mistral", "MistralForCausalLM", Family::kMistral},
};

std::string known_architectures() {
  std::string out;
  for (const KnownFamily& k : kKnownFamilies) {
    if (!out.empty()) out += ", ";
    out += k.architecture;
  }
  return out;
}

std::string known_model_types() {
  std::string out;
  for (const KnownFamily& k : kKnownFamilies) {
    if (!out.empty()) out += ", ";
    out += k.model_type;
  }
  return out;
}

// Typed access to the fields of one JSON object; every failure names the source file and the field
// path ("rope_scaling.factor") so a user can fix the file without reading this code.
class Fields {
 public:
  Fields(const json& object, const std::string& source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  // Present and not null: HF writes null for "not set" (sliding_window, head_dim, rope_scaling).
  bool has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }
  const json& at(const char* key) const { return object_.at(key); }

  int required_int(const char* key) const {
    RETRO_CHECK_INPUT(has(key), "{}: missing required field '{}'", source_, path(key));
    return to_int(at(key), key);
  }
  int optional_int(const char* key, int fallback) const { return has(key) ? to_int(at(key), key) : fallback; }

  double required_number(const char* key) const {
    RETRO_CHECK_INPUT(has(key), "{}: missing required field '{}'", source_, path(key));
    return to_number(at(key), key);
  }
  double optional_number(const char* key, double fallback) const {
    return has(key) ? to_number(at(key), key) : fallback;
  }

  bool optional_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    RETRO_CHECK_INPUT(v.is_boolean(), "{}: field '{}' must be true or false, got {}", source_, path(key), v.dump());
    return v.get<bool>();
  }

  std::string optional_string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    RETRO_CHECK_INPUT(v.is_string(), "{}: field '{}' must be a string, got {}", source_, path(key), v.dump());
    return v.get<std::string>();
  }

  // A token id or a list of them (eos_token_id is either); null or absent gives an empty list.
  std::vector<int> optional_int_list(const char* key) const {
    std::vector<int> out;
    if (!has(key)) return out;
    const json& v = at(key);
    if (v.is_array()) {
      for (const json& item : v) out.push_back(to_int(item, key));
    } else {
      out.push_back(to_int(v, key));
    }
    return out;
  }

  std::string path(const char* key) const { return prefix_.empty() ? std::string(key) : prefix_ + "." + key; }

 private:
  int to_int(const json& v, const char* key) const {
    // 8192.0 is an integer too: some exporters write every number as a float.
    RETRO_CHECK_INPUT(v.is_number(), "{}: field '{}' must be an integer, got {}", source_, path(key), v.dump());
    double d = v.get<double>();
    RETRO_CHECK_INPUT(
        std::floor(d) == d && d >= std::numeric_limits<int>::min() && d <= std::numeric_limits<int>::max(),
        "{}: field '{}' must be an integer that fits 32 bits, got {}", source_, path(key), v.dump());
    return static_cast<int>(d);
  }
  double to_number(const json& v, const char* key) const {
    RETRO_CHECK_INPUT(v.is_number(), "{}: field '{}' must be a number, got {}", source_, path(key), v.dump());
    double d = v.get<double>();
    RETRO_CHECK_INPUT(std::isfinite(d), "{}: field '{}' must be finite, got {}", source_, path(key), v.dump());
    return d;
  }

  const json& object_;
  const std::string& source_;
  std::string prefix_;
};

Family resolve_family(const Fields& top, const json& config, const std::string& source, ModelConfig& out) {
  const KnownFamily* by_arch = nullptr;
  if (top.has("architectures")) {
    const json& archs = config.at("architectures");
    RETRO_CHECK_INPUT(archs.is_array() && !archs.empty() && archs[0].is_string(),
                      "{}: field 'architectures' must be a non-empty list of strings, got {}", source, archs.dump());
    out.architecture = archs[0].get<std::string>();
    for (const KnownFamily& k : kKnownFamilies)
      if (out.architecture == k.architecture) by_arch = &k;
    RETRO_CHECK_INPUT(by_arch != nullptr, "{}: unknown architecture '{}' in field 'architectures' (supported: {})",
                      source, out.architecture, known_architectures());
  }
  out.model_type = top.optional_string("model_type", "");
  if (out.model_type.empty()) {
    RETRO_CHECK_INPUT(by_arch != nullptr, "{}: missing required field 'model_type' (and no 'architectures')", source);
    out.model_type = by_arch->model_type;
    return by_arch->family;
  }
  for (const KnownFamily& k : kKnownFamilies) {
    if (out.model_type == k.model_type) {
      if (out.architecture.empty()) out.architecture = k.architecture;
      return k.family;
    }
  }
  RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: unknown model_type '{}' (supported: {})", source, out.model_type,
                   known_model_types());
}

void parse_rope(const Fields& top, const json& config, const std::string& source, ModelConfig& out) {
  // transformers 5 keeps every RoPE setting in `rope_parameters`; older files split them between a
  // top-level `rope_theta` and an optional `rope_scaling` object.
  const json* params = nullptr;
  std::string prefix;
  if (top.has("rope_parameters")) {
    params = &config.at("rope_parameters");
    prefix = "rope_parameters";
  } else if (top.has("rope_scaling")) {
    params = &config.at("rope_scaling");
    prefix = "rope_scaling";
  }
  out.rope_theta = static_cast<float>(top.optional_number("rope_theta", 10000.0));
  RopeScaling& rs = out.rope_scaling;
  rs = RopeScaling{};
  if (params == nullptr) return;
  RETRO_CHECK_INPUT(params->is_object(), "{}: field '{}' must be an object, got {}", source, prefix, params->dump());
  Fields p(*params, source, prefix);
  out.rope_theta = static_cast<float>(p.optional_number("rope_theta", out.rope_theta));

  std::string type = p.optional_string("rope_type", p.optional_string("type", "default"));
  const std::string type_field = p.path(p.has("rope_type") ? "rope_type" : "type");
  if (type == "default") {
    rs.type = RopeScalingType::kNone;
    return;
  }
  if (type == "dynamic" || type == "longrope" || type == "su" || type == "proportional") {
    RETRO_THROW_KIND(ErrorKind::kUnsupported,
                     "{}: RoPE type '{}' in field '{}' is not implemented (supported: "
                     "default, linear, llama3, yarn)",
                     source, type, type_field);
  }
  // Pretraining context: a top-level original_max_position_embeddings wins, as transformers does.
  int original =
      top.optional_int("original_max_position_embeddings", p.optional_int("original_max_position_embeddings", 0));
  if (type == "linear") {
    rs.type = RopeScalingType::kLinear;
    rs.factor = static_cast<float>(p.required_number("factor"));
  } else if (type == "llama3") {
    rs.type = RopeScalingType::kLlama3;
    rs.factor = static_cast<float>(p.required_number("factor"));
    rs.low_freq_factor = static_cast<float>(p.required_number("low_freq_factor"));
    rs.high_freq_factor = static_cast<float>(p.required_number("high_freq_factor"));
    rs.original_max_position_embeddings = original > 0 ? original : out.max_position_embeddings;
  } else if (type == "yarn") {
    rs.type = RopeScalingType::kYarn;
    rs.original_max_position_embeddings = original > 0 ? original : out.max_position_embeddings;
    // Without an explicit factor the ratio of the two context lengths is the factor.
    rs.factor = p.has("factor") ? static_cast<float>(p.required_number("factor"))
                                : static_cast<float>(static_cast<double>(out.max_position_embeddings) /
                                                     rs.original_max_position_embeddings);
    rs.attention_factor = static_cast<float>(p.optional_number("attention_factor", 0.0));
    // transformers reads these with `or`: a zero means the default too.
    double beta_fast = p.optional_number("beta_fast", 0.0);
    double beta_slow = p.optional_number("beta_slow", 0.0);
    rs.beta_fast = beta_fast != 0.0 ? static_cast<float>(beta_fast) : 32.0f;
    rs.beta_slow = beta_slow != 0.0 ? static_cast<float>(beta_slow) : 1.0f;
    rs.mscale = static_cast<float>(p.optional_number("mscale", 0.0));
    rs.mscale_all_dim = static_cast<float>(p.optional_number("mscale_all_dim", 0.0));
    rs.truncate = p.optional_bool("truncate", true);
  } else {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput,
                     "{}: unknown RoPE type '{}' in field '{}' (supported: default, "
                     "linear, llama3, yarn)",
                     source, type, type_field);
  }
}

DType parse_config_dtype(const Fields& top, const std::string& source) {
  // transformers 5 writes `dtype`; earlier versions `torch_dtype`.
  const char* key = top.has("dtype") ? "dtype" : (top.has("torch_dtype") ? "torch_dtype" : nullptr);
  if (key == nullptr) return DType::kBF16;
  std::string name = top.optional_string(key, "");
  try {
    return parse_dtype(name);
  } catch (const Error&) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: field '{}' names an unknown dtype '{}'", source, key, name);
  }
}

}  // namespace

void ModelConfig::validate() const {
  auto positive = [](int value, const char* field) {
    RETRO_CHECK_INPUT(value > 0, "{} must be positive, got {}", field, value);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  RETRO_CHECK_INPUT(num_heads % num_kv_heads == 0,
                    "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", num_heads, num_kv_heads);
  RETRO_CHECK_INPUT(head_dim % 2 == 0, "head_dim must be even for rotary embeddings, got {}", head_dim);
  RETRO_CHECK_INPUT(std::isfinite(rms_norm_eps) && rms_norm_eps > 0.0f, "rms_norm_eps must be positive, got {}",
                    rms_norm_eps);
  RETRO_CHECK_INPUT(std::isfinite(rope_theta) && rope_theta > 1.0f, "rope_theta must be greater than 1, got {}",
                    rope_theta);
  RETRO_CHECK_INPUT(sliding_window >= 0, "sliding_window must be positive or absent, got {}", sliding_window);
  const RopeScaling& rs = rope_scaling;
  if (rs.type != RopeScalingType::kNone) {
    RETRO_CHECK_INPUT(std::isfinite(rs.factor) && rs.factor > 0.0f, "rope scaling factor must be positive, got {}",
                      rs.factor);
  }
  if (rs.type == RopeScalingType::kLlama3) {
    RETRO_CHECK_INPUT(rs.low_freq_factor > 0.0f && rs.high_freq_factor > rs.low_freq_factor,
                      "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got {} and {}",
                      rs.low_freq_factor, rs.high_freq_factor);
  }
  if (rs.type == RopeScalingType::kLlama3 || rs.type == RopeScalingType::kYarn) {
    RETRO_CHECK_INPUT(rs.original_max_position_embeddings > 0,
                      "{} rope scaling needs a positive original_max_position_embeddings, got {}",
                      rope_scaling_type_name(rs.type), rs.original_max_position_embeddings);
  }
  if (rs.type == RopeScalingType::kYarn) {
    RETRO_CHECK_INPUT(rs.beta_fast > 0.0f && rs.beta_slow > 0.0f, "yarn beta_fast and beta_slow must be positive");
    RETRO_CHECK_INPUT(rs.attention_factor >= 0.0f, "yarn attention_factor must not be negative, got {}",
                      rs.attention_factor);
  }
  RETRO_CHECK_INPUT(bos_token_id >= -1 && bos_token_id < vocab_size, "bos_token_id {} is outside the vocabulary of {}",
                    bos_token_id, vocab_size);
  for (int id : eos_token_ids) {
    RETRO_CHECK_INPUT(id >= 0 && id < vocab_size, "eos_token_id {} is outside the vocabulary of {}", id, vocab_size);
  }
}

ModelConfig parse_model_config(const json& config, const std::string& source) {
  RETRO_CHECK_INPUT(config.is_object(), "{}: expected a JSON object at the top level, got {}", source,
                    config.type_name());
  Fields top(config, source);
  ModelConfig out;
  Family family = resolve_family(top, config, source, out);

  out.vocab_size = top.required_int("vocab_size");
  out.hidden_size = top.required_int("hidden_size");
  out.intermediate_size = top.required_int("intermediate_size");
  out.num_layers = top.required_int("num_hidden_layers");
  out.num_heads = top.required_int("num_attention_heads");
  out.num_kv_heads = top.optional_int("num_key_value_heads", out.num_heads);
  RETRO_CHECK_INPUT(out.num_heads > 0, "{}: num_attention_heads must be positive, got {}", source, out.num_heads);
  if (top.has("head_dim")) {
    out.head_dim = top.required_int("head_dim");
  } else {
    RETRO_CHECK_INPUT(out.hidden_size % out.num_heads == 0,
                      "{}: hidden_size ({}) is not a multiple of num_attention_heads ({}) and no head_dim is given",
                      source, out.hidden_size, out.num_heads);
    out.head_dim = out.hidden_size / out.num_heads;
  }

  std::string act = top.optional_string("hidden_act", "silu");
  RETRO_CHECK_KIND(act == "silu", ErrorKind::kUnsupported,
                   "{}: hidden_act '{}' is not implemented (the MLP is SwiGLU with silu)", source, act);

  // Defaults are those of the transformers config class of each family.
  const int default_max_positions = family == Family::kLlama ? 2048 : family == Family::kQwen2 ? 32768 : 131072;
  out.max_position_embeddings = top.optional_int("max_position_embeddings", default_max_positions);
  out.rms_norm_eps = static_cast<float>(top.optional_number("rms_norm_eps", 1e-6));
  out.tie_word_embeddings = top.optional_bool("tie_word_embeddings", false);
  out.dtype = parse_config_dtype(top, source);
  out.bos_token_id = top.has("bos_token_id") ? top.required_int("bos_token_id") : -1;
  out.eos_token_ids = top.optional_int_list("eos_token_id");
  parse_rope(top, config, source, out);

  switch (family) {
    case Family::kLlama:
      out.attention_bias = top.optional_bool("attention_bias", false);
      out.attention_out_bias = out.attention_bias;
      out.mlp_bias = top.optional_bool("mlp_bias", false);
      out.sliding_window = 0;
      break;
    case Family::kQwen2:
      // Qwen2's q/k/v projections always carry a bias; its configs usually do not say so.
      out.attention_bias = true;
      out.mlp_bias = false;
      out.sliding_window = top.optional_bool("use_sliding_window", false) ? top.optional_int("sliding_window", 0) : 0;
      break;
    case Family::kMistral:
      out.attention_bias = false;
      out.mlp_bias = false;
      out.sliding_window = top.optional_int("sliding_window", 0);
      break;
  }

  try {
    out.validate();
  } catch (const Error& e) {
    RETRO_THROW_KIND(e.kind(), "{}: {}", source, e.message());
  }
  return out;
}

ModelConfig load_model_config(const std::filesystem::path& dir_or_file) {
  std::filesystem::path path = dir_or_file;
  if (std::filesystem::is_directory(path)) path /= "config.json";
  std::ifstream in(path);
  RETRO_CHECK_KIND(in.good(), ErrorKind::kIo, "cannot open model config {}", path.string());
  std::stringstream text;
  text << in.rdbuf();
  json config;
  try {
    config = json::parse(text.str());
  } catch (const json::exception& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}: not valid JSON: {}", path.string(), e.what());
  }
  return parse_model_config(config, path.string());
}

}  // namespace retro::runtime
