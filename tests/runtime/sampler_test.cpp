// Sampler: greedy, temperature, top-k, top-p and seeding, against exact probabilities.

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/sampler.h"

namespace retro::runtime {
namespace {

TEST(Sampler, GreedyPicksTheLargestLogitAndTheLowestIdOnTies) {
  Sampler s(SamplingParams{});
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(logits), 1);
  EXPECT_EQ(argmax(logits), 1);
}

TEST(Sampler, NanLogitsAreAnError) {
  Sampler greedy(SamplingParams{});
  std::vector<float> logits = {0.1f, NAN};
  EXPECT_THROW(greedy.sample(logits), Error);
  Sampler hot(SamplingParams{.temperature = 1.0f});
  EXPECT_THROW(hot.sample(logits), Error);
}

TEST(Sampler, InvalidParametersAreRejected) {
  EXPECT_THROW(Sampler(SamplingParams{.temperature = 1.0f, .top_p = 0.0f}), Error);
  EXPECT_THROW(Sampler(SamplingParams{.temperature = 1.0f, .top_p = 1.5f}), Error);
  EXPECT_THROW(Sampler(SamplingParams{.temperature = 1.0f, .top_k = -1}), Error);
  EXPECT_THROW(Sampler(SamplingParams{.temperature = NAN}), Error);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> logits(500);
  for (float& l : logits) l = n(rng);
  auto run = [&](uint64_t seed) {
    Sampler s(SamplingParams{.temperature = 1.0f, .seed = seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

// Frequencies over many draws match softmax(logits / T) restricted as configured.
void expect_distribution(const SamplingParams& p, const std::vector<float>& logits, const std::vector<double>& expected) {
  Sampler s(p);
  const int draws = 200000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) counts[static_cast<size_t>(s.sample(logits))]++;
  for (size_t i = 0; i < logits.size(); ++i) {
    double f = static_cast<double>(counts[i]) / draws;
    double sigma = std::sqrt(expected[i] * (1 - expected[i]) / draws);
    EXPECT_NEAR(f, expected[i], 5 * sigma + 1e-9) << "token " << i;
  }
}

TEST(Sampler, TemperatureSamplesTheSoftmax) {
  std::vector<float> logits = {1.0f, 2.0f, 0.0f, -1.0f};
  const float t = 0.7f;
  std::vector<double> e(4);
  double z = 0;
  for (size_t i = 0; i < 4; ++i) z += e[i] = std::exp(logits[i] / t);
  for (double& v : e) v /= z;
  expect_distribution({.temperature = t, .seed = std::random_device{}()}, logits, e);
}

TEST(Sampler, TopKKeepsOnlyTheKLargest) {
  std::vector<float> logits = {1.0f, 2.0f, 0.0f, 1.5f};
  double a = std::exp(2.0), b = std::exp(1.5);
  expect_distribution({.temperature = 1.0f, .top_k = 2, .seed = std::random_device{}()}, logits,
                      {0.0, a / (a + b), 0.0, b / (a + b)});
}

TEST(Sampler, TopPKeepsTheShortestPrefixReachingP) {
  // probabilities 0.5, 0.3, 0.2 (logits are their logs): top_p 0.75 keeps {0, 1}.
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  expect_distribution({.temperature = 1.0f, .top_p = 0.75f, .seed = std::random_device{}()}, logits,
                      {0.5 / 0.8, 0.3 / 0.8, 0.0});
  // A tiny top_p still keeps the most likely token.
  expect_distribution({.temperature = 1.0f, .top_p = 0.01f, .seed = 3}, logits, {1.0, 0.0, 0.0});
}

}  // namespace
}  // namespace retro::runtime
