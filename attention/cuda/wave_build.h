#pragma once
// The prefill build of the wave index on the GPU, for many groups (one group = one (sequence, KV
// head), wave_layout.h) in one call: the CUDA twin of WaveIndex::build (attention/cpu/wave_index.cpp)
// with its segmented spherical k-means (attention/kmeans.h).
//
// Semantics, as the CPU twin: keys are centred by their mean (fp32, accumulated in fp64); the n
// tokens of a group are cut into segments of segment_tokens; segment s of n_s tokens gets
// ceil(n_s / tokens_per_cluster) clusters, initialised at the tokens floor((i + 1/2) * n_s / M);
// iterations 1 .. iterations-1 assign inside each segment and set every centroid to the
// L2-normalised member mean (a centroid that lost its members keeps its direction); the last
// iteration assigns every token against the centroids of all segments of its group and stores
// un-normalised member means with the mean key added back. An empty cluster stores the mean key
// itself (centred mean 0 plus the mean, as WaveIndex::build stores it), value sum 0, size 0.
//
// Inner products run on tensor cores (mma.sync, fp16 inputs, fp32 accumulate): each centred key is
// scaled to unit length (the argmax over centroids does not change) and rounded to fp16, against the
// fp16 unit centroids, so the scores carry about 11 significand bits at bf16's mma rate. Plain bf16
// scores (about 1e-3 relative) were not enough: a near-tie of the first assignment (two centroids
// initialised on one direction, say) flipped, the next centroid updates amplified the flip and
// k-means settled in another local optimum, up to 1.7x the twin's loss on the test's data; the GPU
// test bounds the loss by 1% of the twin's.
// Member sums are fp32 in a fixed order, so a build is deterministic run to run.
//
// How it runs: a fused kernel scores a tile of 128 tokens against tiles of 128 centroids and keeps
// the running argmax in registers (no score matrix in memory); a stable radix sort (CUB) of the
// (group, cluster) keys gives the cluster-contiguous token order; member sums are taken over that
// order in chunks of kWaveBuildSumRows rows and combined per cluster in a fixed order. No cuBLAS.
//
// Plan / run: plan_wave_build() checks the shape and sizes the workspace on the host (and queries
// the sort's scratch size from the current device); run_wave_build() only launches on the stream:
// no allocation, no synchronisation, capturable in a CUDA graph.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace retro::attention::cuda {

// Tokens per CTA of the assignment kernel, sorted rows per member-sum chunk, tokens per CTA of the
// mean: shared by the kernels and the planner.
inline constexpr int kWaveAssignRows = 128;
inline constexpr int kWaveAssignCols = 128;
inline constexpr int kWaveBuildSumRows = 64;
inline constexpr int kWaveBuildMeanRows = 1024;

struct WaveBuildShape {
  int num_groups = 0;
  int64_t n = 0;       // tokens per group (every group has the same count), >= 1
  int head_dim = 0;    // 64 or 128
  int64_t tokens_per_cluster = 16;
  int64_t segment_tokens = 8192;
  int iterations = 10;
};

// Clusters of one group, summed over its segments: the CPU twin's KMeansResult::num_clusters.
int64_t wave_build_num_clusters(const WaveBuildShape& shape);

// Everything run_wave_build needs besides the pointers; byte offsets are into the workspace.
struct WaveBuildPlan {
  WaveBuildShape shape;
  int64_t num_segments = 0;
  int64_t clusters_per_segment = 0;  // of a full segment; the last one may have fewer
  int64_t num_clusters = 0;          // C, per group
  int assign_tiles_per_segment = 0;  // CTAs of kWaveAssignRows tokens per segment
  int64_t mean_chunks = 0;           // CTAs of kWaveBuildMeanRows tokens per group
  int64_t sum_chunks = 0;            // chunks of kWaveBuildSumRows sorted rows per group
  int key_bits = 0;                  // radix-sort bits of the (group, cluster) key
  size_t sort_temp_bytes = 0;
  size_t mean_partial_offset = 0;    // [groups, mean_chunks, head_dim] fp64
  size_t centroids_offset = 0;       // [groups, C, head_dim] fp16, normalised centroids of the iterations
  size_t keys_offset = 0;            // [groups, n] u32 group * C + cluster of each token
  size_t sorted_keys_offset = 0;     // [groups, n] u32
  size_t tokens_offset = 0;          // [groups, n] i32 token index (the sort's values)
  size_t sorted_tokens_offset = 0;   // [groups, n] i32
  size_t counts_offset = 0;          // [groups, C] i32
  size_t begins_offset = 0;          // [groups, C] i64
  size_t key_partial_offset = 0;     // [groups, C + sum_chunks, head_dim] fp32
  size_t value_partial_offset = 0;   // [groups, C + sum_chunks, head_dim] fp32
  size_t sort_temp_offset = 0;
  size_t workspace_bytes = 0;        // about 147 MB at 8 groups x 128K tokens, head_dim 128
};

// Throws retro::Error (kInvalidArgument) naming the field for a shape it cannot build; plan on the
// device that will run the build.
WaveBuildPlan plan_wave_build(const WaveBuildShape& shape);

struct WaveBuildInputs {
  // K and V of group g, token t at base + g * stride_group + t * stride_token (bf16 elements, rows
  // head_dim contiguous). Bases 16-byte aligned, strides multiples of 8 elements.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t stride_group = 0;
  int64_t stride_token = 0;
};

// All device memory, C = wave_build_num_clusters(shape). Written at cluster_capacity strides so the
// arrays can back a WaveIndexView directly; entries [C, cluster_capacity) of a group are not written.
struct WaveBuildOutputs {
  void* centroids = nullptr;         // [groups, capacity, head_dim] bf16 member means (mean key added back)
  float* value_sums = nullptr;       // [groups, capacity, head_dim] fp32
  int32_t* sizes = nullptr;          // [groups, capacity]
  int64_t* cluster_begin = nullptr;  // [groups, capacity] exclusive prefix sum of sizes
  // [groups, n] token t of row r of the group's cluster-contiguous list: clusters ascending, tokens
  // ascending inside a cluster (the order of WaveIndex's host store).
  int32_t* order = nullptr;
  float* mean_key = nullptr;         // [groups, head_dim] fp32
  int64_t cluster_capacity = 0;      // >= C
};

// Checks the arguments against the plan, then launches. workspace: plan.workspace_bytes of device
// memory, 256-byte aligned, used as scratch only during the call's kernels.
void run_wave_build(const WaveBuildInputs& inputs, const WaveBuildOutputs& outputs, const WaveBuildPlan& plan,
                    void* workspace, cudaStream_t stream);

// The bare launches without checks (wave_build.cu).
cudaError_t launch_wave_build(const WaveBuildInputs& inputs, const WaveBuildOutputs& outputs,
                              const WaveBuildPlan& plan, void* workspace, cudaStream_t stream);
// Scratch bytes of the radix sort of `items` keys of `key_bits` bits on the current device.
cudaError_t wave_build_sort_temp_bytes(int64_t items, int key_bits, size_t* bytes);

// Writes the K/V rows of every group in cluster-contiguous order: row r of group g is token
// order[g * n + r], stored at dst + g * dst_stride_group + r * head_dim (bf16 elements). dst_k and
// dst_v may be device memory or mapped pinned host memory (their device-visible pointers): the kernel
// writes the host store directly, 16 bytes per thread, consecutive threads on consecutive bytes.
// Either dst may be null (skipped). Returns cudaErrorInvalidValue for head_dim other than 64 / 128,
// misaligned pointers or strides (16 bytes / 8 elements), or a negative count.
cudaError_t scatter_clustered_kv(const WaveBuildInputs& inputs, const int32_t* order, int num_groups, int64_t n,
                                 int head_dim, void* dst_k, void* dst_v, int64_t dst_stride_group,
                                 cudaStream_t stream);

// The assignment step of the build, exposed so it can be tested on its own: token t of group g,
// centred (x - mean_key in fp32), goes to the centroid of maximum inner product (ties to the lower
// index) among those of its segment (within_segment: centroids [s * clusters_per_segment,
// min(C, (s + 1) * clusters_per_segment)) for segment s = t / segment_tokens) or among all C.
// The centred key is scaled to unit length (the argmax does not change) and rounded to fp16, and
// scored against the fp16 centroids on tensor cores with fp32 accumulation.
struct WaveAssignParams {
  const void* x = nullptr;  // token t of group g at x + g * stride_group + t * stride_token, bf16
  int64_t stride_group = 0;
  int64_t stride_token = 0;
  const float* mean_key = nullptr;   // [groups, head_dim] fp32, null = no centring
  const void* centroids = nullptr;   // [groups, C, head_dim] fp16, contiguous
  int num_groups = 0;
  int64_t n = 0;
  int head_dim = 0;                  // 64 or 128
  int64_t segment_tokens = 0;
  int64_t clusters_per_segment = 0;
  int64_t num_centroids = 0;         // C
  bool within_segment = false;
  uint32_t* keys = nullptr;          // [groups, n] out: g * C + cluster
  int32_t* counts = nullptr;         // [groups, C] incremented by one per assigned token
};
cudaError_t launch_wave_assign(const WaveAssignParams& params, cudaStream_t stream);

}  // namespace retro::attention::cuda
