#pragma once
// Wave attention of one query group (the G query heads sharing a KV head) for one decode step:
// the tripartite attention of ALGORITHM.md section 1.
//
//   steady zone     sink + window + not-yet-clustered tokens        exact
//   retrieval zone  the first n_retrieve clusters by group score     exact over their K/V lists
//   estimation zone the next n_estimate clusters                     from centroid, size, value sum
//   the rest        dropped
//
// Each zone yields (o, lse) per query head; merge_state combines them into one softmax.

#include <cstdint>
#include <span>
#include <vector>

#include "attention/dense_attention.h"
#include "attention/wave_index.h"

namespace retro::attention {

// Counts of one decode step, summed over the query groups it covered.
struct WaveStepStats {
  bool wave = false;  // false: the step ran dense attention (no index built, or dense mode)
  int64_t groups = 0;
  int64_t clusters = 0;        // clusters in the indexes
  int64_t empty_clusters = 0;  // masked out of the ranking
  int64_t retrieved_clusters = 0;
  int64_t estimated_clusters = 0;
  int64_t dropped_clusters = 0;
  int64_t steady_tokens = 0;
  int64_t retrieved_tokens = 0;
  int64_t estimated_tokens = 0;
  int64_t dropped_tokens = 0;

  int64_t exact_tokens() const { return steady_tokens + retrieved_tokens; }
  int64_t total_tokens() const { return steady_tokens + retrieved_tokens + estimated_tokens + dropped_tokens; }
  WaveStepStats& operator+=(const WaveStepStats& o);
};

// Token positions of each zone of one query group (recorded on request: it costs a pass over the
// clustered positions).
struct DecodeZones {
  std::vector<int64_t> steady, retrieved, estimated, dropped;
};

// Group score of every cluster: for each query head r, softmax over the non-empty clusters of
// logits[r, :]; summed over the rows. Empty clusters get -inf.
//   logits [rows, num_clusters], scores [num_clusters]
void group_cluster_scores(const WaveIndex& index, const float* logits, int rows, float* scores);

struct ClusterSelection {
  std::vector<int64_t> retrieved;  // best first
  std::vector<int64_t> estimated;  // best first
  int64_t non_empty = 0;
};
// Top-k (k = n_retrieve + n_estimate, at most the non-empty clusters) by score, ties to the lower id;
// the first n_retrieve are retrieved, the rest estimated. Clusters with score -inf are never chosen.
ClusterSelection select_clusters(const float* scores, int64_t num_clusters, int64_t n_retrieve, int64_t n_estimate);

// State of the estimation zone for each query head r: mass of cluster i = s_i * exp(l_ri),
// numerator exp(l_ri) * VS_i, with l = logits [rows, num_clusters]. o [rows, head_dim], lse [rows].
void estimate_clusters(const WaveIndex& index, const float* logits, int rows, std::span<const int64_t> clusters,
                       float* o, float* lse);

// Wave attention of q [rows, head_dim] (the query heads of one group) over the steady runs and the
// index, with the budgets of index.params(). o [rows, head_dim], lse [rows] are written (not merged).
// stats (optional) is incremented; zones (optional) receives the positions of each zone (steady runs
// must then carry their first_position).
void wave_attention_group(const WaveIndex& index, const float* q, int rows, float scale, std::span<const KvRun> steady,
                          float* o, float* lse, WaveStepStats* stats = nullptr, DecodeZones* zones = nullptr);

}  // namespace retro::attention
