// GPU layer ops against their CPU twins on fresh random inputs (bf16 inputs; the twin runs in fp32
// on the same rounded values). Outputs are poisoned with NaN before each run. Label gpu.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/system_info.h"
#include "runtime/ops.h"
#include "runtime/rope.h"
#include "runtime/sampler.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda/ops.h"
#include "runtime/cuda/sampling.h"
#endif

namespace retro::runtime {
namespace {

#ifdef RETRO_WITH_CUDA

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }
  void TearDown() override {
    for (void* p : allocations_) cudaFree(p);
  }

  // Random bf16 values and their fp32 images.
  std::vector<bf16> random_bf16(size_t n, float scale, std::vector<float>* as_float) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<bf16> v(n);
    as_float->resize(n);
    for (size_t i = 0; i < n; ++i) {
      v[i] = float_to_bf16(d(rng_));
      (*as_float)[i] = bf16_to_float(v[i]);
    }
    return v;
  }
  template <typename T>
  T* upload(const std::vector<T>& h) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(h.size(), 1) * sizeof(T)), cudaSuccess);
    allocations_.push_back(p);
    EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* poisoned(size_t n) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
    allocations_.push_back(p);
    EXPECT_EQ(cudaMemset(p, 0xFF, n * sizeof(T)), cudaSuccess);  // NaN for bf16 / fp32
    return static_cast<T*>(p);
  }
  std::vector<float> download_bf16(const void* d, size_t n) {
    std::vector<bf16> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = bf16_to_float(h[i]);
    return f;
  }
  // ‖got − want‖ / ‖want‖; NaN anywhere fails.
  static double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isnan(got[i])) return INFINITY;
      num += double(got[i] - want[i]) * (got[i] - want[i]);
      den += double(want[i]) * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::vector<void*> allocations_;
};

// bf16 output rounding alone gives ~2e-3 relative error.
constexpr double kBf16Tolerance = 1e-2;

TEST_F(CudaOps, RmsNormMatchesTheCpuTwin) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (auto [n, dim] : {std::pair<int64_t, int64_t>{1, 4096}, {7, 576}, {33, 5120}}) {
    std::vector<float> xf, wf;
    auto x = random_bf16(size_t(n * dim), 2.0f, &xf);
    auto w = random_bf16(size_t(dim), 1.0f, &wf);
    auto* dy = poisoned<bf16>(size_t(n * dim));
    ASSERT_CUDA(cuda::rms_norm(upload(x), upload(w), dy, n, dim, 1e-5f, nullptr));
    std::vector<float> want(size_t(n * dim));
    ops::rms_norm(xf.data(), n, dim, wf.data(), 1e-5f, want.data());
    EXPECT_LT(rel_l2(download_bf16(dy, want.size()), want), kBf16Tolerance) << n << "x" << dim;
  }
}

TEST_F(CudaOps, RopeMatchesTheCpuTwinForEveryScaling) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0f;
  c.max_position_embeddings = 131072;
  std::vector<RopeScaling> scalings(3);
  scalings[1].type = RopeScalingType::kLlama3;
  scalings[1].factor = 8.0f;
  scalings[1].original_max_position_embeddings = 8192;
  scalings[2].type = RopeScalingType::kYarn;
  scalings[2].factor = 4.0f;
  scalings[2].original_max_position_embeddings = 32768;
  for (const RopeScaling& s : scalings) {
    c.rope_scaling = s;
    RopeTable table(c);
    const int64_t n = 19;
    const int heads = 8, d = 128;
    std::vector<float> xf;
    auto x = random_bf16(size_t(n * heads * d), 1.0f, &xf);
    std::vector<int64_t> pos(n);
    std::uniform_int_distribution<int64_t> p(0, 1 << 20);
    for (auto& v : pos) v = p(rng_);
    bf16* dx = upload(x);
    ASSERT_CUDA(cuda::rope(dx, upload(pos), upload(table.inv_freq()), table.attention_scaling(), n, heads, d,
                           table.rotary_dim(), nullptr));
    table.apply(xf.data(), n, heads, d, pos.data());
    EXPECT_LT(rel_l2(download_bf16(dx, xf.size()), xf), kBf16Tolerance) << rope_scaling_type_name(s.type);
  }
}

TEST_F(CudaOps, SiluMulMatchesTheCpuTwin) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = 3 * 14336 + 5;
  std::vector<float> gf, uf;
  auto g = random_bf16(size_t(n), 3.0f, &gf);
  auto u = random_bf16(size_t(n), 1.0f, &uf);
  auto* dout = poisoned<bf16>(size_t(n));
  ASSERT_CUDA(cuda::silu_mul(upload(g), upload(u), dout, n, nullptr));
  ops::silu_mul(gf.data(), uf.data(), n);
  EXPECT_LT(rel_l2(download_bf16(dout, size_t(n)), gf), kBf16Tolerance);
}

// The fused projection's split: with and without biases, head_dim 128 and 64; the CPU twin adds the
// bias in bf16 (as add_bias rounds it) and rotates Q and K with RopeTable::apply.
TEST_F(CudaOps, QkvSplitRopeMatchesBiasThenRopeOnTheCpu) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (const int d : {128, 64}) {
    for (const bool with_bias : {false, true}) {
      ModelConfig c;
      c.head_dim = d;
      c.rope_theta = 500000.0f;
      RopeTable table(c);
      const int64_t n = 13;
      const int nq = 8, nkv = 2, heads = nq + 2 * nkv;
      std::vector<float> xf, bf;
      auto x = random_bf16(size_t(n * heads * d), 2.0f, &xf);
      auto b = random_bf16(size_t(heads * d), 0.5f, &bf);
      std::vector<int64_t> pos(static_cast<size_t>(n));
      std::uniform_int_distribution<int64_t> p(0, 1 << 17);
      for (auto& v : pos) v = p(rng_);
      auto* dq = poisoned<bf16>(size_t(n * nq * d));
      auto* dk = poisoned<bf16>(size_t(n * nkv * d));
      auto* dv = poisoned<bf16>(size_t(n * nkv * d));
      ASSERT_CUDA(cuda::qkv_split_rope(upload(x), with_bias ? upload(b) : nullptr, dq, dk, dv, upload(pos),
                                       upload(table.inv_freq()), table.attention_scaling(), n, nq, nkv, d,
                                       table.rotary_dim(), nullptr));
      std::vector<float> q(size_t(n * nq * d)), k(size_t(n * nkv * d)), v(k.size());
      for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < heads; ++h)
          for (int i = 0; i < d; ++i) {
            const size_t at = (size_t(t) * heads + h) * d + i;
            const float value = with_bias ? bf16_to_float(float_to_bf16(xf[at] + bf[size_t(h * d + i)])) : xf[at];
            if (h < nq) q[(size_t(t) * nq + h) * d + i] = value;
            else if (h < nq + nkv) k[(size_t(t) * nkv + h - nq) * d + i] = value;
            else v[(size_t(t) * nkv + h - nq - nkv) * d + i] = value;
          }
      table.apply(q.data(), n, nq, d, pos.data());
      table.apply(k.data(), n, nkv, d, pos.data());
      const std::string what = "head_dim " + std::to_string(d) + (with_bias ? " with bias" : "");
      EXPECT_LT(rel_l2(download_bf16(dq, q.size()), q), kBf16Tolerance) << what;
      EXPECT_LT(rel_l2(download_bf16(dk, k.size()), k), kBf16Tolerance) << what;
      EXPECT_EQ(download_bf16(dv, v.size()), v) << what;  // V is only split (and biased)
    }
  }
}

TEST_F(CudaOps, SiluMulOverFusedGateUpRowsMatchesTheCpuTwin) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t n = 5, f = 14336 + 8;
  std::vector<float> guf;
  auto gu = random_bf16(size_t(n * 2 * f), 3.0f, &guf);
  auto* dout = poisoned<bf16>(size_t(n * f));
  ASSERT_CUDA(cuda::silu_mul_fused(upload(gu), dout, n, f, nullptr));
  std::vector<float> want;
  for (int64_t r = 0; r < n; ++r) {
    std::vector<float> g(guf.begin() + r * 2 * f, guf.begin() + r * 2 * f + f), u(guf.begin() + r * 2 * f + f,
                                                                                  guf.begin() + (r + 1) * 2 * f);
    ops::silu_mul(g.data(), u.data(), f);
    want.insert(want.end(), g.begin(), g.end());
  }
  EXPECT_LT(rel_l2(download_bf16(dout, size_t(n * f)), want), kBf16Tolerance);
}

TEST_F(CudaOps, EmbeddingCopiesRowsAndFlagsBadIds) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t vocab = 1000, hidden = 320, n = 9;
  std::vector<float> tf;
  auto table = random_bf16(size_t(vocab * hidden), 1.0f, &tf);
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (auto& i : ids) i = pick(rng_);
  auto* dout = poisoned<bf16>(size_t(n * hidden));
  auto* flag = upload(std::vector<int32_t>{0});
  ASSERT_CUDA(cuda::embedding(upload(table), upload(ids), dout, n, hidden, vocab, flag, nullptr));
  std::vector<float> want(size_t(n * hidden));
  ops::embedding(tf.data(), vocab, hidden, ids.data(), n, want.data());
  EXPECT_EQ(rel_l2(download_bf16(dout, want.size()), want), 0.0);
  int32_t bad = 0;
  ASSERT_CUDA(cudaMemcpy(&bad, flag, 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(bad, 0);
  ids[3] = int32_t(vocab);  // out of range
  ASSERT_CUDA(cuda::embedding(upload(table), upload(ids), dout, n, hidden, vocab, flag, nullptr));
  ASSERT_CUDA(cudaMemcpy(&bad, flag, 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(bad, 1);
}

TEST_F(CudaOps, ArgmaxMatchesTheCpuTwinIncludingTies) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t rows = 6, vocab = 128256;
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> logits(size_t(rows * vocab));
  for (auto& v : logits) v = d(rng_);
  logits[2 * vocab + 77] = 100.0f;  // a tie: the lower index wins
  logits[2 * vocab + 99000] = 100.0f;
  auto* dout = poisoned<int32_t>(size_t(rows));
  ASSERT_CUDA(cuda::argmax_rows(upload(logits), dout, rows, vocab, nullptr));
  std::vector<int32_t> got(static_cast<size_t>(rows), -1);
  ASSERT_CUDA(cudaMemcpy(got.data(), dout, rows * 4, cudaMemcpyDeviceToHost));
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_EQ(got[size_t(r)], argmax(std::span<const float>(logits.data() + r * vocab, size_t(vocab)))) << "row " << r;
  EXPECT_EQ(got[2], 77);
}

// Every row gets its own temperature, top-k, top-p and uniform; the GPU must pick the token the CPU
// twin picks for the same uniform. Logits are quantised so that ties (equal logits, broken by id)
// sit on the top-k, top-p and draw boundaries. A mismatch is tolerated only when the CPU twin itself
// picks the GPU's token for a uniform within 1e-9 (summation order of the masses).
TEST_F(CudaOps, SamplingMatchesTheCpuTwinRowByRow) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int64_t vocab : {int64_t{7}, int64_t{1000}, int64_t{128256}}) {
    const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.7f};
    const int32_t ks[] = {0, 1, 2, 5, 50, int32_t(vocab), int32_t(vocab) + 3};
    const float ps[] = {1.0f, 0.95f, 0.5f, 0.01f};
    std::vector<float> temperature, top_p;
    std::vector<int32_t> top_k;
    std::vector<double> uniform;
    for (float t : temps)
      for (int32_t k : ks)
        for (float p : ps) {
          temperature.push_back(t);
          top_k.push_back(k);
          top_p.push_back(p);
          uniform.push_back(uniform.size() % 7 == 0 ? 0.0 : uniform.size() % 7 == 1 ? 0.9999999 : unit(rng_));
        }
    const int64_t rows = int64_t(temperature.size());
    std::normal_distribution<float> d(0.0f, 2.5f);
    std::vector<float> logits(size_t(rows * vocab));
    for (auto& v : logits) v = std::round(d(rng_) * 4.0f) / 4.0f;  // many equal logits
    for (int64_t r = 0; r < rows; r += 3) logits[size_t(r * vocab + (r % vocab))] = -INFINITY;
    auto* dout = poisoned<int32_t>(size_t(rows));
    cuda::SamplingRows params{upload(temperature), upload(top_k), upload(top_p), upload(uniform)};
    const float* dlogits = upload(logits);
    ASSERT_CUDA(cuda::sample_rows(dlogits, rows, vocab, params, dout, nullptr));
    std::vector<int32_t> got(size_t(rows), -2), again(size_t(rows), -3);
    ASSERT_CUDA(cudaMemcpy(got.data(), dout, size_t(rows) * 4, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cuda::sample_rows(dlogits, rows, vocab, params, dout, nullptr));
    ASSERT_CUDA(cudaMemcpy(again.data(), dout, size_t(rows) * 4, cudaMemcpyDeviceToHost));
    EXPECT_EQ(got, again) << "the same inputs gave different tokens";
    int exact = 0;
    for (int64_t r = 0; r < rows; ++r) {
      std::span<const float> row(logits.data() + r * vocab, size_t(vocab));
      SamplingParams sp;
      sp.temperature = temperature[size_t(r)];
      sp.top_k = top_k[size_t(r)];
      sp.top_p = top_p[size_t(r)];
      const double u = uniform[size_t(r)];
      const int32_t want = sample_token(row, sp, u);
      if (got[size_t(r)] == want) {
        ++exact;
        continue;
      }
      const bool edge = sample_token(row, sp, std::max(0.0, u - 1e-9)) == got[size_t(r)] ||
                        sample_token(row, sp, std::min(0.9999999999, u + 1e-9)) == got[size_t(r)];
      EXPECT_TRUE(edge) << "vocab " << vocab << " row " << r << " T " << sp.temperature << " k " << sp.top_k << " p "
                        << sp.top_p << " u " << u << ": gpu " << got[size_t(r)] << " (logit "
                        << (got[size_t(r)] >= 0 ? row[size_t(got[size_t(r)])] : NAN) << "), cpu " << want << " (logit "
                        << row[size_t(want)] << ")";
    }
    EXPECT_GE(exact, rows - 2) << "vocab " << vocab;
  }
}

TEST_F(CudaOps, SamplingFlagsARowWithANan) {
  const int64_t vocab = 300;
  std::vector<float> logits(2 * vocab, 1.0f);
  logits[vocab + 17] = NAN;
  std::vector<float> temperature{1.0f, 1.0f}, top_p{1.0f, 1.0f};
  std::vector<int32_t> top_k{0, 0};
  std::vector<double> uniform{0.5, 0.5};
  auto* dout = poisoned<int32_t>(2);
  cuda::SamplingRows params{upload(temperature), upload(top_k), upload(top_p), upload(uniform)};
  ASSERT_CUDA(cuda::sample_rows(upload(logits), 2, vocab, params, dout, nullptr));
  std::vector<int32_t> got(2, -2);
  ASSERT_CUDA(cudaMemcpy(got.data(), dout, 8, cudaMemcpyDeviceToHost));
  EXPECT_EQ(got[0], 150);  // equal logits: u = 0.5 lands on the middle token
  EXPECT_EQ(got[1], -1);
}

// Greedy over a vocabulary split into blocks (as tensor-parallel ranks hold it): the best candidate of
// each block (argmax_rows, rows ld apart, indices offset to the whole vocabulary), then the best of
// the blocks (pick_best_candidates), is the whole row's argmax, ties to the lowest id; a NaN anywhere
// gives -1. Quantised logits make ties across blocks common.
TEST_F(CudaOps, BlockwiseArgmaxCandidatesPickTheWholeRowsArgmax) {
  const int64_t rows = 37, vocab = 1001, parts = 3, chunk = (vocab + parts - 1) / parts;
  std::uniform_int_distribution<int> q(-6, 6);
  std::vector<float> logits(size_t(rows * vocab));
  for (float& x : logits) x = 0.5f * float(q(rng_));
  logits[size_t(5 * vocab + 700)] = NAN;
  // Blocks [parts, rows, chunk], the last one short, as the all-gather lays them out.
  std::vector<float> blocks(size_t(parts * rows * chunk), -1e30f);
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < chunk && p * chunk + c < vocab; ++c)
        blocks[size_t((p * rows + r) * chunk + c)] = logits[size_t(r * vocab + p * chunk + c)];
  const float* dblocks = upload(blocks);
  auto* candidates = poisoned<cuda::ArgmaxCandidate>(size_t(parts * rows));
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t cols = std::min(chunk, vocab - p * chunk);
    ASSERT_CUDA(cuda::argmax_rows(dblocks + p * rows * chunk, rows, cols, chunk, p * chunk, candidates + p * rows, nullptr));
  }
  auto* dout = poisoned<int32_t>(size_t(rows));
  ASSERT_CUDA(cuda::pick_best_candidates(candidates, int(parts), rows, dout, nullptr));
  std::vector<int32_t> got(size_t(rows), -2);
  ASSERT_CUDA(cudaMemcpy(got.data(), dout, size_t(rows) * 4, cudaMemcpyDeviceToHost));
  for (int64_t r = 0; r < rows; ++r) {
    if (r == 5) {
      EXPECT_EQ(got[size_t(r)], -1) << "the row with a NaN";
      continue;
    }
    EXPECT_EQ(got[size_t(r)], argmax(std::span<const float>(logits.data() + r * vocab, size_t(vocab)))) << "row " << r;
  }
}

#else
TEST(CudaOps, NeedACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::runtime
