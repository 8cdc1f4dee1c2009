// WaveLayerKv on the GPU: with every cluster retrieved, wave attention is exact attention, so it must
// equal dense attention over every token of the slot — through the prefill build, decode appends,
// growth by update segments, a small cluster cache that evicts (and no cache at all), and a slot
// released and refilled with a new sequence (fresh cache uids: no stale part). Outputs poisoned.
// Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/system_info.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/wave_kv.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

struct Sequence {
  std::vector<float> k, v;  // [tokens, kv_heads, d], bf16 values
};

class WaveKvGpu : public ::testing::TestWithParam<bool> {  // param: with a cluster cache
 protected:
  void SetUp() override {
    if (query_gpus().empty()) GTEST_SKIP() << "no CUDA device: " << query_cuda_runtime().error;
  }
};

std::vector<bf16> random_rows(std::mt19937& rng, int64_t rows, int64_t width, std::vector<float>* append) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bf16> out(size_t(rows * width));
  for (auto& x : out) {
    x = float_to_bf16(normal(rng));
    append->push_back(bf16_to_float(x));
  }
  return out;
}

TEST_P(WaveKvGpu, FullRetrievalEqualsDenseAttention) {
  const bool with_cache = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int hq = 8, hk = 2, d = 128, G = hq / hk, batch = 2;
  WaveIndexParams params;
  params.segment_tokens = 1024;
  params.update_segment_tokens = 128;
  params.retrieval_budget = 1.0;
  params.estimation_budget = 0.0;
  cuda::WaveBufferParams buffer;
  buffer.num_slots = 64;
  buffer.ways = 4;
  buffer.slot_tokens = 16;

  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  cuda::HostPagePool pool(size_t(256) * d * 2, size_t(4) << 20, *pinned);
  cuda::WaveLayerKv kv(cuda::WaveKvShape{batch, hq, hk, d, 4000}, params, buffer, pool, *device);
  cuda::WaveCacheView cache;
  Buffer cache_mem;
  if (with_cache) {
    const cuda::WaveCacheLayout layout = cuda::plan_wave_cache(buffer, d);
    cache_mem = device->allocate(layout.bytes, MemoryPurpose::kKvCache);
    cache = cuda::init_wave_cache(layout, cache_mem.data(), nullptr);
  }

  std::vector<Sequence> seqs(batch);
  const int64_t row = int64_t(hk) * d;
  auto upload = [&](const std::vector<bf16>& h) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(h.size(), 1) * 2), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    return p;
  };
  auto prefill = [&](int slot, int64_t n) {
    seqs[size_t(slot)] = Sequence{};
    auto k = random_rows(rng, n, row, &seqs[size_t(slot)].k);
    auto v = random_rows(rng, n, row, &seqs[size_t(slot)].v);
    void* dk = upload(k);
    void* dv = upload(v);
    kv.build(slot, dk, dv, n, row, nullptr);
    ASSERT_CUDA(cudaDeviceSynchronize());
    cudaFree(dk);
    cudaFree(dv);
  };
  prefill(0, 3000);
  prefill(1, 1500);
  EXPECT_EQ(kv.length(0), 3000);
  EXPECT_EQ(kv.steady_tokens(0), params.sink_tokens + params.window_tokens);
  // Tokens between the sink and the window are clustered, in segments of segment_tokens.
  EXPECT_EQ(kv.clustered_tokens(0), 3000 - params.sink_tokens - params.window_tokens);
  EXPECT_EQ(kv.num_clusters(0), cuda::wave_build_num_clusters(cuda::WaveBuildShape{
                                    hk, kv.clustered_tokens(0), d, params.tokens_per_cluster, params.segment_tokens,
                                    params.kmeans_iterations}));

  void *dq, *dout, *dk_new, *dv_new;
  float* dlse;
  ASSERT_CUDA(cudaMalloc(&dq, size_t(batch) * hq * d * 2));
  ASSERT_CUDA(cudaMalloc(&dout, size_t(batch) * hq * d * 2));
  ASSERT_CUDA(cudaMalloc(&dk_new, size_t(batch) * row * 2));
  ASSERT_CUDA(cudaMalloc(&dv_new, size_t(batch) * row * 2));
  ASSERT_CUDA(cudaMalloc(&dlse, size_t(batch) * hq * 4));
  const float scale = 1.0f / std::sqrt(float(d));
  int grown = 0, checked = 0;
  for (int step = 0; step < 300; ++step) {
    if (step == 150) {  // slot 1 gets a new sequence: its cached parts must never come back
      kv.release(1, nullptr);
      prefill(1, 2100);
    }
    for (int b = 0; b < batch; ++b)
      if (kv.growth_due(b)) {
        kv.grow(b, nullptr);
        ++grown;
      }
    std::vector<float> kf, vf, qf;
    auto kn = random_rows(rng, batch, row, &kf);
    auto vn = random_rows(rng, batch, row, &vf);
    auto q = random_rows(rng, batch, int64_t(hq) * d, &qf);
    for (int b = 0; b < batch; ++b) {
      seqs[size_t(b)].k.insert(seqs[size_t(b)].k.end(), kf.begin() + b * row, kf.begin() + (b + 1) * row);
      seqs[size_t(b)].v.insert(seqs[size_t(b)].v.end(), vf.begin() + b * row, vf.begin() + (b + 1) * row);
    }
    ASSERT_CUDA(cudaMemcpy(dk_new, kn.data(), kn.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dv_new, vn.data(), vn.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemset(dout, 0xFF, size_t(batch) * hq * d * 2));
    ASSERT_CUDA(cudaMemset(dlse, 0xFF, size_t(batch) * hq * 4));
    kv.append(dk_new, dv_new, batch, nullptr);
    kv.attend(dq, dout, dlse, batch, scale, cache, nullptr);
    ASSERT_CUDA(cudaDeviceSynchronize());
    if (step % 7 != 0 && step != 299) continue;
    ++checked;
    std::vector<bf16> out(size_t(batch) * hq * d);
    std::vector<float> lse(size_t(batch) * hq);
    ASSERT_CUDA(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
    for (int b = 0; b < batch; ++b) {
      const Sequence& s = seqs[size_t(b)];
      const int64_t n = int64_t(s.k.size()) / row;
      ASSERT_EQ(kv.length(b), n) << "slot " << b;
      for (int h = 0; h < hq; ++h) {
        const float* qh = qf.data() + (size_t(b) * hq + h) * d;
        const int kvh = h / G;
        std::vector<double> logit(static_cast<size_t>(n));
        double mx = -INFINITY;
        for (int64_t t = 0; t < n; ++t) {
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += double(qh[i]) * s.k[size_t(t * row + kvh * d + i)];
          logit[size_t(t)] = dot * scale;
          mx = std::max(mx, logit[size_t(t)]);
        }
        double sum = 0;
        std::vector<double> o(static_cast<size_t>(d), 0.0);
        for (int64_t t = 0; t < n; ++t) {
          const double p = std::exp(logit[size_t(t)] - mx);
          sum += p;
          for (int i = 0; i < d; ++i) o[size_t(i)] += p * s.v[size_t(t * row + kvh * d + i)];
        }
        double num = 0, den = 0;
        for (int i = 0; i < d; ++i) {
          const double want = o[size_t(i)] / sum;
          const double got = bf16_to_float(out[(size_t(b) * hq + h) * d + size_t(i)]);
          ASSERT_FALSE(std::isnan(got)) << "step " << step << " slot " << b << " head " << h;
          num += (got - want) * (got - want);
          den += want * want;
        }
        EXPECT_LT(std::sqrt(num / den), 1.5e-2) << "step " << step << " slot " << b << " head " << h;
        EXPECT_NEAR(lse[size_t(b) * hq + h], mx + std::log(sum), 2e-3 * std::max(1.0, std::abs(mx)))
            << "step " << step << " slot " << b << " head " << h;
      }
    }
  }
  EXPECT_GE(grown, 3);  // both slots crossed update segments
  EXPECT_GT(checked, 40);
  const cuda::WaveKvStats st = kv.stats(batch, nullptr);
  EXPECT_EQ(st.retrieved_clusters, st.non_empty_clusters);  // every cluster retrieved
  EXPECT_EQ(st.estimated_clusters, 0);
  EXPECT_GT(st.clusters, 0);
  if (with_cache) {
    const cuda::WaveCacheCounters c = cuda::read_wave_cache_counters(cache, nullptr);
    EXPECT_GT(c.hit_parts, 0u);
    EXPECT_GT(c.miss_parts, 0u);
    EXPECT_GT(c.admitted_parts, 0u);
  }
  cudaFree(dq);
  cudaFree(dout);
  cudaFree(dk_new);
  cudaFree(dv_new);
  cudaFree(dlse);
}

INSTANTIATE_TEST_SUITE_P(Cache, WaveKvGpu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "small_cache" : "no_cache"; });

#else
TEST(WaveKvGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
