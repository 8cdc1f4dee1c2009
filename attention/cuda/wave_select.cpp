// Planning and argument checks of GPU cluster selection; the launches are in wave_select.cu.

#include "attention/cuda/wave_select.h"

#include <cmath>
#include <cstdint>

#include "attention/wave_index.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

// Cluster ids travel as int32 and the selection packs them into 32 bits of a sort key.
constexpr int64_t kMaxClusterCapacity = int64_t(1) << 28;

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void check_shape(const WaveSelectShape& s) {
  RETRO_CHECK(s.num_groups > 0 && s.num_groups <= 65535, "wave select: num_groups {} (1..65535)", s.num_groups);
  RETRO_CHECK(s.group_size >= 1 && s.group_size <= 8, "wave select: group size {} (built for 1..8)", s.group_size);
  RETRO_CHECK(s.head_dim == 64 || s.head_dim == 128, "wave select: head_dim {} (built for 64 and 128)", s.head_dim);
}

void check_budgets(const WaveSelectBudgets& b) {
  RETRO_CHECK(std::isfinite(b.retrieval_budget) && b.retrieval_budget >= 0.0 && b.retrieval_budget <= 1.0,
              "wave select: retrieval_budget must be a fraction in [0, 1], got {}", b.retrieval_budget);
  RETRO_CHECK(std::isfinite(b.estimation_budget) && b.estimation_budget >= 0.0,
              "wave select: estimation_budget must be >= 0 (>= 1 estimates every other cluster), got {}",
              b.estimation_budget);
  RETRO_CHECK(b.min_retrieve_clusters >= 0, "wave select: min_retrieve_clusters must be >= 0, got {}",
              b.min_retrieve_clusters);
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

WaveSelectPlan plan_wave_select(const WaveSelectShape& shape, const WaveSelectBudgets& budgets,
                                int64_t cluster_capacity) {
  check_shape(shape);
  check_budgets(budgets);
  RETRO_CHECK(cluster_capacity >= 1 && cluster_capacity <= kMaxClusterCapacity,
              "wave select: cluster_capacity {} (1..{})", cluster_capacity, kMaxClusterCapacity);
  WaveSelectPlan plan;
  plan.shape = shape;
  plan.budgets = budgets;
  plan.cluster_capacity = cluster_capacity;
  // The CPU twin's formulas; both counts only grow with the cluster count, so their values at the
  // capacity bound every run.
  WaveIndexParams counts;
  counts.retrieval_budget = budgets.retrieval_budget;
  counts.estimation_budget = budgets.estimation_budget;
  counts.min_retrieve_clusters = budgets.min_retrieve_clusters;
  plan.retrieve_capacity = static_cast<int>(counts.num_retrieve(cluster_capacity));
  plan.estimate_capacity = static_cast<int>(counts.num_estimate(cluster_capacity));
  plan.logit_tiles = static_cast<int>((cluster_capacity + kWaveLogitTile - 1) / kWaveLogitTile);
  plan.score_tiles = static_cast<int>((cluster_capacity + kWaveScoreTile - 1) / kWaveScoreTile);
  plan.estimate_slices = (plan.estimate_capacity + kWaveEstimateTile - 1) / kWaveEstimateTile;
  plan.sort_capacity = 1;
  while (plan.sort_capacity < plan.retrieve_capacity) plan.sort_capacity *= 2;
  plan.sort_in_workspace = plan.sort_capacity > kWaveSortSharedMax;
  plan.key_stride = (cluster_capacity + 3) / 4 * 4;

  const size_t groups = size_t(shape.num_groups), G = size_t(shape.group_size), d = size_t(shape.head_dim);
  const size_t cap = size_t(cluster_capacity);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at = align_up(at + bytes, 256);
    return offset;
  };
  plan.logits_offset = take(groups * cap * G * sizeof(float));
  plan.tile_partials_offset = take(groups * size_t(plan.logit_tiles) * G * 2 * sizeof(float));
  plan.tile_counts_offset = take(groups * size_t(plan.logit_tiles) * 2 * sizeof(int64_t));
  plan.keys_offset = take(groups * size_t(plan.key_stride) * sizeof(uint32_t));
  plan.estimate_ids_offset = take(groups * cap * sizeof(int32_t));
  plan.estimate_count_offset = take(groups * sizeof(int32_t));
  plan.estimate_partials_offset = take(groups * size_t(plan.estimate_slices) * G * (d + 2) * sizeof(float));
  plan.sort_offset = take(plan.sort_in_workspace ? groups * size_t(plan.sort_capacity) * sizeof(uint64_t) : 0);
  plan.workspace_bytes = at;
  return plan;
}

void run_wave_select(const WaveSelectParams& p, const WaveSelectPlan& plan, void* workspace, cudaStream_t stream) {
  RETRO_CHECK(plan.workspace_bytes > 0 && plan.logit_tiles > 0, "wave select: run without a plan");
  const WaveIndexView& ix = p.index;
  RETRO_CHECK(ix.num_groups == plan.shape.num_groups && ix.group_size == plan.shape.group_size &&
                  ix.head_dim == plan.shape.head_dim && ix.cluster_capacity == plan.cluster_capacity,
              "wave select: index of {} groups x G {} x head_dim {} x capacity {} does not match the plan "
              "({} x {} x {} x {})",
              ix.num_groups, ix.group_size, ix.head_dim, ix.cluster_capacity, plan.shape.num_groups,
              plan.shape.group_size, plan.shape.head_dim, plan.cluster_capacity);
  RETRO_CHECK(p.q != nullptr, "wave select: null q");
  RETRO_CHECK(ix.num_clusters != nullptr && ix.centroids != nullptr && ix.value_sums != nullptr && ix.sizes != nullptr,
              "wave select: the index view needs num_clusters, centroids, value_sums and sizes");
  RETRO_CHECK(p.out.retrieve_ids != nullptr && p.out.retrieve_count != nullptr &&
                  (p.keep_estimate_partials || (p.out.estimate_o != nullptr && p.out.estimate_lse != nullptr)),
              "wave select: the selection needs retrieve_ids, retrieve_count, estimate_o and estimate_lse (or "
              "keep_estimate_partials)");
  RETRO_CHECK(p.out.retrieve_capacity >= plan.retrieve_capacity,
              "wave select: retrieve_capacity {} of the selection is below the plan's {} (num_retrieve({}))",
              p.out.retrieve_capacity, plan.retrieve_capacity, plan.cluster_capacity);
  RETRO_CHECK((p.estimate_ids == nullptr) == (p.estimate_count == nullptr),
              "wave select: estimate_ids and estimate_count are given together or not at all");
  RETRO_CHECK(aligned(p.q, 16) && aligned(ix.centroids, 16) && aligned(ix.value_sums, 16),
              "wave select: q, centroids and value_sums must be 16-byte aligned (vector loads)");
  RETRO_CHECK(workspace != nullptr && aligned(workspace, 256),
              "wave select: needs a 256-byte aligned workspace of {} bytes", plan.workspace_bytes);
  RETRO_CHECK(std::isfinite(p.sm_scale), "wave select: sm_scale {} is not finite", p.sm_scale);
  RETRO_CUDA_CHECK(launch_wave_select(p, plan, workspace, stream));
}

WaveEstimatePartials wave_estimate_partials(const WaveSelectParams& p, const WaveSelectPlan& plan,
                                            const void* workspace) {
  const char* ws = static_cast<const char*>(workspace);
  WaveEstimatePartials e;
  e.partials = reinterpret_cast<const float*>(ws + plan.estimate_partials_offset);
  e.count = p.estimate_count != nullptr ? p.estimate_count
                                        : reinterpret_cast<const int32_t*>(ws + plan.estimate_count_offset);
  e.slices = plan.estimate_slices;
  return e;
}

}  // namespace retro::attention::cuda
