// Planning and argument checks of the GPU wave-index build; the launches are in wave_build.cu.

#include "attention/cuda/wave_build.h"

#include <algorithm>
#include <bit>
#include <climits>

#include "attention/kmeans.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

void check_shape(const WaveBuildShape& s) {
  RETRO_CHECK(s.num_groups > 0, "wave build: num_groups must be positive, got {}", s.num_groups);
  RETRO_CHECK(s.n > 0, "wave build: n (tokens per group) must be positive, got {}", s.n);
  RETRO_CHECK(s.head_dim == 64 || s.head_dim == 128, "wave build: head_dim {} (built for 64 and 128)", s.head_dim);
  RETRO_CHECK(s.tokens_per_cluster > 0, "wave build: tokens_per_cluster must be positive, got {}",
              s.tokens_per_cluster);
  RETRO_CHECK(s.segment_tokens > 0, "wave build: segment_tokens must be positive, got {}", s.segment_tokens);
  RETRO_CHECK(s.iterations > 0, "wave build: iterations must be positive, got {}", s.iterations);
  // Token indices, sort items and (group, cluster) keys are 32-bit.
  RETRO_CHECK(int64_t(s.num_groups) * s.n <= INT_MAX, "wave build: {} groups x {} tokens exceed 2^31 - 1",
              s.num_groups, s.n);
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

}  // namespace

int64_t wave_build_num_clusters(const WaveBuildShape& s) {
  RETRO_CHECK(s.n >= 0, "wave build: negative token count {}", s.n);
  RETRO_CHECK(s.tokens_per_cluster > 0, "wave build: tokens_per_cluster must be positive, got {}",
              s.tokens_per_cluster);
  RETRO_CHECK(s.segment_tokens > 0, "wave build: segment_tokens must be positive, got {}", s.segment_tokens);
  if (s.n == 0) return 0;
  const int64_t full = (s.n - 1) / s.segment_tokens;  // segments before the last one
  return full * clusters_for_tokens(s.segment_tokens, s.tokens_per_cluster) +
         clusters_for_tokens(s.n - full * s.segment_tokens, s.tokens_per_cluster);
}

WaveBuildPlan plan_wave_build(const WaveBuildShape& shape) {
  check_shape(shape);
  WaveBuildPlan p;
  p.shape = shape;
  const int64_t groups = shape.num_groups, n = shape.n, d = shape.head_dim;
  p.num_segments = (n + shape.segment_tokens - 1) / shape.segment_tokens;
  // A full segment's count also bounds a lone short segment's, so segment s owns clusters
  // [s * clusters_per_segment, ...) in every case.
  p.clusters_per_segment = clusters_for_tokens(shape.segment_tokens, shape.tokens_per_cluster);
  p.num_clusters = wave_build_num_clusters(shape);
  const int64_t c = p.num_clusters;
  RETRO_CHECK(groups * c <= INT_MAX, "wave build: {} groups x {} clusters exceed 2^31 - 1 keys", groups, c);
  const int64_t seg_rows = std::min(shape.segment_tokens, n);
  p.assign_tiles_per_segment = static_cast<int>((seg_rows + kWaveAssignRows - 1) / kWaveAssignRows);
  RETRO_CHECK(p.num_segments * p.assign_tiles_per_segment <= INT_MAX, "wave build: assignment grid too large");
  p.mean_chunks = (n + kWaveBuildMeanRows - 1) / kWaveBuildMeanRows;
  p.sum_chunks = (n + kWaveBuildSumRows - 1) / kWaveBuildSumRows;
  p.key_bits = std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(groups * c - 1))));
  RETRO_CUDA_CHECK(wave_build_sort_temp_bytes(groups * n, p.key_bits, &p.sort_temp_bytes));

  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  const size_t items = size_t(groups) * n, clusters = size_t(groups) * c;
  p.mean_partial_offset = take(size_t(groups) * p.mean_chunks * d * sizeof(double));
  p.centroids_offset = take(clusters * d * 2);
  p.keys_offset = take(items * sizeof(uint32_t));
  p.sorted_keys_offset = take(items * sizeof(uint32_t));
  p.tokens_offset = take(items * sizeof(int32_t));
  p.sorted_tokens_offset = take(items * sizeof(int32_t));
  p.counts_offset = take(clusters * sizeof(int32_t));
  p.begins_offset = take(clusters * sizeof(int64_t));
  p.key_partial_offset = take(size_t(groups) * (c + p.sum_chunks) * d * sizeof(float));
  p.value_partial_offset = take(size_t(groups) * (c + p.sum_chunks) * d * sizeof(float));
  p.sort_temp_offset = take(p.sort_temp_bytes);
  p.workspace_bytes = off;
  return p;
}

void run_wave_build(const WaveBuildInputs& in, const WaveBuildOutputs& out, const WaveBuildPlan& plan, void* workspace,
                    cudaStream_t stream) {
  check_shape(plan.shape);
  RETRO_CHECK(plan.workspace_bytes > 0 && plan.num_clusters == wave_build_num_clusters(plan.shape),
              "wave build: run without a plan (use plan_wave_build)");
  RETRO_CHECK(workspace != nullptr && reinterpret_cast<uintptr_t>(workspace) % 256 == 0,
              "wave build: the plan needs {} bytes of 256-byte aligned workspace", plan.workspace_bytes);
  auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  RETRO_CHECK(in.k != nullptr && in.v != nullptr && aligned16(in.k) && aligned16(in.v),
              "wave build: K and V must be non-null and 16-byte aligned");
  RETRO_CHECK(in.stride_group % 8 == 0 && in.stride_token % 8 == 0 && in.stride_group >= 0 && in.stride_token >= 0,
              "wave build: K/V strides (group {}, token {}) must be non-negative multiples of 8 elements",
              in.stride_group, in.stride_token);
  RETRO_CHECK(out.centroids != nullptr && out.value_sums != nullptr && out.sizes != nullptr &&
                  out.cluster_begin != nullptr && out.order != nullptr && out.mean_key != nullptr,
              "wave build: every output pointer must be set");
  RETRO_CHECK(aligned16(out.centroids) && aligned16(out.value_sums) && aligned16(out.mean_key),
              "wave build: centroids, value_sums and mean_key must be 16-byte aligned");
  RETRO_CHECK(out.cluster_capacity >= plan.num_clusters, "wave build: cluster_capacity {} < {} clusters per group",
              out.cluster_capacity, plan.num_clusters);
  RETRO_CUDA_CHECK(launch_wave_build(in, out, plan, workspace, stream));
}

}  // namespace retro::attention::cuda
