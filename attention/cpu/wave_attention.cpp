#include "attention/wave_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attention/impl/vector_ops.h"
#include "attention/merge.h"
#include "runtime/core/error.h"

namespace retro::attention {

WaveStepStats& WaveStepStats::operator+=(const WaveStepStats& o) {
  wave = wave || o.wave;
  groups += o.groups;
  clusters += o.clusters;
  empty_clusters += o.empty_clusters;
  retrieved_clusters += o.retrieved_clusters;
  estimated_clusters += o.estimated_clusters;
  dropped_clusters += o.dropped_clusters;
  steady_tokens += o.steady_tokens;
  retrieved_tokens += o.retrieved_tokens;
  estimated_tokens += o.estimated_tokens;
  dropped_tokens += o.dropped_tokens;
  return *this;
}

void group_cluster_scores(const WaveIndex& index, const float* logits, int rows, float* scores) {
  const int64_t m = index.num_clusters();
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < m; ++i) scores[i] = index.cluster_size(i) > 0 ? 0.0f : kMasked;
  for (int r = 0; r < rows; ++r) {
    const float* l = logits + r * m;
    float mx = kMasked;
    for (int64_t i = 0; i < m; ++i)
      if (scores[i] != kMasked) mx = std::max(mx, l[i]);
    if (mx == kMasked) return;  // every cluster is empty
    double sum = 0.0;
    for (int64_t i = 0; i < m; ++i)
      if (scores[i] != kMasked) sum += std::exp(l[i] - mx);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < m; ++i)
      if (scores[i] != kMasked) scores[i] += std::exp(l[i] - mx) * inv;
  }
}

ClusterSelection select_clusters(const float* scores, int64_t num_clusters, int64_t n_retrieve, int64_t n_estimate) {
  RETRO_CHECK(n_retrieve >= 0 && n_estimate >= 0, "select_clusters: negative budget (retrieve {}, estimate {})",
              n_retrieve, n_estimate);
  ClusterSelection sel;
  std::vector<int64_t> candidates;
  candidates.reserve(static_cast<size_t>(num_clusters));
  for (int64_t i = 0; i < num_clusters; ++i)
    if (scores[i] != -std::numeric_limits<float>::infinity()) candidates.push_back(i);
  sel.non_empty = static_cast<int64_t>(candidates.size());
  const int64_t k = std::min(n_retrieve + n_estimate, sel.non_empty);
  auto better = [scores](int64_t a, int64_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(), better);
  const int64_t nr = std::min(n_retrieve, k);
  sel.retrieved.assign(candidates.begin(), candidates.begin() + nr);
  sel.estimated.assign(candidates.begin() + nr, candidates.begin() + k);
  return sel;
}

void estimate_clusters(const WaveIndex& index, const float* logits, int rows, std::span<const int64_t> clusters,
                       float* o, float* lse) {
  const int d = index.head_dim();
  const int64_t m = index.num_clusters();
  init_states(o, lse, rows, d);
  if (clusters.empty()) return;
  std::vector<float> log_size(clusters.size());
  for (size_t j = 0; j < clusters.size(); ++j) log_size[j] = std::log(static_cast<float>(index.cluster_size(clusters[j])));
  for (int r = 0; r < rows; ++r) {
    const float* l = logits + r * m;
    // ln of the estimated mass of cluster i: ln(s_i) + l_i.
    float mx = -std::numeric_limits<float>::infinity();
    for (size_t j = 0; j < clusters.size(); ++j) mx = std::max(mx, log_size[j] + l[clusters[j]]);
    double mass = 0.0;
    for (size_t j = 0; j < clusters.size(); ++j) mass += std::exp(log_size[j] + l[clusters[j]] - mx);
    const float state_lse = mx + static_cast<float>(std::log(mass));
    // Output: sum of exp(l_i) * VS_i over the estimated mass.
    float* orow = o + r * d;
    for (size_t j = 0; j < clusters.size(); ++j)
      impl::axpy(std::exp(l[clusters[j]] - state_lse), index.value_sum(clusters[j]), orow, d);
    lse[r] = state_lse;
  }
}

void wave_attention_group(const WaveIndex& index, const float* q, int rows, float scale, std::span<const KvRun> steady,
                          float* o, float* lse, WaveStepStats* stats, DecodeZones* zones) {
  const int d = index.head_dim();
  const int64_t m = index.num_clusters();
  const WaveIndexParams& params = index.params();

  // Steady zone: exact.
  init_states(o, lse, rows, d);
  attend_exact(q, rows, d, scale, nullptr, steady, o, lse);

  thread_local std::vector<float> logits, scores, est_o, est_lse;
  thread_local std::vector<KvRun> runs;
  logits.resize(static_cast<size_t>(rows * m));
  scores.resize(static_cast<size_t>(m));
  index.centroid_logits(q, rows, scale, logits.data());
  group_cluster_scores(index, logits.data(), rows, scores.data());
  const ClusterSelection sel = select_clusters(scores.data(), m, params.num_retrieve(m), params.num_estimate(m));

  // Retrieval zone: exact over the gathered cluster lists, merged into the steady state.
  runs.clear();
  for (int64_t c : sel.retrieved) index.cluster_runs(c, runs);
  attend_exact(q, rows, d, scale, nullptr, runs, o, lse);

  // Estimation zone: from the meta index only.
  est_o.resize(static_cast<size_t>(rows * d));
  est_lse.resize(static_cast<size_t>(rows));
  estimate_clusters(index, logits.data(), rows, sel.estimated, est_o.data(), est_lse.data());
  merge_states(o, lse, est_o.data(), est_lse.data(), rows, d);

  if (stats != nullptr || zones != nullptr) {
    WaveStepStats s;
    s.wave = true;
    s.groups = 1;
    s.clusters = m;
    s.empty_clusters = m - sel.non_empty;
    s.retrieved_clusters = static_cast<int64_t>(sel.retrieved.size());
    s.estimated_clusters = static_cast<int64_t>(sel.estimated.size());
    s.dropped_clusters = sel.non_empty - s.retrieved_clusters - s.estimated_clusters;
    for (const KvRun& run : steady) s.steady_tokens += run.n;
    for (int64_t c : sel.retrieved) s.retrieved_tokens += index.cluster_size(c);
    for (int64_t c : sel.estimated) s.estimated_tokens += index.cluster_size(c);
    s.dropped_tokens = index.num_tokens() - s.retrieved_tokens - s.estimated_tokens;
    if (stats != nullptr) *stats += s;
    if (zones != nullptr) {
      *zones = DecodeZones{};
      for (const KvRun& run : steady)
        for (int64_t j = 0; j < run.n; ++j) zones->steady.push_back(run.first_position + j);
      std::vector<char> chosen(static_cast<size_t>(m), 0);
      for (int64_t c : sel.retrieved) {
        index.cluster_positions(c, zones->retrieved);
        chosen[static_cast<size_t>(c)] = 1;
      }
      for (int64_t c : sel.estimated) {
        index.cluster_positions(c, zones->estimated);
        chosen[static_cast<size_t>(c)] = 1;
      }
      for (int64_t c = 0; c < m; ++c)
        if (!chosen[static_cast<size_t>(c)]) index.cluster_positions(c, zones->dropped);
    }
  }
}

}  // namespace retro::attention
