// GPU causal prefill attention (tensor cores) against its CPU twin dense_attention_causal on fresh
// random inputs: full prompts and chunks over a longer stored prefix, GQA and MHA, head_dim 64 and
// 128, lengths that are not tile multiples. Outputs poisoned with NaN first. Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <random>
#include <vector>

#include "attention/dense_attention.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/system_info.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/prefill_attention.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

struct PrefillCase {
  int64_t n_q, n_kv;
  int num_q_heads, num_kv_heads, head_dim;
  bool head_major = false;  // K/V stored [kv_heads, n_kv, head_dim] instead of [n_kv, kv_heads, head_dim]
};

using cuda::PrefillKernel;

// Every shape on both kernels (the wgmma one where the GPU and the build have it).
class PrefillAttentionGpu : public testing::TestWithParam<std::tuple<PrefillCase, PrefillKernel>> {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
    if (std::get<1>(GetParam()) != PrefillKernel::kMmaSync && !cuda::prefill_wgmma_available())
      GTEST_SKIP() << "the wgmma kernel needs a Hopper GPU and a build with sm_90a code";
  }
};

TEST_P(PrefillAttentionGpu, MatchesTheCpuTwin) {
  const PrefillCase c = std::get<0>(GetParam());
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int hq = c.num_q_heads, hk = c.num_kv_heads, d = c.head_dim;
  auto make = [&](size_t n, float scale, std::vector<float>* f) {
    std::vector<bf16> b(n);
    f->resize(n);
    for (size_t i = 0; i < n; ++i) {
      b[i] = float_to_bf16(normal(rng) * scale);
      (*f)[i] = bf16_to_float(b[i]);
    }
    return b;
  };
  std::vector<float> qf, kf, vf;
  // Larger query/key scales give peaked softmaxes, as trained models do.
  auto q = make(size_t(c.n_q) * hq * d, 1.5f, &qf);
  auto k = make(size_t(c.n_kv) * hk * d, 1.5f, &kf);
  auto v = make(size_t(c.n_kv) * hk * d, 1.0f, &vf);
  void *dq, *dk, *dv, *dout;
  float* dlse;
  ASSERT_CUDA(cudaMalloc(&dq, q.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dk, k.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dv, v.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dout, q.size() * 2));
  ASSERT_CUDA(cudaMalloc(&dlse, size_t(c.n_q) * hq * 4));
  ASSERT_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  // The device copy in the case's layout; the reference reads the token-major host copy.
  auto layout = [&](const std::vector<bf16>& x) {
    if (!c.head_major) return x;
    std::vector<bf16> y(x.size());
    for (int64_t t = 0; t < c.n_kv; ++t)
      for (int h = 0; h < hk; ++h)
        std::copy_n(x.begin() + (t * hk + h) * d, d, y.begin() + (int64_t(h) * c.n_kv + t) * d);
    return y;
  };
  ASSERT_CUDA(cudaMemcpy(dk, layout(k).data(), k.size() * 2, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dv, layout(v).data(), v.size() * 2, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dout, 0xFF, q.size() * 2));
  ASSERT_CUDA(cudaMemset(dlse, 0xFF, size_t(c.n_q) * hq * 4));
  cuda::PrefillAttentionParams p;
  p.q = dq;
  p.q_stride_token = int64_t(hq) * d;
  p.k = dk;
  p.v = dv;
  p.kv_stride_token = c.head_major ? d : int64_t(hk) * d;
  p.kv_stride_head = c.head_major ? c.n_kv * d : d;
  p.out = dout;
  p.lse = dlse;
  p.n_q = c.n_q;
  p.n_kv = c.n_kv;
  p.num_q_heads = hq;
  p.num_kv_heads = hk;
  p.head_dim = d;
  p.sm_scale = 1.0f / std::sqrt(float(d));
  p.kernel = std::get<1>(GetParam());
  cuda::run_prefill_attention(p, nullptr);
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<bf16> out(q.size());
  std::vector<float> lse(size_t(c.n_q) * hq);
  ASSERT_CUDA(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  cudaFree(dlse);

  std::vector<float> ref(q.size()), ref_lse(lse.size());
  dense_attention_causal(AttentionShape{hq, hk, d}, qf.data(), c.n_q, kf.data(), vf.data(), c.n_kv, ref.data(),
                         ref_lse.data());
  double err = 0, norm = 0, lse_err = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const float g = bf16_to_float(out[i]);
    ASSERT_FALSE(std::isnan(g)) << "element " << i << " not written";
    err += double(g - ref[i]) * (g - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  for (size_t i = 0; i < lse.size(); ++i) lse_err = std::max(lse_err, double(std::fabs(lse[i] - ref_lse[i])));
  // P is rounded to bf16 before P V (as every tensor-core flash attention does): ~4e-3 relative.
  EXPECT_LT(std::sqrt(err / norm), 1.5e-2);
  EXPECT_LT(lse_err, 2e-2);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillAttentionGpu,
                         testing::Combine(testing::Values(PrefillCase{1000, 1000, 8, 2, 128},  // whole prompt, GQA 4
                                                          PrefillCase{300, 2077, 8, 2, 128},  // a chunk over a prefix
                                                          PrefillCase{1, 700, 8, 2, 128},     // a single query
                                                          PrefillCase{100, 100, 8, 2, 128},   // one K/V tile
                                                          PrefillCase{517, 517, 8, 8, 64},    // MHA, head_dim 64
                                                          PrefillCase{129, 4000, 16, 2, 64},  // GQA 8
                                                          PrefillCase{700, 1500, 8, 2, 128, true}),  // head-major K/V
                                          testing::Values(PrefillKernel::kMmaSync, PrefillKernel::kWgmma,
                                                          PrefillKernel::kWgmmaPipelined, PrefillKernel::kWgmmaTma,
                                                          PrefillKernel::kWgmmaWs)),
                         [](const testing::TestParamInfo<std::tuple<PrefillCase, PrefillKernel>>& info) {
                           const PrefillCase& c = std::get<0>(info.param);
                           const PrefillKernel kernel = std::get<1>(info.param);
                           const char* name = kernel == PrefillKernel::kWgmmaWs          ? "wgmma_ws_"
                                              : kernel == PrefillKernel::kWgmmaTma         ? "wgmma_tma_"
                                              : kernel == PrefillKernel::kWgmmaPipelined ? "wgmma_pipelined_"
                                              : kernel == PrefillKernel::kWgmma        ? "wgmma_"
                                                                                       : "mma_";
                           return std::string(name) + "q" + std::to_string(c.n_q) + "_kv" + std::to_string(c.n_kv) + "_h" +
                                  std::to_string(c.num_q_heads) + "x" + std::to_string(c.num_kv_heads) + "_d" +
                                  std::to_string(c.head_dim) + (c.head_major ? "_head_major" : "");
                         });

#else
TEST(PrefillAttentionGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
