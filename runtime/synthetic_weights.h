#pragma once
// Deterministic random weights for any ModelConfig, generated on demand: element i of tensor `name`
// is a pure function of (seed, name, i), so any tensor or any slice of one (a tensor-parallel shard)
// is reproducible on any rank without storing or communicating it.
//
// Values are mean + std * z, z a bounded normal-ish variate (sum of four uniforms, unit variance),
// with std like a real initialisation so activations stay sane through many layers:
//   q/k/v, gate/up, lm_head          std 1/sqrt(in_features)
//   o_proj, down_proj                std 1/sqrt(in_features) / sqrt(2 * num_layers) (residual branches)
//   embed_tokens                     std 1 (1/sqrt(hidden) when tied, so the LM head gives unit logits)
//   RMSNorm weights                  mean 1, std 0.02
//   biases                           std 0.02

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/model_config.h"
#include "runtime/weight_source.h"

namespace retro::runtime {

class SyntheticWeightSource : public WeightSource {
 public:
  explicit SyntheticWeightSource(ModelConfig config, uint64_t seed = 0);

  std::vector<std::string> names() const override;  // expected_weights(config) order
  bool contains(const std::string& name) const override;
  WeightInfo info(const std::string& name) const override;  // dtype: config.dtype
  void read(const std::string& name, const Tensor& dst) const override;
  // Generates only the block's elements.
  void read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const override;

  // Elements [first, first + count) of the row-major tensor, in fp32 (before any rounding to the
  // destination dtype that read() does).
  void generate(const std::string& name, int64_t first, int64_t count, float* out) const;
  float mean(const std::string& name) const;
  float stddev(const std::string& name) const;

  const ModelConfig& config() const { return config_; }
  uint64_t seed() const { return seed_; }

 private:
  struct Spec {
    WeightInfo info;
    uint64_t key;  // per-tensor stream: mix(seed ^ hash(name))
    float mean;
    float std;
  };
  const Spec& spec(const std::string& name) const;
  void fill(const std::string& name, int64_t first, int64_t count, uint8_t* out, DType to) const;
  void fill_parallel(const std::string& name, int64_t first, int64_t count, uint8_t* out, DType to) const;

  ModelConfig config_;
  uint64_t seed_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, Spec> specs_;
};

}  // namespace retro::runtime
