#include "runtime/synthetic_weights.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/model_weights.h"

namespace retro::runtime {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's output function: a bijective mix, so distinct counters never collide.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t hash_name(const std::string& name) {  // FNV-1a
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// Sum of four 16-bit uniforms, centred and scaled to unit variance (Irwin-Hall, n = 4): one hash per
// element instead of the log/sqrt/cos of Box-Muller, with tails bounded at +-2*sqrt(3).
inline float normalish(uint64_t bits) {
  constexpr float kScale = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 2^16
  const uint32_t s = static_cast<uint32_t>(bits & 0xFFFF) + static_cast<uint32_t>((bits >> 16) & 0xFFFF) +
                     static_cast<uint32_t>((bits >> 32) & 0xFFFF) + static_cast<uint32_t>(bits >> 48);
  // Each chunk is uniform on {0..65535}; +0.5 centres it, so the sum has mean 4 * 32768.
  return (static_cast<float>(s) + 2.0f - 4.0f * 32768.0f) * kScale;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

SyntheticWeightSource::SyntheticWeightSource(ModelConfig config, uint64_t seed)
    : config_(std::move(config)), seed_(seed) {
  config_.validate();
  const float residual = 1.0f / std::sqrt(2.0f * static_cast<float>(config_.num_layers));
  for (WeightInfo& info : expected_weights(config_)) {
    Spec s;
    s.key = mix64(seed_ ^ hash_name(info.name));
    const std::string& n = info.name;
    if (ends_with(n, "norm.weight")) {
      s.mean = 1.0f;
      s.std = 0.02f;
    } else if (ends_with(n, ".bias")) {
      s.mean = 0.0f;
      s.std = 0.02f;
    } else if (n == "model.embed_tokens.weight") {
      s.mean = 0.0f;
      s.std = config_.tie_word_embeddings ? 1.0f / std::sqrt(static_cast<float>(config_.hidden_size)) : 1.0f;
    } else {
      // A linear layer [out_features, in_features].
      s.mean = 0.0f;
      s.std = 1.0f / std::sqrt(static_cast<float>(info.shape[1]));
      if (ends_with(n, "o_proj.weight") || ends_with(n, "down_proj.weight")) s.std *= residual;
    }
    names_.push_back(n);
    s.info = std::move(info);
    specs_.emplace(names_.back(), std::move(s));
  }
}

const SyntheticWeightSource::Spec& SyntheticWeightSource::spec(const std::string& name) const {
  auto it = specs_.find(name);
  RETRO_CHECK_INPUT(it != specs_.end(), "synthetic {} weights: no tensor '{}'", config_.architecture, name);
  return it->second;
}

std::vector<std::string> SyntheticWeightSource::names() const { return names_; }
bool SyntheticWeightSource::contains(const std::string& name) const { return specs_.count(name) != 0; }
WeightInfo SyntheticWeightSource::info(const std::string& name) const { return spec(name).info; }
float SyntheticWeightSource::mean(const std::string& name) const { return spec(name).mean; }
float SyntheticWeightSource::stddev(const std::string& name) const { return spec(name).std; }

void SyntheticWeightSource::generate(const std::string& name, int64_t first, int64_t count, float* out) const {
  const Spec& s = spec(name);
  const int64_t numel = s.info.shape.numel();
  RETRO_CHECK(first >= 0 && count >= 0 && first + count <= numel, "elements [{}, {}) are outside tensor '{}' of {}",
              first, first + count, name, numel);
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t counter = static_cast<uint64_t>(first + i) + 1;
    out[i] = s.mean + s.std * normalish(mix64(s.key + counter * kGolden));
  }
}

// Generates elements [first, first + count) of `name` into out (dtype `to`) through a small fp32 block.
void SyntheticWeightSource::fill(const std::string& name, int64_t first, int64_t count, uint8_t* out, DType to) const {
  constexpr int64_t kBlock = 4096;
  std::vector<float> block(static_cast<size_t>(std::min<int64_t>(kBlock, count)));
  const int64_t out_elem = static_cast<int64_t>(dtype_size(to));
  for (int64_t b = 0; b < count; b += kBlock) {
    const int64_t n = std::min(kBlock, count - b);
    generate(name, first + b, n, block.data());
    convert_host(block.data(), DType::kFP32, out + b * out_elem, to, static_cast<size_t>(n));
  }
}

// Elements [first, first + count) into out, split over the cores when large (embeddings of
// 128K-token vocabularies): the counter-based generator makes every chunk independent.
void SyntheticWeightSource::fill_parallel(const std::string& name, int64_t first, int64_t count, uint8_t* out,
                                          DType to) const {
  constexpr int64_t kParallelMin = int64_t{1} << 22;
  const int threads = count >= kParallelMin ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : 1;
  if (threads == 1) {
    fill(name, first, count, out, to);
    return;
  }
  const int64_t out_elem = static_cast<int64_t>(dtype_size(to));
  std::vector<std::thread> workers;
  const int64_t chunk = (count + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = std::min(count, t * chunk);
    const int64_t end = std::min(count, begin + chunk);
    if (begin < end)
      workers.emplace_back([=, this] { fill(name, first + begin, end - begin, out + begin * out_elem, to); });
  }
  for (std::thread& w : workers) w.join();
}

void SyntheticWeightSource::read(const std::string& name, const Tensor& dst) const {
  const Spec& s = spec(name);
  RETRO_CHECK(dst.device().is_cpu() && dst.is_contiguous(),
              "tensor '{}' must be read into a contiguous host tensor, "
              "got {}",
              name, dst.str());
  RETRO_CHECK(dst.shape() == s.info.shape, "tensor '{}' has shape {}, destination has shape {}", name,
              s.info.shape.str(), dst.shape().str());
  RETRO_CHECK(is_floating(dst.dtype()), "tensor '{}' cannot be read as {}", name, dtype_name(dst.dtype()));
  fill_parallel(name, 0, s.info.shape.numel(), static_cast<uint8_t*>(dst.data()), dst.dtype());
}

void SyntheticWeightSource::read_block(const std::string& name, const WeightBlock& block, const Tensor& dst) const {
  const auto [rows, columns] = check_block(name, block, dst);
  auto* out = static_cast<uint8_t*>(dst.data());
  if (block.axis == WeightBlock::Axis::kRows) {
    fill_parallel(name, block.begin * columns, (block.end - block.begin) * columns, out, dst.dtype());
    return;
  }
  const int64_t width = block.end - block.begin, out_row = width * static_cast<int64_t>(dst.element_size());
  for (int64_t r = 0; r < rows; ++r) fill(name, r * columns + block.begin, width, out + r * out_row, dst.dtype());
}

}  // namespace retro::runtime
