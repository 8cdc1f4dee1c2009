// Kernel launches of retrieval-zone attention and the zone merge (kernels in wave_retrieve.cuh).
// Argument checks and planning live in wave_retrieve.cpp: CUDA translation units stay free of fmt.

#include "attention/cuda/wave_retrieve.cuh"
#include "attention/cuda/wave_retrieve.h"
#include "attention/cuda/impl/group_dispatch.h"

namespace retro::attention::cuda {

namespace {

constexpr int kLookupThreads = 256;

size_t first_part_smem(int retrieve_capacity) { return size_t(retrieve_capacity + 1) * sizeof(int32_t); }

template <int kHeadDim, int kGroup>
cudaError_t launch(const WaveRetrieveParams& p, const WaveRetrievePlan& plan, void* workspace, cudaStream_t stream) {
  const bool fp8 = p.index.k_scales != nullptr;
  const RetrieveWorkspace ws = wave_retrieve_workspace(plan, workspace);
  const bool cached = p.cache.num_sets > 0;
  cudaError_t st = cudaSuccess;
  kernels::retrieve_lookup_kernel<kLookupThreads>
      <<<plan.num_groups, kLookupThreads, 0, stream>>>(p, ws, plan.part_capacity, plan.slot_tokens);
  if ((st = cudaGetLastError()) != cudaSuccess) return st;
  if (cached) {
    kernels::retrieve_admit_kernel<kLookupThreads>
        <<<plan.num_groups, kLookupThreads, 0, stream>>>(p, ws, plan.part_capacity, plan.slot_tokens);
    if ((st = cudaGetLastError()) != cudaSuccess) return st;
  }
  const float scale_log2 = p.sm_scale * kernels::kLog2e;
  dim3 grid(plan.num_splits, plan.num_groups);
  const size_t smem = first_part_smem(plan.retrieve_capacity);
  if (fp8)
    kernels::retrieve_attention_kernel<kHeadDim, kGroup, true>
        <<<grid, kRetrieveWarps * 32, smem, stream>>>(p, ws, plan.part_capacity, plan.slot_tokens, scale_log2);
  else
    kernels::retrieve_attention_kernel<kHeadDim, kGroup, false>
        <<<grid, kRetrieveWarps * 32, smem, stream>>>(p, ws, plan.part_capacity, plan.slot_tokens, scale_log2);
  if ((st = cudaGetLastError()) != cudaSuccess) return st;
  kernels::merge_zones_kernel<kHeadDim>
      <<<static_cast<unsigned>(int64_t(plan.num_groups) * kGroup), kHeadDim, 0, stream>>>(p, ws, plan.num_splits);
  return cudaGetLastError();
}

template <int kHeadDim, int kGroup, bool kFp8>
int ctas_per_sm_of(int retrieve_capacity) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernels::retrieve_attention_kernel<kHeadDim, kGroup, kFp8>,
                                                    kRetrieveWarps * 32,
                                                    first_part_smem(retrieve_capacity)) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return n > 0 ? n : 1;
}

// The plan does not know the element type: the grid fits one wave of either kernel.
template <int kHeadDim, int kGroup>
int ctas_per_sm(int retrieve_capacity) {
  const int bf16 = ctas_per_sm_of<kHeadDim, kGroup, false>(retrieve_capacity);
  const int fp8 = ctas_per_sm_of<kHeadDim, kGroup, true>(retrieve_capacity);
  return bf16 < fp8 ? bf16 : fp8;
}

template <int kHeadDim>
int ctas_per_sm_for_group(int group, int retrieve_capacity) {
  return impl::with_group_size(
      group, 1, [&](auto g) { return ctas_per_sm<kHeadDim, decltype(g)::value>(retrieve_capacity); });
}

template <int kHeadDim>
cudaError_t dispatch_group(const WaveRetrieveParams& p, const WaveRetrievePlan& plan, void* ws, cudaStream_t s) {
  return impl::with_group_size(plan.group_size, cudaErrorInvalidValue,
                               [&](auto g) { return launch<kHeadDim, decltype(g)::value>(p, plan, ws, s); });
}

}  // namespace

bool wave_retrieve_group_supported(int group_size) {
  return group_size >= 1 && group_size <= 8 && group_size != 3;
}

int wave_retrieve_ctas_per_sm(int head_dim, int group_size, int retrieve_capacity) {
  return head_dim == 128 ? ctas_per_sm_for_group<128>(group_size, retrieve_capacity)
                         : ctas_per_sm_for_group<64>(group_size, retrieve_capacity);
}

cudaError_t launch_wave_retrieve(const WaveRetrieveParams& p, const WaveRetrievePlan& plan, void* workspace,
                                 cudaStream_t stream) {
  if (plan.head_dim == 128) return dispatch_group<128>(p, plan, workspace, stream);
  if (plan.head_dim == 64) return dispatch_group<64>(p, plan, workspace, stream);
  return cudaErrorInvalidValue;
}

}  // namespace retro::attention::cuda
