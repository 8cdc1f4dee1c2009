#pragma once
// Helpers shared by the test executables.

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

#include "attention/wave_index.h"
#include "runtime/core/error.h"

namespace retro::test_support {

// The trained test model, beside the repository (tests run from the repository root).
inline constexpr const char* kNeedleModelDir = "../shared/models/needle-llama-tiny";

// Wave budgets so small that retrieval, estimation and dropped clusters all take part within a few
// hundred tokens: a floor of 4 retrieved clusters, 10% retrieved, 30% estimated.
inline attention::WaveIndexParams small_wave_budgets(attention::WaveIndexParams p = {}) {
  p.min_retrieve_clusters = 4;
  p.retrieval_budget = 0.1;
  p.estimation_budget = 0.3;
  return p;
}

// Runs fn and expects a retro::Error of `kind` whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, ErrorKind kind, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << *parts.begin() << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// The message of the retro::Error that fn throws, with its kind checked (empty, and a failure, when
// fn does not throw).
template <typename Fn>
std::string error_of(Fn&& fn, ErrorKind kind = ErrorKind::kInvalidInput) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a retro::Error";
  return {};
}

}  // namespace retro::test_support
