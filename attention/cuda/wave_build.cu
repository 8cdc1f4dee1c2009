// Kernel launches of the GPU wave-index build (kernels in wave_build.cuh). Argument checks and
// planning live in wave_build.cpp: CUDA translation units stay free of fmt.

#include <cub/device/device_radix_sort.cuh>

#include "attention/cuda/wave_build.cuh"
#include "attention/cuda/wave_build.h"

namespace retro::attention::cuda {

namespace {

// Returns the first failing status of a launch sequence.
#define WAVE_BUILD_TRY(expr)                                    \
  do {                                                          \
    const cudaError_t wave_build_st_ = (expr);                  \
    if (wave_build_st_ != cudaSuccess) return wave_build_st_;   \
  } while (0)

unsigned blocks_for(int64_t items, int64_t per_block) { return static_cast<unsigned>((items + per_block - 1) / per_block); }

template <int kHeadDim>
cudaError_t assign(const WaveAssignParams& p, cudaStream_t stream) {
  using namespace kernels;
  constexpr int smem = AssignTile::kSmemBytes<kHeadDim>;
  auto kernel = wave_assign_kernel<kHeadDim>;
  WAVE_BUILD_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int64_t num_segments = (p.n + p.segment_tokens - 1) / p.segment_tokens;
  const int64_t seg_rows = p.segment_tokens < p.n ? p.segment_tokens : p.n;
  const int tiles_per_segment = static_cast<int>((seg_rows + kWaveAssignRows - 1) / kWaveAssignRows);
  dim3 grid(static_cast<unsigned>(num_segments * tiles_per_segment), static_cast<unsigned>(p.num_groups));
  kernel<<<grid, kBuildThreads, smem, stream>>>(static_cast<const __nv_bfloat16*>(p.x), p.stride_group, p.stride_token,
                                                p.mean_key, static_cast<const __half*>(p.centroids), p.n,
                                                p.segment_tokens, p.clusters_per_segment, p.num_centroids,
                                                tiles_per_segment, p.within_segment ? 1 : 0, p.keys, p.counts);
  return cudaGetLastError();
}

// temp == null: writes the scratch size CUB needs into temp_bytes (hence the reference).
cudaError_t sort_pairs(void* temp, size_t& temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                       const int32_t* values_in, int32_t* values_out, int64_t items, int key_bits,
                       cudaStream_t stream) {
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out,
                                         static_cast<int>(items), 0, key_bits, stream);
}

template <typename T>
T* carve(void* workspace, size_t offset) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) + offset);
}

template <int kHeadDim>
cudaError_t build(const WaveBuildInputs& in, const WaveBuildOutputs& out, const WaveBuildPlan& plan, void* ws,
                  cudaStream_t stream) {
  using namespace kernels;
  const WaveBuildShape& shape = plan.shape;
  const int groups = shape.num_groups;
  const int64_t n = shape.n;
  const int64_t num_clusters = plan.num_clusters;
  const int64_t items = int64_t(groups) * n;
  const auto* k = static_cast<const __nv_bfloat16*>(in.k);
  const auto* v = static_cast<const __nv_bfloat16*>(in.v);
  double* mean_partial = carve<double>(ws, plan.mean_partial_offset);
  __half* centroids = carve<__half>(ws, plan.centroids_offset);
  uint32_t* keys = carve<uint32_t>(ws, plan.keys_offset);
  uint32_t* sorted_keys = carve<uint32_t>(ws, plan.sorted_keys_offset);
  int32_t* tokens = carve<int32_t>(ws, plan.tokens_offset);
  int32_t* sorted_tokens = carve<int32_t>(ws, plan.sorted_tokens_offset);
  int32_t* counts = carve<int32_t>(ws, plan.counts_offset);
  int64_t* begins = carve<int64_t>(ws, plan.begins_offset);
  float* key_partial = carve<float>(ws, plan.key_partial_offset);
  float* value_partial = carve<float>(ws, plan.value_partial_offset);
  void* sort_temp = carve<void>(ws, plan.sort_temp_offset);

  // Mean key, then the strided initial centroids and the sort's token values.
  mean_partial_kernel<kHeadDim><<<dim3(static_cast<unsigned>(plan.mean_chunks), groups), kBuildThreads, 0, stream>>>(
      k, in.stride_group, in.stride_token, n, mean_partial);
  WAVE_BUILD_TRY(cudaGetLastError());
  mean_finalize_kernel<<<groups, kHeadDim, 0, stream>>>(mean_partial, plan.mean_chunks, n, kHeadDim, out.mean_key);
  WAVE_BUILD_TRY(cudaGetLastError());
  const dim3 per_cluster(blocks_for(num_clusters, kBuildWarps), groups);
  init_centroids_kernel<kHeadDim><<<per_cluster, kBuildThreads, 0, stream>>>(
      k, in.stride_group, in.stride_token, out.mean_key, n, shape.segment_tokens, plan.clusters_per_segment,
      num_clusters, centroids);
  WAVE_BUILD_TRY(cudaGetLastError());
  token_index_kernel<<<dim3(blocks_for(n, 256), groups), 256, 0, stream>>>(n, tokens);
  WAVE_BUILD_TRY(cudaGetLastError());

  WaveAssignParams ap;
  ap.x = in.k;
  ap.stride_group = in.stride_group;
  ap.stride_token = in.stride_token;
  ap.mean_key = out.mean_key;
  ap.centroids = centroids;
  ap.num_groups = groups;
  ap.n = n;
  ap.head_dim = kHeadDim;
  ap.segment_tokens = shape.segment_tokens;
  ap.clusters_per_segment = plan.clusters_per_segment;
  ap.num_centroids = num_clusters;
  ap.keys = keys;
  ap.counts = counts;
  const dim3 per_chunk(blocks_for(plan.sum_chunks, kBuildWarps), groups);

  for (int pass = 0; pass < shape.iterations; ++pass) {
    // Passes 0 .. iterations-2 stay inside their segment; the last one sees every centroid.
    const bool last = pass + 1 == shape.iterations;
    ap.within_segment = !last;
    WAVE_BUILD_TRY(cudaMemsetAsync(counts, 0, size_t(groups) * num_clusters * sizeof(int32_t), stream));
    WAVE_BUILD_TRY(assign<kHeadDim>(ap, stream));
    // Stable: equal keys keep token order, so each cluster's tokens come out ascending. The last
    // pass sorts the tokens straight into the output order.
    int32_t* order = last ? out.order : sorted_tokens;
    size_t sort_bytes = plan.sort_temp_bytes;
    WAVE_BUILD_TRY(sort_pairs(sort_temp, sort_bytes, keys, sorted_keys, tokens, order, items, plan.key_bits,
                              stream));
    cluster_begin_kernel<<<groups, kScanThreads, 0, stream>>>(counts, num_clusters, begins,
                                                              last ? out.sizes : nullptr,
                                                              last ? out.cluster_begin : nullptr, out.cluster_capacity);
    WAVE_BUILD_TRY(cudaGetLastError());
    if (!last) {
      member_partial_kernel<kHeadDim, false><<<per_chunk, kBuildThreads, 0, stream>>>(
          k, v, in.stride_group, in.stride_token, out.mean_key, sorted_keys, order, n, num_clusters, plan.sum_chunks,
          key_partial, nullptr);
      WAVE_BUILD_TRY(cudaGetLastError());
      finalize_kernel<kHeadDim, false><<<per_cluster, kBuildThreads, 0, stream>>>(
          counts, begins, key_partial, nullptr, num_clusters, plan.sum_chunks, out.mean_key, centroids, nullptr,
          nullptr, 0);
      WAVE_BUILD_TRY(cudaGetLastError());
    } else {
      member_partial_kernel<kHeadDim, true><<<per_chunk, kBuildThreads, 0, stream>>>(
          k, v, in.stride_group, in.stride_token, out.mean_key, sorted_keys, order, n, num_clusters, plan.sum_chunks,
          key_partial, value_partial);
      WAVE_BUILD_TRY(cudaGetLastError());
      finalize_kernel<kHeadDim, true><<<per_cluster, kBuildThreads, 0, stream>>>(
          counts, begins, key_partial, value_partial, num_clusters, plan.sum_chunks, out.mean_key, nullptr,
          static_cast<__nv_bfloat16*>(out.centroids), out.value_sums, out.cluster_capacity);
      WAVE_BUILD_TRY(cudaGetLastError());
    }
  }
  return cudaSuccess;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t wave_build_sort_temp_bytes(int64_t items, int key_bits, size_t* bytes) {
  *bytes = 0;
  return sort_pairs(nullptr, *bytes, nullptr, nullptr, nullptr, nullptr, items, key_bits, nullptr);
}

cudaError_t launch_wave_build(const WaveBuildInputs& inputs, const WaveBuildOutputs& outputs,
                              const WaveBuildPlan& plan, void* workspace, cudaStream_t stream) {
  if (plan.shape.head_dim == 128) return build<128>(inputs, outputs, plan, workspace, stream);
  if (plan.shape.head_dim == 64) return build<64>(inputs, outputs, plan, workspace, stream);
  return cudaErrorInvalidValue;
}

cudaError_t launch_wave_assign(const WaveAssignParams& params, cudaStream_t stream) {
  if (params.n == 0 || params.num_groups == 0) return cudaSuccess;
  if (params.head_dim == 128) return assign<128>(params, stream);
  if (params.head_dim == 64) return assign<64>(params, stream);
  return cudaErrorInvalidValue;
}

cudaError_t scatter_clustered_kv(const WaveBuildInputs& in, const int32_t* order, int num_groups, int64_t n,
                                 int head_dim, void* dst_k, void* dst_v, int64_t dst_stride_group,
                                 cudaStream_t stream) {
  if ((head_dim != 64 && head_dim != 128) || num_groups < 0 || n < 0) return cudaErrorInvalidValue;
  if (num_groups == 0 || n == 0 || (dst_k == nullptr && dst_v == nullptr)) return cudaSuccess;
  if (order == nullptr || (dst_k != nullptr && (in.k == nullptr || !aligned16(in.k) || !aligned16(dst_k))) ||
      (dst_v != nullptr && (in.v == nullptr || !aligned16(in.v) || !aligned16(dst_v))) || in.stride_group % 8 != 0 ||
      in.stride_token % 8 != 0 || dst_stride_group % 8 != 0)
    return cudaErrorInvalidValue;
  const int64_t total_chunks = int64_t(num_groups) * n * (head_dim / 8);
  const int threads = 256;
  // A capped grid (many CTAs per SM); the grid-stride loop covers the rest.
  const int64_t wanted = (total_chunks + threads - 1) / threads;
  const int64_t blocks = wanted < (int64_t(1) << 16) ? wanted : (int64_t(1) << 16);
  const auto* k = static_cast<const __nv_bfloat16*>(in.k);
  const auto* v = static_cast<const __nv_bfloat16*>(in.v);
  auto* dk = static_cast<__nv_bfloat16*>(dst_k);
  auto* dv = static_cast<__nv_bfloat16*>(dst_v);
  if (head_dim == 128) {
    kernels::scatter_clustered_kv_kernel<128><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        k, v, in.stride_group, in.stride_token, order, n, total_chunks, dk, dv, dst_stride_group);
  } else {
    kernels::scatter_clustered_kv_kernel<64><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        k, v, in.stride_group, in.stride_token, order, n, total_chunks, dk, dv, dst_stride_group);
  }
  return cudaGetLastError();
}

}  // namespace retro::attention::cuda
