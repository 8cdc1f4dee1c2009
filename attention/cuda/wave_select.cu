// Kernel launches of GPU cluster selection (kernels in wave_select.cuh). Argument checks and planning
// live in wave_select.cpp: CUDA translation units stay free of fmt.

#include "attention/cuda/wave_select.cuh"
#include "attention/cuda/wave_select.h"

namespace retro::attention::cuda {

namespace {

namespace k = wave_select_kernels;

template <typename T>
T* section(void* workspace, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(workspace) + offset);
}

template <int kHeadDim, int kRows>
cudaError_t launch_logits(const WaveSelectParams& p, const WaveSelectPlan& plan, float* logits, float* tile_partials,
                          long long* tile_counts, cudaStream_t stream) {
  const dim3 grid(plan.logit_tiles, plan.shape.num_groups);
  k::logits_kernel<kHeadDim, kRows><<<grid, k::kLogitWarps * 32, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(p.q), static_cast<const __nv_bfloat16*>(p.index.centroids), p.index.sizes,
      p.index.num_clusters, plan.shape.group_size, plan.cluster_capacity, plan.logit_tiles, p.sm_scale, logits,
      tile_partials, tile_counts);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t launch_logits_rows(const WaveSelectParams& p, const WaveSelectPlan& plan, float* logits,
                               float* tile_partials, long long* tile_counts, cudaStream_t stream) {
  // Rows are padded to a power of two (zero query rows, never written).
  const int g = plan.shape.group_size;
  if (g <= 1) return launch_logits<kHeadDim, 1>(p, plan, logits, tile_partials, tile_counts, stream);
  if (g <= 2) return launch_logits<kHeadDim, 2>(p, plan, logits, tile_partials, tile_counts, stream);
  if (g <= 4) return launch_logits<kHeadDim, 4>(p, plan, logits, tile_partials, tile_counts, stream);
  return launch_logits<kHeadDim, 8>(p, plan, logits, tile_partials, tile_counts, stream);
}

template <int kHeadDim>
cudaError_t launch_estimate(const WaveSelectParams& p, const WaveSelectPlan& plan, const float* logits,
                            const int32_t* estimate_ids, const int32_t* estimate_count, float* partials,
                            cudaStream_t stream) {
  const int groups = plan.shape.num_groups, G = plan.shape.group_size;
  if (plan.estimate_slices > 0) {
    k::estimate_partials_kernel<kHeadDim><<<dim3(plan.estimate_slices, groups), k::kEstimateThreads, 0, stream>>>(
        logits, p.index.value_sums, p.index.sizes, estimate_ids, estimate_count, G, plan.cluster_capacity,
        plan.estimate_slices, partials);
    const cudaError_t st = cudaGetLastError();
    if (st != cudaSuccess) return st;
  }
  if (p.keep_estimate_partials) return cudaSuccess;  // the consumer merges the slices
  k::estimate_merge_kernel<kHeadDim><<<groups, G * kHeadDim, 0, stream>>>(
      partials, estimate_count, G, plan.estimate_slices, p.out.estimate_o, p.out.estimate_lse);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_wave_select(const WaveSelectParams& p, const WaveSelectPlan& plan, void* workspace,
                               cudaStream_t stream) {
  const int groups = plan.shape.num_groups, G = plan.shape.group_size, d = plan.shape.head_dim;
  float* logits = section<float>(workspace, plan.logits_offset);
  float* tile_partials = section<float>(workspace, plan.tile_partials_offset);
  long long* tile_counts = section<long long>(workspace, plan.tile_counts_offset);
  uint32_t* keys = section<uint32_t>(workspace, plan.keys_offset);
  int32_t* estimate_ids =
      p.estimate_ids != nullptr ? p.estimate_ids : section<int32_t>(workspace, plan.estimate_ids_offset);
  int32_t* estimate_count =
      p.estimate_count != nullptr ? p.estimate_count : section<int32_t>(workspace, plan.estimate_count_offset);
  float* estimate_partials = section<float>(workspace, plan.estimate_partials_offset);

  cudaError_t st = d == 128 ? launch_logits_rows<128>(p, plan, logits, tile_partials, tile_counts, stream)
                            : launch_logits_rows<64>(p, plan, logits, tile_partials, tile_counts, stream);
  if (st != cudaSuccess) return st;

  k::scores_kernel<<<dim3(plan.score_tiles, groups), k::kScoreThreads, 0, stream>>>(
      logits, tile_partials, p.index.sizes, p.index.num_clusters, G, plan.cluster_capacity, plan.logit_tiles,
      plan.key_stride, keys);
  if ((st = cudaGetLastError()) != cudaSuccess) return st;

  k::SelectArgs args{};
  args.num_clusters = p.index.num_clusters;
  args.sizes = p.index.sizes;
  args.tile_counts = tile_counts;
  args.keys = keys;
  args.capacity = plan.cluster_capacity;
  args.key_stride = plan.key_stride;
  args.logit_tiles = plan.logit_tiles;
  args.budgets = plan.budgets;
  args.retrieve_capacity = plan.retrieve_capacity;
  args.retrieve_stride = p.out.retrieve_capacity;
  args.retrieve_ids = p.out.retrieve_ids;
  args.retrieve_count = p.out.retrieve_count;
  args.estimate_ids = estimate_ids;
  args.estimate_count = estimate_count;
  args.sort_workspace =
      plan.sort_in_workspace ? section<unsigned long long>(workspace, plan.sort_offset) : nullptr;
  args.sort_capacity = plan.sort_capacity;
  args.stats = reinterpret_cast<long long*>(p.stats);
  const size_t sort_smem = plan.sort_in_workspace ? 0 : size_t(plan.sort_capacity) * sizeof(unsigned long long);
  k::select_kernel<<<groups, kWaveSelectThreads, sort_smem, stream>>>(args);
  if ((st = cudaGetLastError()) != cudaSuccess) return st;

  return d == 128 ? launch_estimate<128>(p, plan, logits, estimate_ids, estimate_count, estimate_partials, stream)
                  : launch_estimate<64>(p, plan, logits, estimate_ids, estimate_count, estimate_partials, stream);
}

}  // namespace retro::attention::cuda
