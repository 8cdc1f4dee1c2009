#pragma once
// Shared by the GPU tests: a CUDA status assertion, and a check that skips a test, with its reason,
// when no CUDA device is visible (CI runs without one).

#include <gtest/gtest.h>

#include "runtime/core/system_info.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr
#endif

// In SetUp() or a test body.
#define RETRO_SKIP_WITHOUT_GPU()                                                                  \
  if (::retro::query_gpus().empty()) GTEST_SKIP() << "no CUDA device: " << ::retro::query_cuda_runtime().error
