// GPU cluster selection (run_wave_select) against the CPU twin's counts (WaveIndexParams::num_retrieve /
// num_estimate, select_clusters) and an independent double-precision reference of the scores and of
// the estimation zone, on the same bf16-rounded inputs. Fresh random meta indexes per run: peaked
// scores (a few centroids aligned with the queries), empty clusters (some of them the best aligned),
// exact ties (replicated centroids), cluster counts from 0 to 70000 per group, G 1/2/4/7/8, head_dim
// 64 and 128. Entries past each group's cluster count hold bait that would win if read. Outputs and
// workspace are poisoned before each run. Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention/wave_attention.h"
#include "attention/wave_index.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/system_info.h"
#include "tests/attention/reference.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/wave_select.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

using cuda::WaveSelectBudgets;
using cuda::WaveSelectPlan;
using cuda::WaveSelectShape;

constexpr double kInf = std::numeric_limits<double>::infinity();

enum class Fill {
  kPeaked,      // random centroids, a few aligned with the queries, ~15% empty clusters
  kReplicated,  // every centroid shared by about three clusters: exact score ties everywhere
  kIdentical,   // one centroid for all: every score ties, the selection is decided by ids alone
  kAllEmpty,    // every size 0: nothing may be selected
};

struct GroupSpec {
  int clusters;
  Fill fill = Fill::kPeaked;
};

// The meta index of all groups on the host, already rounded to the stored precision.
struct HostIndex {
  int groups = 0, G = 0, d = 0;
  int64_t cap = 0;
  std::vector<int32_t> num_clusters;  // [groups]
  std::vector<bf16> q;                // [groups * G, d]
  std::vector<bf16> centroids;        // [groups, cap, d]
  std::vector<float> value_sums;      // [groups, cap, d]
  std::vector<int32_t> sizes;         // [groups, cap]

  float centroid(int g, int64_t c, int i) const { return bf16_to_float(centroids[(size_t(g) * cap + c) * d + i]); }
  float query(int g, int r, int i) const { return bf16_to_float(q[(size_t(g) * G + r) * d + i]); }
  int32_t size(int g, int64_t c) const { return sizes[size_t(g) * cap + c]; }
  const float* value_sum(int g, int64_t c) const { return &value_sums[(size_t(g) * cap + c) * d]; }
};

// Fills clusters [first, last) of group g.
void fill_group(HostIndex& h, int g, int64_t first, int64_t last, Fill fill, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::uniform_int_distribution<int> size_dist(1, 40);
  const int d = h.d;
  std::vector<float> mean_value(d);
  for (float& x : mean_value) x = normal(rng);
  std::vector<std::vector<float>> shared;  // centroids of the replicated / identical fills
  const int64_t n = last - first;
  if (fill == Fill::kReplicated || fill == Fill::kIdentical) {
    const int64_t distinct = fill == Fill::kIdentical ? 1 : std::max<int64_t>(1, n / 3);
    shared.resize(size_t(distinct), std::vector<float>(d));
    for (auto& v : shared)
      for (float& x : v) x = normal(rng);
  }
  for (int64_t c = first; c < last; ++c) {
    bf16* cent = &h.centroids[(size_t(g) * h.cap + c) * d];
    int32_t& sz = h.sizes[size_t(g) * h.cap + c];
    if (fill == Fill::kPeaked) {
      const bool aligned = uni(rng) < 0.01f;
      const int r = std::uniform_int_distribution<int>(0, h.G - 1)(rng);
      const float alpha = 0.2f + 0.8f * uni(rng);
      for (int i = 0; i < d; ++i)
        cent[i] = float_to_bf16(aligned ? alpha * h.query(g, r, i) + 0.3f * normal(rng) : normal(rng));
      // Empty clusters, a larger share among the aligned ones: an empty cluster must never win.
      sz = uni(rng) < (aligned ? 0.3f : 0.15f) ? 0 : size_dist(rng);
    } else if (fill == Fill::kAllEmpty) {
      for (int i = 0; i < d; ++i) cent[i] = float_to_bf16(normal(rng));
      sz = 0;
    } else {
      const auto& src = shared[std::uniform_int_distribution<size_t>(0, shared.size() - 1)(rng)];
      for (int i = 0; i < d; ++i) cent[i] = float_to_bf16(src[i]);
      sz = uni(rng) < 0.1f ? 0 : size_dist(rng);
    }
    float* vs = &h.value_sums[(size_t(g) * h.cap + c) * d];
    for (int i = 0; i < d; ++i) vs[i] = float(sz) * (mean_value[i] + 0.5f * normal(rng));
  }
}

// Past the cluster count: aligned centroids, big sizes and value sums, so reading them shows.
void fill_bait(HostIndex& h, int g, int64_t first) {
  for (int64_t c = first; c < h.cap; ++c) {
    for (int i = 0; i < h.d; ++i) {
      h.centroids[(size_t(g) * h.cap + c) * h.d + i] = float_to_bf16(4.0f * h.query(g, 0, i));
      h.value_sums[(size_t(g) * h.cap + c) * h.d + i] = 1e6f;
    }
    h.sizes[size_t(g) * h.cap + c] = 1000;
  }
}

HostIndex make_index(const std::vector<GroupSpec>& specs, int G, int d, int64_t cap, std::mt19937_64& rng,
                     bool bait = true) {
  HostIndex h;
  h.groups = int(specs.size());
  h.G = G;
  h.d = d;
  h.cap = cap;
  for (const GroupSpec& s : specs) h.cap = std::max<int64_t>(h.cap, s.clusters);
  h.cap = std::max<int64_t>(h.cap, 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  h.q.resize(size_t(h.groups) * G * d);
  for (bf16& x : h.q) x = float_to_bf16(normal(rng));
  h.centroids.assign(size_t(h.groups) * h.cap * d, float_to_bf16(0.0f));
  h.value_sums.assign(size_t(h.groups) * h.cap * d, 0.0f);
  h.sizes.assign(size_t(h.groups) * h.cap, 0);
  for (int g = 0; g < h.groups; ++g) {
    h.num_clusters.push_back(specs[g].clusters);
    fill_group(h, g, 0, specs[g].clusters, specs[g].fill, rng);
    if (bait) fill_bait(h, g, specs[g].clusters);
  }
  return h;
}

// What the GPU returned for one group.
struct GroupResult {
  int32_t retrieve_count = -1, estimate_count = -1;
  std::vector<int32_t> retrieved, estimated;
  std::vector<float> o, lse;  // [G, d], [G]
  std::vector<int64_t> stats;
};

// Device buffers of one index plus the outputs; runs the selection and reads the results back.
class DeviceSelect {
 public:
  DeviceSelect(const HostIndex& h, const WaveSelectBudgets& budgets) : h_(h) {
    plan_ = cuda::plan_wave_select(WaveSelectShape{h.groups, h.G, h.d}, budgets, h.cap);
    stride_ = plan_.retrieve_capacity + 3;  // a stride above the capacity must be honoured
    alloc(&q_, h.q.size() * sizeof(bf16), h.q.data());
    alloc(&centroids_, h.centroids.size() * sizeof(bf16), h.centroids.data());
    alloc(&value_sums_, h.value_sums.size() * sizeof(float), h.value_sums.data());
    alloc(&sizes_, h.sizes.size() * sizeof(int32_t), h.sizes.data());
    alloc(&num_clusters_, h.num_clusters.size() * sizeof(int32_t), h.num_clusters.data());
    alloc(&retrieve_ids_, size_t(h.groups) * stride_ * sizeof(int32_t), nullptr);
    alloc(&retrieve_count_, size_t(h.groups) * sizeof(int32_t), nullptr);
    alloc(&estimate_ids_, size_t(h.groups) * h.cap * sizeof(int32_t), nullptr);
    alloc(&estimate_count_, size_t(h.groups) * sizeof(int32_t), nullptr);
    alloc(&o_, size_t(h.groups) * h.G * h.d * sizeof(float), nullptr);
    alloc(&lse_, size_t(h.groups) * h.G * sizeof(float), nullptr);
    alloc(&stats_, size_t(h.groups) * cuda::kWaveSelectStatCount * sizeof(int64_t), nullptr);
    alloc(&workspace_, plan_.workspace_bytes, nullptr);
  }
  ~DeviceSelect() {
    for (void* p : owned_) cudaFree(p);
  }
  DeviceSelect(const DeviceSelect&) = delete;
  DeviceSelect& operator=(const DeviceSelect&) = delete;

  const WaveSelectPlan& plan() const { return plan_; }
  bool ok() const { return ok_; }

  cuda::WaveSelectParams params() const {
    cuda::WaveSelectParams p;
    p.q = q_;
    p.index.num_groups = h_.groups;
    p.index.group_size = h_.G;
    p.index.head_dim = h_.d;
    p.index.cluster_capacity = h_.cap;
    p.index.num_clusters = static_cast<const int32_t*>(num_clusters_);
    p.index.centroids = centroids_;
    p.index.value_sums = static_cast<const float*>(value_sums_);
    p.index.sizes = static_cast<const int32_t*>(sizes_);
    p.sm_scale = 1.0f / std::sqrt(float(h_.d));
    p.out.retrieve_capacity = stride_;
    p.out.retrieve_ids = static_cast<int32_t*>(retrieve_ids_);
    p.out.retrieve_count = static_cast<int32_t*>(retrieve_count_);
    p.out.estimate_o = static_cast<float*>(o_);
    p.out.estimate_lse = static_cast<float*>(lse_);
    p.stats = static_cast<int64_t*>(stats_);
    p.estimate_ids = static_cast<int32_t*>(estimate_ids_);
    p.estimate_count = static_cast<int32_t*>(estimate_count_);
    return p;
  }
  void* workspace() const { return workspace_; }

  // NaN / -1 everywhere the selection writes, and in its workspace.
  void poison() {
    for (void* p : {retrieve_ids_, retrieve_count_, estimate_ids_, estimate_count_, o_, lse_, stats_})
      ok_ = ok_ && cudaMemset(p, 0xFF, bytes_of(p)) == cudaSuccess;
    ok_ = ok_ && cudaMemset(workspace_, 0xFF, plan_.workspace_bytes) == cudaSuccess;
    ok_ = ok_ && cudaDeviceSynchronize() == cudaSuccess;  // the runs may use a non-blocking stream
  }
  void set_num_clusters(const std::vector<int32_t>& n) {
    ok_ = ok_ && cudaMemcpy(num_clusters_, n.data(), n.size() * sizeof(int32_t), cudaMemcpyHostToDevice) == cudaSuccess;
    ok_ = ok_ && cudaDeviceSynchronize() == cudaSuccess;
  }

  std::vector<GroupResult> read() {
    const int groups = h_.groups, G = h_.G, d = h_.d;
    std::vector<int32_t> rids(size_t(groups) * stride_), rcount(groups), eids(size_t(groups) * h_.cap), ecount(groups);
    std::vector<float> o(size_t(groups) * G * d), lse(size_t(groups) * G);
    std::vector<int64_t> stats(size_t(groups) * cuda::kWaveSelectStatCount);
    ok_ = ok_ && cudaDeviceSynchronize() == cudaSuccess;
    ok_ = ok_ && download(rids.data(), retrieve_ids_) && download(rcount.data(), retrieve_count_) &&
          download(eids.data(), estimate_ids_) && download(ecount.data(), estimate_count_) && download(o.data(), o_) &&
          download(lse.data(), lse_) && download(stats.data(), stats_);
    std::vector<GroupResult> out(groups);
    if (!ok_) return out;
    for (int g = 0; g < groups; ++g) {
      GroupResult& r = out[g];
      r.retrieve_count = rcount[g];
      r.estimate_count = ecount[g];
      if (r.retrieve_count >= 0 && r.retrieve_count <= stride_)
        r.retrieved.assign(rids.begin() + int64_t(g) * stride_, rids.begin() + int64_t(g) * stride_ + r.retrieve_count);
      if (r.estimate_count >= 0 && r.estimate_count <= h_.cap)
        r.estimated.assign(eids.begin() + g * h_.cap, eids.begin() + g * h_.cap + r.estimate_count);
      r.o.assign(o.begin() + size_t(g) * G * d, o.begin() + size_t(g + 1) * G * d);
      r.lse.assign(lse.begin() + size_t(g) * G, lse.begin() + size_t(g + 1) * G);
      r.stats.assign(stats.begin() + size_t(g) * cuda::kWaveSelectStatCount,
                     stats.begin() + size_t(g + 1) * cuda::kWaveSelectStatCount);
    }
    return out;
  }

 private:
  void alloc(void** p, size_t bytes, const void* src) {
    bytes = std::max<size_t>(bytes, 4);
    ok_ = ok_ && cudaMalloc(p, bytes) == cudaSuccess;
    if (!ok_) return;
    owned_.push_back(*p);
    sizes_of_.push_back(bytes);
    if (src != nullptr) ok_ = cudaMemcpy(*p, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess;
  }
  size_t bytes_of(void* p) const {
    for (size_t i = 0; i < owned_.size(); ++i)
      if (owned_[i] == p) return sizes_of_[i];
    return 0;
  }
  template <typename T>
  bool download(T* dst, void* src) {
    return cudaMemcpy(dst, src, bytes_of(src), cudaMemcpyDeviceToHost) == cudaSuccess;
  }

  const HostIndex& h_;
  WaveSelectPlan plan_;
  int stride_ = 0;
  bool ok_ = true;
  std::vector<void*> owned_;
  std::vector<size_t> sizes_of_;
  void *q_ = nullptr, *centroids_ = nullptr, *value_sums_ = nullptr, *sizes_ = nullptr, *num_clusters_ = nullptr;
  void *retrieve_ids_ = nullptr, *retrieve_count_ = nullptr, *estimate_ids_ = nullptr, *estimate_count_ = nullptr;
  void *o_ = nullptr, *lse_ = nullptr, *stats_ = nullptr, *workspace_ = nullptr;
};

// Independent reference of one group in double precision.
struct GroupReference {
  int64_t C = 0;
  std::vector<double> logits;  // [G, C]
  std::vector<double> score;   // [C], -inf for empty clusters
  ClusterSelection twin;       // select_clusters of the CPU twin on the scores
  int64_t n_retrieve = 0, n_estimate = 0;
};

GroupReference reference_group(const HostIndex& h, int g, int64_t C, const WaveSelectBudgets& b, float scale) {
  GroupReference ref;
  ref.C = C;
  const int G = h.G, d = h.d;
  ref.logits.assign(size_t(G) * C, 0.0);
  for (int r = 0; r < G; ++r)
    for (int64_t c = 0; c < C; ++c) {
      double dot = 0.0;
      for (int i = 0; i < d; ++i) dot += double(h.query(g, r, i)) * double(h.centroid(g, c, i));
      ref.logits[size_t(r) * C + c] = double(scale) * dot;
    }
  ref.score.assign(size_t(C), -kInf);
  for (int64_t c = 0; c < C; ++c)
    if (h.size(g, c) > 0) ref.score[c] = 0.0;
  for (int r = 0; r < G; ++r) {
    double mx = -kInf;
    for (int64_t c = 0; c < C; ++c)
      if (h.size(g, c) > 0) mx = std::max(mx, ref.logits[size_t(r) * C + c]);
    if (mx == -kInf) break;
    double sum = 0.0;
    for (int64_t c = 0; c < C; ++c)
      if (h.size(g, c) > 0) sum += std::exp(ref.logits[size_t(r) * C + c] - mx);
    for (int64_t c = 0; c < C; ++c)
      if (h.size(g, c) > 0) ref.score[c] += std::exp(ref.logits[size_t(r) * C + c] - mx) / sum;
  }
  WaveIndexParams params;
  params.retrieval_budget = b.retrieval_budget;
  params.estimation_budget = b.estimation_budget;
  params.min_retrieve_clusters = b.min_retrieve_clusters;
  ref.n_retrieve = params.num_retrieve(C);
  ref.n_estimate = params.num_estimate(C);
  std::vector<float> fscore(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c)
    fscore[c] = ref.score[c] == -kInf ? -std::numeric_limits<float>::infinity() : float(ref.score[c]);
  ref.twin = select_clusters(fscore.data(), C, ref.n_retrieve, ref.n_estimate);
  return ref;
}

// Scores within this of each other may come out in either order (fp32 logits on the GPU against
// double here); exactly equal scores (replicated centroids) must still go to the lower id.
double tolerance(double score) { return 1e-4 * std::fabs(score) + 1e-30; }

// The chosen set must be a top set: no unchosen candidate scores above a chosen one by more than the
// tolerance, and among exactly equal scores the chosen ids are the lower ones.
void expect_top_set(const GroupReference& ref, const std::vector<char>& chosen, const std::string& what) {
  double min_chosen = kInf, max_unchosen = -kInf;
  int64_t arg_min = -1, arg_max = -1;
  std::map<double, int64_t> highest_chosen_id;
  for (int64_t c = 0; c < ref.C; ++c) {
    if (ref.score[c] == -kInf) continue;
    if (chosen[c]) {
      if (ref.score[c] < min_chosen) min_chosen = ref.score[c], arg_min = c;
      auto [it, fresh] = highest_chosen_id.emplace(ref.score[c], c);
      if (!fresh) it->second = std::max(it->second, c);
    } else if (ref.score[c] > max_unchosen) {
      max_unchosen = ref.score[c], arg_max = c;
    }
  }
  if (arg_min >= 0 && arg_max >= 0) {
    EXPECT_GE(min_chosen, max_unchosen - tolerance(max_unchosen))
        << what << ": chose cluster " << arg_min << " (score " << min_chosen << ") over cluster " << arg_max
        << " (score " << max_unchosen << ")";
  }
  int reported = 0;
  for (int64_t c = 0; c < ref.C && reported < 3; ++c) {
    if (ref.score[c] == -kInf || chosen[c]) continue;
    auto it = highest_chosen_id.find(ref.score[c]);
    if (it != highest_chosen_id.end() && it->second > c) {
      ADD_FAILURE() << what << ": tie at score " << ref.score[c] << " went to cluster " << it->second
                    << " instead of the lower id " << c;
      ++reported;
    }
  }
}

void check_group(const HostIndex& h, int g, int64_t C, const WaveSelectBudgets& b, const GroupResult& res) {
  SCOPED_TRACE("group " + std::to_string(g) + " with " + std::to_string(C) + " clusters");
  const float scale = 1.0f / std::sqrt(float(h.d));
  const GroupReference ref = reference_group(h, g, C, b, scale);
  const int G = h.G, d = h.d;

  // Counts: exactly the CPU twin's.
  ASSERT_EQ(res.retrieve_count, int64_t(ref.twin.retrieved.size()));
  ASSERT_EQ(res.estimate_count, int64_t(ref.twin.estimated.size()));
  ASSERT_EQ(res.retrieved.size(), ref.twin.retrieved.size());
  ASSERT_EQ(res.estimated.size(), ref.twin.estimated.size());

  // Ids: in range, non-empty, distinct, zones disjoint, the estimated list in id order.
  std::vector<char> in_retrieved(size_t(C), 0), in_top(size_t(C), 0);
  for (int32_t c : res.retrieved) {
    ASSERT_TRUE(c >= 0 && c < C) << "retrieved id " << c;
    ASSERT_GT(h.size(g, c), 0) << "empty cluster " << c << " retrieved";
    ASSERT_FALSE(in_retrieved[c]) << "cluster " << c << " retrieved twice";
    in_retrieved[c] = in_top[c] = 1;
  }
  for (size_t i = 0; i < res.estimated.size(); ++i) {
    const int32_t c = res.estimated[i];
    ASSERT_TRUE(c >= 0 && c < C) << "estimated id " << c;
    ASSERT_GT(h.size(g, c), 0) << "empty cluster " << c << " estimated";
    ASSERT_FALSE(in_top[c]) << "cluster " << c << " chosen twice";
    if (i > 0) {
      ASSERT_LT(res.estimated[i - 1], c) << "estimated ids not in id order";
    }
    in_top[c] = 1;
  }

  // Sets: the retrieved ones and the whole top-k are top sets of the reference scores.
  expect_top_set(ref, in_retrieved, "retrieval zone");
  expect_top_set(ref, in_top, "retrieval + estimation zones");
  // Order of the retrieved ids: best first, ties to the lower id.
  for (size_t i = 1; i < res.retrieved.size(); ++i) {
    const int32_t a = res.retrieved[i - 1], c = res.retrieved[i];
    EXPECT_GE(ref.score[a], ref.score[c] - tolerance(ref.score[c])) << "retrieved order at " << i;
    if (ref.score[a] == ref.score[c]) {
      EXPECT_LT(a, c) << "equal scores out of id order at " << i;
    }
  }

  // Estimation zone over the GPU's own estimated set, in double.
  for (int r = 0; r < G; ++r) {
    const float* o = &res.o[size_t(r) * d];
    if (res.estimated.empty()) {
      EXPECT_TRUE(std::isinf(res.lse[r]) && res.lse[r] < 0) << "row " << r << " lse " << res.lse[r];
      for (int i = 0; i < d; ++i) ASSERT_EQ(o[i], 0.0f) << "row " << r << " element " << i;
      continue;
    }
    double mx = -kInf;
    for (int32_t c : res.estimated) mx = std::max(mx, ref.logits[size_t(r) * C + c] + std::log(double(h.size(g, c))));
    double mass = 0.0;
    for (int32_t c : res.estimated) mass += h.size(g, c) * std::exp(ref.logits[size_t(r) * C + c] - mx);
    const double lse = mx + std::log(mass);
    std::vector<double> want(d, 0.0);
    for (int32_t c : res.estimated) {
      const double w = std::exp(ref.logits[size_t(r) * C + c] - lse);
      const float* vs = h.value_sum(g, c);
      for (int i = 0; i < d; ++i) want[i] += w * vs[i];
    }
    EXPECT_NEAR(res.lse[r], lse, 1e-4 + 1e-5 * std::fabs(lse)) << "row " << r;
    double err = 0.0, norm = 0.0;
    for (int i = 0; i < d; ++i) {
      ASSERT_FALSE(std::isnan(o[i])) << "row " << r << " element " << i << " not written";
      err += (o[i] - want[i]) * (o[i] - want[i]);
      norm += want[i] * want[i];
    }
    EXPECT_LT(std::sqrt(err / std::max(norm, 1e-300)), 2e-4) << "row " << r;
  }

  // Counters.
  int64_t tokens = 0, retrieved_tokens = 0, estimated_tokens = 0;
  for (int64_t c = 0; c < C; ++c) tokens += h.size(g, c);
  for (int32_t c : res.retrieved) retrieved_tokens += h.size(g, c);
  for (int32_t c : res.estimated) estimated_tokens += h.size(g, c);
  ASSERT_EQ(res.stats.size(), size_t(cuda::kWaveSelectStatCount));
  EXPECT_EQ(res.stats[cuda::kWaveStatClusters], C);
  EXPECT_EQ(res.stats[cuda::kWaveStatNonEmptyClusters], ref.twin.non_empty);
  EXPECT_EQ(res.stats[cuda::kWaveStatRetrievedClusters], res.retrieve_count);
  EXPECT_EQ(res.stats[cuda::kWaveStatEstimatedClusters], res.estimate_count);
  EXPECT_EQ(res.stats[cuda::kWaveStatRetrievedTokens], retrieved_tokens);
  EXPECT_EQ(res.stats[cuda::kWaveStatEstimatedTokens], estimated_tokens);
  EXPECT_EQ(res.stats[cuda::kWaveStatClusteredTokens], tokens);
}

struct Case {
  std::string name;
  int G, d;
  std::vector<GroupSpec> groups;
  WaveSelectBudgets budgets;
  int random_groups = 0;  // extra peaked groups with random cluster counts in [0, 4000]
};

class WaveSelectGpu : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
  }
};

TEST_P(WaveSelectGpu, MatchesTheCpuTwin) {
  const Case& c = GetParam();
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  std::vector<GroupSpec> specs = c.groups;
  for (int i = 0; i < c.random_groups; ++i) specs.push_back({std::uniform_int_distribution<int>(0, 4000)(rng)});
  const HostIndex h = make_index(specs, c.G, c.d, 0, rng);
  DeviceSelect dev(h, c.budgets);
  ASSERT_TRUE(dev.ok());
  // Twice on the same buffers: the second run must not depend on what the first left behind.
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    dev.poison();
    cuda::run_wave_select(dev.params(), dev.plan(), dev.workspace(), nullptr);
    const std::vector<GroupResult> res = dev.read();
    ASSERT_TRUE(dev.ok()) << cudaGetErrorString(cudaGetLastError());
    for (int g = 0; g < h.groups; ++g) check_group(h, g, h.num_clusters[g], c.budgets, res[g]);
    if (HasFatalFailure()) return;
  }
}

WaveSelectBudgets budgets(double retrieval, double estimation, int min_retrieve) {
  WaveSelectBudgets b;
  b.retrieval_budget = retrieval;
  b.estimation_budget = estimation;
  b.min_retrieve_clusters = min_retrieve;
  return b;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WaveSelectGpu,
    ::testing::Values(
        // 128K-context shapes, cluster counts from 1 to 40000 (not multiples of any tile), an empty index
        // and an index of empty clusters.
        Case{"g4_d128", 4, 128,
             {{1}, {7}, {100}, {1000}, {3001}, {8192}, {40000}, {0}, {500, Fill::kAllEmpty}},
             WaveSelectBudgets{}},
        // 1M-context group (65536+ clusters), one query row.
        Case{"g1_d64", 1, 64, {{70000}, {2}, {33}, {5000}}, WaveSelectBudgets{}},
        Case{"g8_d128", 8, 128, {{8192}, {17}, {1500}}, WaveSelectBudgets{}},
        Case{"g7_d128_padded_rows", 7, 128, {{2048}, {9000}}, WaveSelectBudgets{}},
        // Exact ties everywhere: the cuts fall inside runs of equal scores.
        Case{"g4_d128_ties", 4, 128,
             {{3000, Fill::kIdentical}, {100, Fill::kIdentical}, {8192, Fill::kReplicated}, {2001, Fill::kReplicated}},
             WaveSelectBudgets{}},
        Case{"g2_d64_ties_estimate_all", 2, 64, {{4000, Fill::kReplicated}, {777, Fill::kIdentical}},
             budgets(0.05, 1.0, 8)},
        // Every non-retrieved cluster estimated.
        Case{"g2_d64_estimate_all", 2, 64, {{3000}, {500}, {1}}, budgets(0.018, 1.0, 32)},
        // Everything retrieved: a sort larger than shared memory, an empty estimation zone.
        Case{"g4_d64_retrieve_all", 4, 64, {{9000}, {4500}, {3}}, budgets(1.0, 0.5, 0)},
        // Nothing retrieved: the estimation zone alone.
        Case{"g4_d128_no_retrieval", 4, 128, {{5000}, {40}}, budgets(0.0, 0.232, 0)},
        // Budget edges (0.25 * 64 is exactly 16) and many groups in one launch.
        Case{"g4_d64_many_groups", 4, 64, {{64}, {128}, {1722}, {1723}, {1777}, {1778}, {32}, {33}},
             budgets(0.018, 0.25, 32), 56}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The cluster count grows during decode inside a captured graph: the counts, budgets and sets must
// follow the device-side num_clusters on every replay.
TEST(WaveSelectGpuGraph, FollowsGrowingClusterCountsOnReplay) {
  RETRO_SKIP_WITHOUT_GPU();
  RETRO_SEEDED(seed);
  std::mt19937_64 rng(seed);
  const std::vector<GroupSpec> full = {{8192}, {8192}, {8192}, {8192}};
  HostIndex h = make_index(full, 4, 128, 8192, rng, /*bait=*/false);
  const std::vector<std::vector<int32_t>> steps = {{300, 1000, 5000, 1}, {364, 1064, 5064, 65}, {8192, 2000, 0, 7000}};
  h.num_clusters = steps[0];
  DeviceSelect dev(h, WaveSelectBudgets{});
  ASSERT_TRUE(dev.ok());
  dev.set_num_clusters(steps[0]);
  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuda::run_wave_select(dev.params(), dev.plan(), dev.workspace(), stream);
  ASSERT_CUDA(cudaStreamEndCapture(stream, &graph));
  ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (const auto& counts : steps) {
    SCOPED_TRACE("clusters " + std::to_string(counts[0]) + ", " + std::to_string(counts[1]) + ", ...");
    dev.poison();
    dev.set_num_clusters(counts);
    ASSERT_CUDA(cudaGraphLaunch(exec, stream));
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    const std::vector<GroupResult> res = dev.read();
    ASSERT_TRUE(dev.ok());
    for (int g = 0; g < h.groups; ++g) check_group(h, g, counts[g], WaveSelectBudgets{}, res[g]);
    if (HasFatalFailure()) break;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Planning needs no device.
TEST(WaveSelectPlan, CapacitiesFollowTheCpuFormulas) {
  for (const WaveSelectBudgets& b : {WaveSelectBudgets{}, budgets(0.05, 1.0, 8), budgets(1.0, 0.0, 0),
                                     budgets(0.0, 0.25, 0), budgets(0.018, 0.232, 100000)}) {
    WaveIndexParams p;
    p.retrieval_budget = b.retrieval_budget;
    p.estimation_budget = b.estimation_budget;
    p.min_retrieve_clusters = b.min_retrieve_clusters;
    for (int64_t cap : {int64_t(1), int64_t(31), int64_t(64), int64_t(1778), int64_t(8192), int64_t(65536)}) {
      const WaveSelectPlan plan = cuda::plan_wave_select(WaveSelectShape{16, 4, 128}, b, cap);
      EXPECT_EQ(plan.retrieve_capacity, p.num_retrieve(cap)) << "capacity " << cap;
      EXPECT_EQ(plan.estimate_capacity, p.num_estimate(cap)) << "capacity " << cap;
      EXPECT_GE(plan.sort_capacity, plan.retrieve_capacity);
      EXPECT_EQ(plan.sort_in_workspace, plan.sort_capacity > cuda::kWaveSortSharedMax);
      EXPECT_GT(plan.workspace_bytes, size_t(16) * cap * 4 * sizeof(float));
      // Both counts only grow with the cluster count, so the capacity's values bound every run.
      for (int64_t n = 0; n < std::min<int64_t>(cap, 3000); ++n) {
        ASSERT_LE(p.num_retrieve(n), plan.retrieve_capacity);
        ASSERT_LE(p.num_estimate(n), plan.estimate_capacity);
      }
    }
  }
}

TEST(WaveSelectPlan, RejectsBadArguments) {
  const WaveSelectBudgets ok;
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{0, 4, 128}, ok, 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 9, 128}, ok, 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 0, 128}, ok, 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 4, 96}, ok, 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 4, 128}, ok, 0), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 4, 128}, budgets(1.5, 0.2, 32), 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 4, 128}, budgets(0.1, -0.2, 32), 100), Error);
  EXPECT_THROW(cuda::plan_wave_select(WaveSelectShape{8, 4, 128}, budgets(0.1, 0.2, -1), 100), Error);

  // Run-time checks fire before any launch.
  const WaveSelectPlan plan = cuda::plan_wave_select(WaveSelectShape{2, 4, 128}, ok, 1000);
  alignas(256) static char fake[256];
  auto valid = [&] {
    cuda::WaveSelectParams p;
    p.q = fake;
    p.index.num_groups = 2;
    p.index.group_size = 4;
    p.index.head_dim = 128;
    p.index.cluster_capacity = 1000;
    p.index.num_clusters = p.index.sizes = reinterpret_cast<const int32_t*>(fake);
    p.index.centroids = fake;
    p.index.value_sums = reinterpret_cast<const float*>(fake);
    p.sm_scale = 0.1f;
    p.out.retrieve_capacity = plan.retrieve_capacity;
    p.out.retrieve_ids = p.out.retrieve_count = reinterpret_cast<int32_t*>(fake);
    p.out.estimate_o = p.out.estimate_lse = reinterpret_cast<float*>(fake);
    return p;
  };
  cuda::WaveSelectParams p = valid();
  p.index.cluster_capacity = 2000;
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  p.index.group_size = 8;
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  p.out.retrieve_capacity = plan.retrieve_capacity - 1;
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  p.index.value_sums = nullptr;
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  p.q = fake + 2;  // not 16-byte aligned
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  p.estimate_ids = reinterpret_cast<int32_t*>(fake);  // without estimate_count
  EXPECT_THROW(cuda::run_wave_select(p, plan, fake, nullptr), Error);
  p = valid();
  EXPECT_THROW(cuda::run_wave_select(p, plan, nullptr, nullptr), Error);
  EXPECT_THROW(cuda::run_wave_select(p, WaveSelectPlan{}, fake, nullptr), Error);
}

#else
TEST(WaveSelectGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
