// WaveLayerKv on the GPU: with every cluster retrieved, wave attention is exact attention, so it must
// equal dense attention over every token of the slot — through the prefill build, decode appends,
// growth by update segments, a small cluster cache that evicts (and no cache at all), and a slot
// released and refilled with a new sequence (fresh cache uids: no stale part). Outputs poisoned.
// With fp8-e4m3 host KV the same holds against dense attention over the K/V as the host store
// rounds them (clustered tokens x / scale in e4m3, times the cluster's scale), and the quantising
// store kernel is checked byte for byte against the host conversion of runtime/core/dtype.h.
// Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/system_info.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/host_store.h"
#include "attention/cuda/wave_kv.h"
#include "attention/cuda/wave_kv_ops.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

struct Sequence {
  std::vector<float> k, v;  // [tokens, kv_heads, d], bf16 values
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

// The scenario of both full-retrieval tests on one WaveLayerKv (8 q / 2 kv heads of 128, 2 slots):
// slots prefilled with 3000 and 1500 tokens, then 300 decode steps that cross update segments, with
// slot 1 released and refilled with 2100 new tokens at step 150 (its cached parts must never come
// back). Outputs are poisoned before every step; every 7th step and the last, `check` sees them.
class FullRetrievalRun {
 public:
  static constexpr int kHq = 8, kHk = 2, kD = 128, kBatch = 2;
  static constexpr int64_t kRow = int64_t(kHk) * kD;
  // `tokens` rows of K (value false) or V [tokens, kHk, kD] bf16, their values appended as stored.
  using Rows = std::function<std::vector<bf16>(int64_t tokens, bool value, std::vector<float>* append)>;
  // A checked step: out [kBatch, kHq, kD], lse [kBatch, kHq], q [kBatch, kHq, kD].
  using Check = std::function<void(int step, const std::vector<bf16>& out, const std::vector<float>& lse,
                                   const std::vector<float>& q)>;

  FullRetrievalRun(cuda::WaveLayerKv& kv, const cuda::WaveCacheView& cache, std::mt19937& rng, Rows rows)
      : kv_(kv), cache_(cache), rng_(rng), rows_(std::move(rows)), seqs(kBatch) {}

  void prefill(int slot, int64_t n) {
    seqs[size_t(slot)] = Sequence{};
    const std::vector<bf16> k = rows_(n, false, &seqs[size_t(slot)].k), v = rows_(n, true, &seqs[size_t(slot)].v);
    void* dk = upload(k);
    void* dv = upload(v);
    kv_.build(slot, dk, dv, n, kRow, nullptr);
    ASSERT_CUDA(cudaDeviceSynchronize());
    cudaFree(dk);
    cudaFree(dv);
  }

  // The 300 decode steps (after prefill(0, 3000) and prefill(1, 1500)).
  void decode(const Check& check) {
    void *dq, *dout, *dk_new, *dv_new;
    float* dlse;
    ASSERT_CUDA(cudaMalloc(&dq, size_t(kBatch) * kHq * kD * 2));
    ASSERT_CUDA(cudaMalloc(&dout, size_t(kBatch) * kHq * kD * 2));
    ASSERT_CUDA(cudaMalloc(&dk_new, size_t(kBatch) * kRow * 2));
    ASSERT_CUDA(cudaMalloc(&dv_new, size_t(kBatch) * kRow * 2));
    ASSERT_CUDA(cudaMalloc(&dlse, size_t(kBatch) * kHq * 4));
    for (int step = 0; step < 300 && !::testing::Test::HasFatalFailure(); ++step) {
      if (step == 150) {
        kv_.release(1, nullptr);
        prefill(1, 2100);
      }
      std::vector<float> kf, vf, qf;
      const std::vector<bf16> kn = rows_(kBatch, false, &kf), vn = rows_(kBatch, true, &vf);
      ASSERT_CUDA(cudaMemcpy(dk_new, kn.data(), kn.size() * 2, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemcpy(dv_new, vn.data(), vn.size() * 2, cudaMemcpyHostToDevice));
      // Growth as soon as a segment is due, or (grow_late) only when it has waited all its slack,
      // the latest a caller may (append refuses to take one more token).
      for (int b = 0; b < kBatch; ++b) {
        if (!kv_.growth_due(b)) continue;
        if (grow_late && kv_.growth_steps_left(b) > 0) continue;
        if (grow_late) {
          EXPECT_THROW(kv_.append(dk_new, dv_new, kBatch, nullptr), retro::Error) << "slot " << b;
        }
        kv_.grow(b, nullptr);
        ++grown;
      }
      const std::vector<bf16> q = random_rows(rng_, kBatch, int64_t(kHq) * kD, &qf);
      for (int b = 0; b < kBatch; ++b) {
        seqs[size_t(b)].k.insert(seqs[size_t(b)].k.end(), kf.begin() + b * kRow, kf.begin() + (b + 1) * kRow);
        seqs[size_t(b)].v.insert(seqs[size_t(b)].v.end(), vf.begin() + b * kRow, vf.begin() + (b + 1) * kRow);
      }
      ASSERT_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
      ASSERT_CUDA(cudaMemset(dout, 0xFF, size_t(kBatch) * kHq * kD * 2));
      ASSERT_CUDA(cudaMemset(dlse, 0xFF, size_t(kBatch) * kHq * 4));
      kv_.append(dk_new, dv_new, kBatch, nullptr);
      kv_.attend(dq, dout, dlse, kBatch, 1.0f / std::sqrt(float(kD)), cache_, nullptr);
      ASSERT_CUDA(cudaDeviceSynchronize());
      if (step % 7 != 0 && step != 299) continue;
      ++checked;
      std::vector<bf16> out(size_t(kBatch) * kHq * kD);
      std::vector<float> lse(size_t(kBatch) * kHq);
      ASSERT_CUDA(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
      for (int b = 0; b < kBatch; ++b) ASSERT_EQ(kv_.length(b), int64_t(seqs[size_t(b)].k.size()) / kRow) << "slot " << b;
      check(step, out, lse, qf);
    }
    for (void* p : {dq, dout, dk_new, dv_new, static_cast<void*>(dlse)}) cudaFree(p);
  }

  bool grow_late = false;
  int grown = 0, checked = 0;

 private:
  static void* upload(const std::vector<bf16>& h) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(h.size(), 1) * 2), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    return p;
  }

  cuda::WaveLayerKv& kv_;
  const cuda::WaveCacheView& cache_;
  std::mt19937& rng_;
  Rows rows_;

 public:
  std::vector<Sequence> seqs;  // every token of each slot's current sequence, as stored in bf16
};

// Dense attention of query head h of slot b over the sequence's tokens [0, n), in double: the output
// and the log-sum-exp (natural log). kval / vval give element i of token t's K / V row of the head.
struct DenseReference {
  std::vector<double> o;
  double lse = 0;
  double max_logit = 0;
};
template <typename KVal, typename VVal>
DenseReference dense_reference(const float* q, int64_t n, double scale, KVal kval, VVal vval) {
  const int d = FullRetrievalRun::kD;
  std::vector<double> logit(static_cast<size_t>(n));
  double mx = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += double(q[i]) * kval(t, i);
    logit[size_t(t)] = dot * scale;
    mx = std::max(mx, logit[size_t(t)]);
  }
  DenseReference r;
  r.o.assign(size_t(d), 0.0);
  double sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double p = std::exp(logit[size_t(t)] - mx);
    sum += p;
    for (int i = 0; i < d; ++i) r.o[size_t(i)] += p * vval(t, i);
  }
  for (double& x : r.o) x /= sum;
  r.lse = mx + std::log(sum);
  r.max_logit = mx;
  return r;
}

// Both scenarios' index: segments of 1024 and update segments of 128 tokens, every cluster retrieved.
WaveIndexParams full_retrieval_params() {
  WaveIndexParams params;
  params.segment_tokens = 1024;
  params.update_segment_tokens = 128;
  params.retrieval_budget = 1.0;
  params.estimation_budget = 0.0;
  return params;
}

// A cluster cache of 64 slots of 16 rows (4 ways): small enough to evict, for host KV of `kv_dtype`.
cuda::WaveBufferParams small_cache(DType kv_dtype) {
  cuda::WaveBufferParams buffer;
  buffer.num_slots = 64;
  buffer.ways = 4;
  buffer.slot_tokens = 16;
  buffer.kv_dtype = kv_dtype;
  return buffer;
}

// The cache of `buffer` in `memory` (kept by the caller), or none.
cuda::WaveCacheView make_cache(bool with_cache, const cuda::WaveBufferParams& buffer, Allocator& device, Buffer& memory) {
  if (!with_cache) return {};
  const cuda::WaveCacheLayout layout = cuda::plan_wave_cache(buffer, FullRetrievalRun::kD);
  memory = device.allocate(layout.bytes, MemoryPurpose::kKvCache);
  return cuda::init_wave_cache(layout, memory.data(), nullptr);
}

// The full-retrieval scenario's fixture (param: with a cluster cache): its shape, and a random
// stream from a fresh seed.
class FullRetrievalGpu : public ::testing::TestWithParam<bool> {
 protected:
  static constexpr int hq = FullRetrievalRun::kHq, hk = FullRetrievalRun::kHk, d = FullRetrievalRun::kD, G = hq / hk;
  static constexpr int batch = FullRetrievalRun::kBatch;
  static constexpr int64_t row = FullRetrievalRun::kRow;
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
    rng_.seed(seed_);
  }
  const uint32_t seed_ = std::random_device{}();
  std::mt19937 rng_;
};

class WaveKvGpu : public FullRetrievalGpu {
 protected:
  // Full retrieval equals dense attention with update segments grown as soon as due, or as late as
  // their slack allows (the rows a waiting segment keeps in the steady zone are attended there).
  void full_retrieval_equals_dense(bool with_cache, bool grow_late);
};

void WaveKvGpu::full_retrieval_equals_dense(bool with_cache, bool grow_late) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::mt19937& rng = rng_;
  const WaveIndexParams params = full_retrieval_params();
  const cuda::WaveBufferParams buffer = small_cache(DType::kBF16);
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  cuda::HostPagePool pool(size_t(256) * d * 2, size_t(4) << 20, *pinned);
  cuda::WaveLayerKv kv(cuda::WaveKvShape{batch, hq, hk, d, 4000}, params, buffer, pool, *device);
  Buffer cache_mem;
  const cuda::WaveCacheView cache = make_cache(with_cache, buffer, *device, cache_mem);

  FullRetrievalRun run(kv, cache, rng, [&](int64_t tokens, bool, std::vector<float>* append) {
    return random_rows(rng, tokens, row, append);
  });
  run.grow_late = grow_late;
  run.prefill(0, 3000);
  run.prefill(1, 1500);
  EXPECT_EQ(kv.length(0), 3000);
  EXPECT_EQ(kv.steady_tokens(0), params.sink_tokens + params.window_tokens);
  // Tokens between the sink and the window are clustered, in segments of segment_tokens.
  EXPECT_EQ(kv.clustered_tokens(0), 3000 - params.sink_tokens - params.window_tokens);
  EXPECT_EQ(kv.num_clusters(0), cuda::wave_build_num_clusters(cuda::WaveBuildShape{
                                    hk, kv.clustered_tokens(0), d, params.tokens_per_cluster, params.segment_tokens,
                                    params.kmeans_iterations}));

  const double scale = 1.0 / std::sqrt(double(d));
  run.decode([&](int step, const std::vector<bf16>& out, const std::vector<float>& lse, const std::vector<float>& qf) {
    for (int b = 0; b < batch; ++b) {
      const Sequence& s = run.seqs[size_t(b)];
      const int64_t n = int64_t(s.k.size()) / row;
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / G;
        const DenseReference want = dense_reference(
            qf.data() + (size_t(b) * hq + h) * d, n, scale,
            [&](int64_t t, int i) { return double(s.k[size_t(t * row + kvh * d + i)]); },
            [&](int64_t t, int i) { return double(s.v[size_t(t * row + kvh * d + i)]); });
        double num = 0, den = 0;
        for (int i = 0; i < d; ++i) {
          const double got = bf16_to_float(out[(size_t(b) * hq + h) * d + size_t(i)]);
          ASSERT_FALSE(std::isnan(got)) << "step " << step << " slot " << b << " head " << h;
          num += (got - want.o[size_t(i)]) * (got - want.o[size_t(i)]);
          den += want.o[size_t(i)] * want.o[size_t(i)];
        }
        EXPECT_LT(std::sqrt(num / den), 1.5e-2) << "step " << step << " slot " << b << " head " << h;
        EXPECT_NEAR(lse[size_t(b) * hq + h], want.lse, 2e-3 * std::max(1.0, std::abs(want.max_logit)))
            << "step " << step << " slot " << b << " head " << h;
      }
    }
  });
  // At once: both slots crossed update segments; late: slot 0's first segment waited its slack.
  EXPECT_GE(run.grown, grow_late ? 1 : 3);
  EXPECT_GT(run.checked, 40);
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
}

TEST_P(WaveKvGpu, FullRetrievalEqualsDenseAttention) { full_retrieval_equals_dense(GetParam(), false); }
TEST_P(WaveKvGpu, FullRetrievalEqualsDenseAttentionWhenGrowthWaitsItsSlack) {
  full_retrieval_equals_dense(GetParam(), true);
}

INSTANTIATE_TEST_SUITE_P(Cache, WaveKvGpu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "small_cache" : "no_cache"; });

// ---- fp8-e4m3 host KV ----

class WaveKvFp8Gpu : public FullRetrievalGpu {};

// What the store keeps of x in a cluster of scale s: x / s rounded to e4m3, times s.
double fp8_rounded(float x, float s) { return double(fp8_e4m3_to_float(float_to_fp8_e4m3(x / s))) * double(s); }

// The store kernel alone: clusters with maxima from 2^-8 to 2^8 (and one all zero), a random list
// order, rows straddling pages, groups at an offset in the store. Every scale is max |x| / 448 of its
// own cluster (1 for the zero one) and every stored code is the host's e4m3 of x / scale.
TEST(WaveKvOpsGpu, Fp8StoreScalesEachClusterByItsOwnRows) {
  RETRO_SKIP_WITHOUT_GPU();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  for (const int d : {64, 128}) {
    SCOPED_TRACE("head_dim " + std::to_string(d));
    const int groups = 3, first_group = 2, store_groups = 5;
    const int64_t n = 300, row_base = 37, page_rows = 48;
    // Cluster sizes summing to n: an empty one, an all-zero one, one spanning several pages.
    std::vector<int32_t> sizes = {0, 5, 1, 120, 16, 7, 0, 33, 2, 19, 40, 11, 46};
    ASSERT_EQ(std::accumulate(sizes.begin(), sizes.end(), 0), n);
    const int64_t clusters = int64_t(sizes.size()), capacity = clusters + 3;
    const int zero_cluster = 2;
    std::vector<int32_t> h_sizes(size_t(groups * capacity), 0), order(size_t(groups * n));
    std::vector<int64_t> h_begins(size_t(groups * capacity), 0);
    std::vector<float> k(size_t(n * groups * d)), v(k.size());  // [token, group, d] as bf16 values
    std::vector<bf16> kb(k.size()), vb(k.size());
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> exponent(-8, 8);
    for (int g = 0; g < groups; ++g) {
      std::vector<int32_t> perm(static_cast<size_t>(n));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::copy(perm.begin(), perm.end(), order.begin() + g * n);
      int64_t at = 0;
      for (int64_t c = 0; c < clusters; ++c) {
        h_sizes[size_t(g * capacity + c)] = sizes[size_t(c)];
        h_begins[size_t(g * capacity + c)] = row_base + at;
        const float kmag = std::ldexp(1.0f, exponent(rng)), vmag = std::ldexp(1.0f, exponent(rng));
        for (int64_t r = at; r < at + sizes[size_t(c)]; ++r) {
          const int64_t token = perm[size_t(r)];
          for (int i = 0; i < d; ++i) {
            const size_t e = size_t((token * groups + g) * d + i);
            kb[e] = float_to_bf16(c == zero_cluster ? 0.0f : kmag * normal(rng));
            vb[e] = float_to_bf16(c == zero_cluster ? 0.0f : vmag * normal(rng));
            k[e] = bf16_to_float(kb[e]);
            v[e] = bf16_to_float(vb[e]);
          }
        }
        at += sizes[size_t(c)];
      }
    }
    cuda::HostPagePool pool(size_t(page_rows) * d, size_t(page_rows) * d * 64, *pinned);
    cuda::HostKvStore store(store_groups, d, 1, row_base + n, pool, *device);
    ASSERT_EQ(store.page_rows(), page_rows);
    for (int g = 0; g < groups; ++g) store.reserve(first_group + g, row_base + n, nullptr);
    void *dk, *dv, *dorder, *dsizes, *dbegins, *dks, *dvs;
    ASSERT_CUDA(cudaMalloc(&dk, kb.size() * 2));
    ASSERT_CUDA(cudaMalloc(&dv, vb.size() * 2));
    ASSERT_CUDA(cudaMalloc(&dorder, order.size() * 4));
    ASSERT_CUDA(cudaMalloc(&dsizes, h_sizes.size() * 4));
    ASSERT_CUDA(cudaMalloc(&dbegins, h_begins.size() * 8));
    ASSERT_CUDA(cudaMalloc(&dks, h_sizes.size() * 4));
    ASSERT_CUDA(cudaMalloc(&dvs, h_sizes.size() * 4));
    ASSERT_CUDA(cudaMemcpy(dk, kb.data(), kb.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dv, vb.data(), vb.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dorder, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dsizes, h_sizes.data(), h_sizes.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dbegins, h_begins.data(), h_begins.size() * 8, cudaMemcpyHostToDevice));
    const std::vector<float> sentinel(h_sizes.size(), -7.0f);
    ASSERT_CUDA(cudaMemcpy(dks, sentinel.data(), sentinel.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dvs, sentinel.data(), sentinel.size() * 4, cudaMemcpyHostToDevice));
    // The bf16 view is refused.
    cuda::HostStoreView bf16_view = store.view();
    bf16_view.elem_bytes = 2;
    EXPECT_EQ(cuda::store_clustered_rows_fp8(dk, dv, d, int64_t(groups) * d, static_cast<int32_t*>(dorder), groups, n,
                                             d, static_cast<int32_t*>(dsizes), static_cast<int64_t*>(dbegins), capacity,
                                             clusters, static_cast<float*>(dks), static_cast<float*>(dvs), bf16_view,
                                             first_group, row_base, nullptr),
              cudaErrorInvalidValue);
    ASSERT_CUDA(cuda::store_clustered_rows_fp8(dk, dv, d, int64_t(groups) * d, static_cast<int32_t*>(dorder), groups, n,
                                               d, static_cast<int32_t*>(dsizes), static_cast<int64_t*>(dbegins),
                                               capacity, clusters, static_cast<float*>(dks), static_cast<float*>(dvs),
                                               store.view(), first_group, row_base, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> ks(h_sizes.size()), vs(h_sizes.size());
    ASSERT_CUDA(cudaMemcpy(ks.data(), dks, ks.size() * 4, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(vs.data(), dvs, vs.size() * 4, cudaMemcpyDeviceToHost));
    for (int g = 0; g < groups; ++g) {
      for (int64_t c = clusters; c < capacity; ++c) {
        EXPECT_EQ(ks[size_t(g * capacity + c)], -7.0f) << "entry past the segment written";
        EXPECT_EQ(vs[size_t(g * capacity + c)], -7.0f) << "entry past the segment written";
      }
      for (int64_t c = 0; c < clusters; ++c) {
        const int64_t first = h_begins[size_t(g * capacity + c)] - row_base;
        float kmax = 0.0f, vmax = 0.0f;
        for (int64_t r = first; r < first + sizes[size_t(c)]; ++r)
          for (int i = 0; i < d; ++i) {
            const size_t e = size_t((int64_t(order[size_t(g * n + r)]) * groups + g) * d + i);
            kmax = std::max(kmax, std::fabs(k[e]));
            vmax = std::max(vmax, std::fabs(v[e]));
          }
        const float kscale = kmax > 0.0f ? kmax / kFp8E4M3Max : 1.0f;
        const float vscale = vmax > 0.0f ? vmax / kFp8E4M3Max : 1.0f;
        ASSERT_EQ(ks[size_t(g * capacity + c)], kscale) << "group " << g << " cluster " << c;
        ASSERT_EQ(vs[size_t(g * capacity + c)], vscale) << "group " << g << " cluster " << c;
        if (c == zero_cluster) {
          EXPECT_EQ(kscale, 1.0f);
        }
        int bad = 0;
        for (int64_t r = first; r < first + sizes[size_t(c)]; ++r) {
          const auto* kq = static_cast<const fp8_e4m3*>(store.row(first_group + g, row_base + r, false));
          const auto* vq = static_cast<const fp8_e4m3*>(store.row(first_group + g, row_base + r, true));
          for (int i = 0; i < d; ++i) {
            const size_t e = size_t((int64_t(order[size_t(g * n + r)]) * groups + g) * d + i);
            // Compared as values: +0 and -0 are the same stored zero.
            bad += fp8_e4m3_to_float(kq[i]) != fp8_e4m3_to_float(float_to_fp8_e4m3(k[e] / kscale));
            bad += fp8_e4m3_to_float(vq[i]) != fp8_e4m3_to_float(float_to_fp8_e4m3(v[e] / vscale));
          }
        }
        EXPECT_EQ(bad, 0) << "group " << g << " cluster " << c << " (" << sizes[size_t(c)] << " rows)";
      }
    }
    for (void* ptr : {dk, dv, dorder, dsizes, dbegins, dks, dvs}) cudaFree(ptr);
  }
}

// Rows whose largest |x| is exactly `max` (one element of each row, at a random place and sign):
// every cluster of them has the scale max / 448, whichever tokens the build puts together.
std::vector<bf16> rows_with_max(std::mt19937& rng, int64_t rows, int d, float max, std::vector<float>* append) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> at(0, d - 1);
  std::vector<bf16> out(size_t(rows) * d);
  for (int64_t r = 0; r < rows; ++r) {
    for (int i = 0; i < d; ++i)
      out[size_t(r * d + i)] = float_to_bf16(std::clamp(normal(rng), -0.75f * max, 0.75f * max));
    out[size_t(r * d + at(rng))] = float_to_bf16(normal(rng) < 0.0f ? -max : max);
  }
  for (const bf16 x : out) append->push_back(bf16_to_float(x));
  return out;
}

// With every cluster retrieved, wave attention over an fp8 host store is dense attention over the
// K/V as stored: steady tokens in bf16, clustered ones rounded to e4m3 with their cluster's scale,
// through prefill, appends, growth, a small cache (or none) and a refilled slot. The error against
// dense attention over the bf16 K/V is reported (and is much larger: the reference is the fp8 one).
TEST_P(WaveKvFp8Gpu, FullRetrievalEqualsDenseAttentionOverTheStoredKv) {
  const bool with_cache = GetParam();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::mt19937& rng = rng_;
  const float kmax = 8.0f, vmax = 4.0f;  // every K row's largest |x| is 8, every V row's 4
  const float kscale = kmax / kFp8E4M3Max, vscale = vmax / kFp8E4M3Max;
  const WaveIndexParams params = full_retrieval_params();
  const cuda::WaveBufferParams buffer = small_cache(DType::kFP8E4M3);

  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  const size_t page_bytes = size_t(256) * d * 2;
  const int64_t page_rows = int64_t(page_bytes) / d;  // fp8: 512 rows a page
  cuda::HostPagePool pool(page_bytes, size_t(4) << 20, *pinned);
  cuda::WaveLayerKv kv(cuda::WaveKvShape{batch, hq, hk, d, 4000}, params, buffer, pool, *device);
  EXPECT_EQ(kv.kv_dtype(), DType::kFP8E4M3);
  Buffer cache_mem;
  const cuda::WaveCacheView cache = make_cache(with_cache, buffer, *device, cache_mem);
  if (with_cache) {
    const cuda::WaveCacheLayout layout = cuda::plan_wave_cache(buffer, d);
    // A bf16 cache does not fit an fp8 store.
    cuda::WaveBufferParams bf16_buffer = buffer;
    bf16_buffer.kv_dtype = DType::kBF16;
    const cuda::WaveCacheLayout bf16_layout = cuda::plan_wave_cache(bf16_buffer, d);
    EXPECT_EQ(bf16_layout.num_slots(), layout.num_slots());
    EXPECT_EQ(bf16_layout.bytes - layout.bytes, size_t(layout.num_slots()) * 2 * 16 * d);
  }

  FullRetrievalRun run(kv, cache, rng, [&](int64_t tokens, bool value, std::vector<float>* append) {
    return rows_with_max(rng, tokens * hk, d, value ? vmax : kmax, append);
  });
  auto host_pages = [&](int64_t rows) { return (rows + page_rows - 1) / page_rows; };
  run.prefill(0, 3000);
  run.prefill(1, 1500);
  // Pages of the same bytes hold twice the rows of bf16 ones: K and V pages of every KV head.
  EXPECT_EQ(kv.host_bytes(), size_t(2 * hk) * page_bytes *
                                 size_t(host_pages(kv.clustered_tokens(0)) + host_pages(kv.clustered_tokens(1))));

  const double scale = 1.0 / std::sqrt(double(d));
  double err_fp8_sum = 0, err_bf16_sum = 0;
  int64_t err_count = 0;
  run.decode([&](int step, const std::vector<bf16>& out, const std::vector<float>& lse, const std::vector<float>& qf) {
    for (int b = 0; b < batch; ++b) {
      const Sequence& s = run.seqs[size_t(b)];
      const int64_t n = int64_t(s.k.size()) / row;
      // The clustered tokens are [sink, sink + clustered): the first sink_tokens and the most
      // recent ones stay in the steady zone in bf16.
      const int64_t c0 = kv.clustered_tokens(b) > 0 ? params.sink_tokens : 0, c1 = c0 + kv.clustered_tokens(b);
      for (int h = 0; h < hq; ++h) {
        const float* qh = qf.data() + (size_t(b) * hq + h) * d;
        const int kvh = h / G;
        double err[2] = {};  // relative L2 error against [the stored (fp8) K/V, the bf16 K/V]
        for (int ref = 0; ref < 2; ++ref) {
          const bool stored = ref == 0;
          const DenseReference want = dense_reference(
              qh, n, scale,
              [&](int64_t t, int i) {
                const float x = s.k[size_t(t * row + kvh * d + i)];
                return stored && t >= c0 && t < c1 ? fp8_rounded(x, kscale) : double(x);
              },
              [&](int64_t t, int i) {
                const float x = s.v[size_t(t * row + kvh * d + i)];
                return stored && t >= c0 && t < c1 ? fp8_rounded(x, vscale) : double(x);
              });
          double num = 0, den = 0;
          for (int i = 0; i < d; ++i) {
            const double got = bf16_to_float(out[(size_t(b) * hq + h) * d + size_t(i)]);
            ASSERT_FALSE(std::isnan(got)) << "step " << step << " slot " << b << " head " << h;
            num += (got - want.o[size_t(i)]) * (got - want.o[size_t(i)]);
            den += want.o[size_t(i)] * want.o[size_t(i)];
          }
          err[ref] = std::sqrt(num / den);
          if (stored) {
            EXPECT_NEAR(lse[size_t(b) * hq + h], want.lse, 2e-3 * std::max(1.0, std::abs(want.max_logit)))
                << "step " << step << " slot " << b << " head " << h;
          }
        }
        EXPECT_LT(err[0], 6e-3) << "step " << step << " slot " << b << " head " << h;
        err_fp8_sum += err[0];
        err_bf16_sum += err[1];
        ++err_count;
      }
    }
  });
  EXPECT_GE(run.grown, 3);  // both slots crossed update segments
  EXPECT_GT(run.checked, 40);
  const double err_fp8 = err_fp8_sum / double(err_count), err_bf16 = err_bf16_sum / double(err_count);
  std::cout << "fp8 host KV, relative L2 error of the output: " << err_fp8 << " against attention over the stored "
            << "K/V, " << err_bf16 << " against attention over the bf16 K/V\n";
  RecordProperty("rel_error_vs_stored_kv", std::to_string(err_fp8));
  RecordProperty("rel_error_vs_bf16_kv", std::to_string(err_bf16));
  EXPECT_GT(err_bf16, 2.0 * err_fp8) << "the stored (fp8) K/V, not the bf16 ones, must be what attention sees";
  // Every cluster of every head, prefill and growth segments alike, got the scale of its rows.
  for (int b = 0; b < batch; ++b) {
    const std::vector<float> ks = kv.cluster_scales(b, false, nullptr), vs = kv.cluster_scales(b, true, nullptr);
    ASSERT_EQ(int64_t(ks.size()), hk * kv.num_clusters(b));
    ASSERT_EQ(vs.size(), ks.size());
    // Empty clusters have no rows and keep the scale 1.
    int scaled = 0;
    for (size_t i = 0; i < ks.size(); ++i) {
      EXPECT_TRUE(ks[i] == kscale || ks[i] == 1.0f) << "slot " << b << " entry " << i << ": " << ks[i];
      EXPECT_TRUE(vs[i] == vscale || vs[i] == 1.0f) << "slot " << b << " entry " << i << ": " << vs[i];
      scaled += ks[i] == kscale;
    }
    EXPECT_GT(scaled, int(ks.size()) / 2);
  }
  const cuda::WaveKvStats st = kv.stats(batch, nullptr);
  EXPECT_EQ(st.retrieved_clusters, st.non_empty_clusters);
  if (with_cache) {
    const cuda::WaveCacheCounters c = cuda::read_wave_cache_counters(cache, nullptr);
    EXPECT_GT(c.hit_parts, 0u);
    EXPECT_GT(c.miss_parts, 0u);
    EXPECT_GT(c.admitted_parts, 0u);
    EXPECT_EQ(c.host_bytes, c.host_rows * uint64_t(d) * 2) << "K and V rows of one byte an element";
  }
}

INSTANTIATE_TEST_SUITE_P(Cache, WaveKvFp8Gpu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "small_cache" : "no_cache"; });

// grow() of a list of slots (one build for all of them, then the index entries scattered to each
// slot) against grow() of each slot alone: two WaveLayerKv see the same prompts, appends and queries;
// every prefilled slot starts with the same steady zone, so slots 0-2 cross update segments in the
// same steps, and slot 3, refilled at step 50, alone. Budgets below 1 make the output depend on every centroid, value sum and (fp8) scale;
// the two must agree bit for bit at every step.
class WaveKvGrowthGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { RETRO_SKIP_WITHOUT_GPU(); }
};

TEST_P(WaveKvGrowthGpu, SlotsGrownTogetherEqualSlotsGrownOneByOne) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  constexpr int hq = 8, hk = 2, d = 128, batch = 4;
  constexpr int64_t row = int64_t(hk) * d;
  WaveIndexParams params = full_retrieval_params();
  params.retrieval_budget = 0.25;
  params.estimation_budget = 0.5;
  cuda::WaveBufferParams buffer = small_cache(GetParam());
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);
  cuda::HostPagePool pool(size_t(256) * d * 2, size_t(4) << 20, *pinned);
  const cuda::WaveKvShape shape{batch, hq, hk, d, 4000};
  cuda::WaveLayerKv alone(shape, params, buffer, pool, *device);
  cuda::WaveLayerKv together(shape, params, buffer, pool, *device);
  const cuda::WaveCacheView no_cache{};

  std::vector<float> sink;  // values appended to nothing
  auto upload = [](const std::vector<bf16>& h) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, h.size() * 2), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    return p;
  };
  auto prefill = [&](int b, int64_t n) {
    void* k = upload(random_rows(rng, n, row, &sink));
    void* v = upload(random_rows(rng, n, row, &sink));
    alone.build(b, k, v, n, row, nullptr);
    together.build(b, k, v, n, row, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cudaFree(k);
    cudaFree(v);
  };
  for (int b = 0; b < batch; ++b) prefill(b, b < 3 ? 1500 : 1100);
  void *dq, *dk, *dv, *out_a, *out_b;
  float *lse_a, *lse_b;
  const size_t q_bytes = size_t(batch) * hq * d * 2;
  ASSERT_EQ(cudaMalloc(&dq, q_bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dk, size_t(batch) * row * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dv, size_t(batch) * row * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out_a, q_bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out_b, q_bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&lse_a, size_t(batch) * hq * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&lse_b, size_t(batch) * hq * 4), cudaSuccess);
  int joint_growths = 0, growths = 0;
  std::vector<bf16> oa(size_t(batch) * hq * d), ob(oa.size());
  std::vector<float> la(size_t(batch) * hq), lb(la.size());
  for (int step = 0; step < 300 && !HasFatalFailure(); ++step) {
    if (step == 50) {
      alone.release(3, nullptr);
      together.release(3, nullptr);
      prefill(3, 900);
    }
    std::vector<int> due;
    for (int b = 0; b < batch; ++b)
      if (alone.growth_due(b)) {
        ASSERT_TRUE(together.growth_due(b)) << "step " << step << " slot " << b;
        alone.grow(b, nullptr);
        due.push_back(b);
      }
    if (!due.empty()) together.grow(due, nullptr);
    growths += int(due.size());
    joint_growths += due.size() > 1 ? 1 : 0;
    const std::vector<bf16> kn = random_rows(rng, batch, row, &sink), vn = random_rows(rng, batch, row, &sink);
    const std::vector<bf16> q = random_rows(rng, batch, int64_t(hq) * d, &sink);
    sink.clear();
    ASSERT_EQ(cudaMemcpy(dk, kn.data(), kn.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dv, vn.data(), vn.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemset(out_a, 0xFF, q_bytes), cudaSuccess);
    ASSERT_EQ(cudaMemset(out_b, 0xFF, q_bytes), cudaSuccess);
    alone.append(dk, dv, batch, nullptr);
    together.append(dk, dv, batch, nullptr);
    const float scale = 1.0f / std::sqrt(float(d));
    alone.attend(dq, out_a, lse_a, batch, scale, no_cache, nullptr);
    together.attend(dq, out_b, lse_b, batch, scale, no_cache, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(oa.data(), out_a, q_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(ob.data(), out_b, q_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(la.data(), lse_a, la.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(lb.data(), lse_b, lb.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < oa.size(); ++i) {
      ASSERT_FALSE(std::isnan(bf16_to_float(oa[i]))) << "step " << step << " element " << i;
      ASSERT_EQ(oa[i].bits, ob[i].bits) << "step " << step << " element " << i;
    }
    ASSERT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * 4)) << "step " << step;
  }
  for (int b = 0; b < batch; ++b) {
    EXPECT_EQ(alone.num_clusters(b), together.num_clusters(b)) << "slot " << b;
    EXPECT_EQ(alone.clustered_tokens(b), together.clustered_tokens(b)) << "slot " << b;
    EXPECT_EQ(alone.steady_tokens(b), together.steady_tokens(b)) << "slot " << b;
    EXPECT_EQ(alone.cluster_scales(b, false, nullptr), together.cluster_scales(b, false, nullptr)) << "slot " << b;
    EXPECT_EQ(alone.cluster_scales(b, true, nullptr), together.cluster_scales(b, true, nullptr)) << "slot " << b;
  }
  EXPECT_GE(joint_growths, 2);  // slots 0-2 crossed segments together
  EXPECT_GE(growths, 7);        // and slot 3 alone
  for (void* p : {dq, dk, dv, out_a, out_b, static_cast<void*>(lse_a), static_cast<void*>(lse_b)}) cudaFree(p);
  // Misuse: a slot listed twice, a slot that is not due.
  const std::vector<int> twice = {0, 0};
  EXPECT_THROW(together.grow(twice, nullptr), retro::Error);
  for (int b = 0; b < batch; ++b)
    if (!together.growth_due(b)) {
      const std::vector<int> not_due = {b};
      EXPECT_THROW(together.grow(not_due, nullptr), retro::Error) << "slot " << b;
    }
}

INSTANTIATE_TEST_SUITE_P(HostKv, WaveKvGrowthGpu, ::testing::Values(DType::kBF16, DType::kFP8E4M3),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return i.param == DType::kBF16 ? "bf16" : "fp8";
                         });

#else
TEST(WaveKvGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
