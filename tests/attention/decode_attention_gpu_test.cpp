// GPU decode attention against its CPU twin (dense_attention_causal) on fresh random inputs:
// GQA groups, head_dim 64 and 128, variable lengths in one batch (zero included), split and unsplit
// plans, both KV layouts. Outputs are poisoned with NaN before each run. Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <random>
#include <vector>

#include "attention/dense_attention.h"
#include "runtime/core/error.h"
#include "runtime/core/dtype.h"
#include "runtime/core/system_info.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/decode_attention.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

struct Case {
  int batch, num_q_heads, num_kv_heads, head_dim;
  std::vector<int32_t> lens;
  bool token_major;  // [b, t, h, d] instead of [b, h, t, d]
};

class DecodeAttentionGpu : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
  }
};

TEST_P(DecodeAttentionGpu, MatchesTheCpuTwin) {
  const Case c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int d = c.head_dim, hq = c.num_q_heads, hk = c.num_kv_heads;
  int max_len = 0;
  for (int32_t l : c.lens) max_len = std::max(max_len, l);
  const int64_t cap = std::max(max_len, 1);

  auto rand_bf16 = [&](size_t n, float scale) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = float_to_bf16(normal(rng) * scale);
    return v;
  };
  std::vector<bf16> q = rand_bf16(size_t(c.batch) * hq * d, 1.0f);
  std::vector<bf16> k = rand_bf16(size_t(c.batch) * hk * cap * d, 1.0f);
  std::vector<bf16> v = rand_bf16(size_t(c.batch) * hk * cap * d, 1.0f);
  // A few strongly aligned keys so the softmax is peaked somewhere, as in real attention.
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < hk; ++h)
      if (c.lens[b] > 0) {
        int t = std::uniform_int_distribution<int>(0, c.lens[b] - 1)(rng);
        size_t off = c.token_major ? ((size_t(b) * cap + t) * hk + h) * d : ((size_t(b) * hk + h) * cap + t) * d;
        for (int i = 0; i < d; ++i) k[off + i] = float_to_bf16(bf16_to_float(q[(size_t(b) * hq + h * (hq / hk)) * d + i]) * 3.0f);
      }

  const int64_t sb = int64_t(hk) * cap * d;
  const int64_t sh = c.token_major ? d : cap * d;
  const int64_t st = c.token_major ? int64_t(hk) * d : d;

  void *dq, *dk, *dv, *dout, *dws = nullptr;
  float* dlse;
  int32_t* dlens;
  ASSERT_CUDA(cudaMalloc(&dq, q.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dk, k.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dv, v.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dout, q.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dlse, size_t(c.batch) * hq * 4));
  ASSERT_CUDA(cudaMalloc(&dlens, c.lens.size() * 4));
  ASSERT_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dlens, c.lens.data(), c.lens.size() * 4, cudaMemcpyHostToDevice));

  cuda::DecodeAttentionPlan plan = cuda::plan_decode_attention(c.batch, hq, hk, d, max_len);
  if (plan.workspace_bytes) {
    ASSERT_CUDA(cudaMalloc(&dws, plan.workspace_bytes));
  }
  cuda::DecodeAttentionParams p;
  p.q = dq;
  p.q_stride_batch = int64_t(hq) * d;
  p.k = dk;
  p.v = dv;
  p.kv_stride_batch = sb;
  p.kv_stride_head = sh;
  p.kv_stride_token = st;
  p.seq_lens = dlens;
  p.out = dout;
  p.lse = dlse;
  p.batch = c.batch;
  p.num_q_heads = hq;
  p.num_kv_heads = hk;
  p.head_dim = d;
  p.sm_scale = 1.0f / std::sqrt(float(d));
  for (cuda::DecodeKernel kernel : {cuda::DecodeKernel::kRegisters, cuda::DecodeKernel::kAsync}) {
    SCOPED_TRACE(kernel == cuda::DecodeKernel::kAsync ? "cp.async kernel" : "register kernel");
    ASSERT_CUDA(cudaMemset(dout, 0xFF, q.size() * 2));  // bf16 NaN
    ASSERT_CUDA(cudaMemset(dlse, 0xFF, size_t(c.batch) * hq * 4));
    p.kernel = kernel;
    cuda::run_decode_attention(p, plan, dws, nullptr);
    ASSERT_CUDA(cudaDeviceSynchronize());

    std::vector<bf16> out(q.size());
    std::vector<float> lse(size_t(c.batch) * hq);
    ASSERT_CUDA(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));

    AttentionShape shape{hq, hk, d};
    for (int b = 0; b < c.batch; ++b) {
      const int n = c.lens[b];
      std::vector<float> qf(size_t(hq) * d), kf(size_t(n) * hk * d), vf(size_t(n) * hk * d), ref(size_t(hq) * d),
          ref_lse(hq);
      for (size_t i = 0; i < qf.size(); ++i) qf[i] = bf16_to_float(q[size_t(b) * hq * d + i]);
      for (int t = 0; t < n; ++t)
        for (int h = 0; h < hk; ++h)
          for (int i = 0; i < d; ++i) {
            size_t src = size_t(b * sb + h * sh + int64_t(t) * st + i);
            kf[(size_t(t) * hk + h) * d + i] = bf16_to_float(k[src]);
            vf[(size_t(t) * hk + h) * d + i] = bf16_to_float(v[src]);
          }
      if (n > 0) dense_attention_causal(shape, qf.data(), 1, kf.data(), vf.data(), n, ref.data(), ref_lse.data());
      double err = 0, norm = 0;
      for (int i = 0; i < hq * d; ++i) {
        float g = bf16_to_float(out[size_t(b) * hq * d + i]);
        ASSERT_FALSE(std::isnan(g)) << "batch " << b << " element " << i << " not written";
        float r = n > 0 ? ref[i] : 0.0f;
        err += double(g - r) * (g - r);
        norm += double(r) * r;
      }
      if (n > 0) {
        EXPECT_LT(std::sqrt(err / norm), 1e-2) << "batch " << b << " len " << n;
        for (int h = 0; h < hq; ++h)
          EXPECT_NEAR(lse[size_t(b) * hq + h], ref_lse[h], 1e-3 * std::fabs(ref_lse[h]) + 1e-3);
      } else {
        EXPECT_EQ(err, 0.0) << "empty sequence must give zeros";
        for (int h = 0; h < hq; ++h) EXPECT_TRUE(std::isinf(lse[size_t(b) * hq + h]) && lse[size_t(b) * hq + h] < 0);
      }
    }
  }
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  cudaFree(dlse);
  cudaFree(dlens);
  if (dws) cudaFree(dws);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeAttentionGpu,
    testing::Values(Case{1, 32, 8, 128, {100}, false},                 // unsplit, shorter than one tile
                    Case{1, 32, 8, 128, {70000}, false},               // many splits
                    Case{4, 32, 8, 128, {5000, 1, 0, 33000}, true},    // ragged batch, token-major layout
                    Case{2, 8, 2, 64, {4097, 12000}, false},           // head_dim 64, GQA 4
                    Case{3, 64, 8, 128, {2048, 9000, 300}, true},      // GQA 8 (70B shapes)
                    Case{2, 16, 16, 64, {1000, 20000}, false}),        // MHA
    [](const testing::TestParamInfo<Case>& info) {
      const Case& c = info.param;
      return "b" + std::to_string(c.batch) + "_q" + std::to_string(c.num_q_heads) + "_kv" +
             std::to_string(c.num_kv_heads) + "_d" + std::to_string(c.head_dim) + "_max" +
             std::to_string(*std::max_element(c.lens.begin(), c.lens.end())) + (c.token_major ? "_tmajor" : "");
    });

TEST(DecodeAttentionPlan, RejectsUnsupportedShapes) {
  EXPECT_THROW(cuda::plan_decode_attention(1, 32, 8, 96, 1000, 132), Error);
  EXPECT_THROW(cuda::plan_decode_attention(1, 30, 8, 128, 1000, 132), Error);
  EXPECT_THROW(cuda::plan_decode_attention(1, 24, 8, 128, 1000, 132), Error);  // group 3 not built
  cuda::DecodeAttentionPlan p = cuda::plan_decode_attention(1, 32, 8, 128, 128 * 1024, 132);
  EXPECT_GT(p.num_splits, 1);
  EXPECT_GE(int64_t(p.num_splits) * p.tokens_per_split, 128 * 1024);
}

#else
TEST(DecodeAttentionGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
