#include "parallel/gpu_tensor_parallel.h"

#include "parallel/numa_binding.h"
#include "parallel/sharded_weights.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::parallel {

DeviceCommunicatorCollectives::DeviceCommunicatorCollectives(Communicator& comm, cudaStream_t stream)
    : comm_(comm), stream_(stream) {
  RETRO_CHECK(comm.device().is_cuda(), "the GPU model's collectives need a device communicator, got {} on {}",
              comm.backend(), comm.device().str());
}

void DeviceCommunicatorCollectives::all_reduce_sum_bf16(void* data, int64_t count) {
  comm_.all_reduce_sum(Tensor(data, DType::kBF16, {count}, comm_.device()));
}

void DeviceCommunicatorCollectives::all_gather_fp32(const float* send, int64_t count, float* recv) {
  // The communicator only reads send; Tensor views are non-const by design.
  comm_.all_gather(Tensor(const_cast<float*>(send), DType::kFP32, {count}, comm_.device()),
                   Tensor(recv, DType::kFP32, {count * comm_.size()}, comm_.device()));
}

GpuModelShard::GpuModelShard(const WorldConfig& world, Communicator& host_group, const runtime::ModelConfig& config,
                             const runtime::WeightSource& weights, int64_t max_tokens,
                             const runtime::cuda::GpuModelOptions& options)
    : plan_(plan_sharding(config, world.tp, world.tp_rank)) {
  RETRO_CHECK_KIND(world.local_device >= 0, ErrorKind::kUnsupported, "rank {} sees no GPU", world.rank);
  // Before any host memory is pinned: the host store's pages then come from the GPU's node.
  bind_to_gpu_numa_node(world.local_device);
  if (plan_.shard.is_whole()) {
    device_group_ = std::make_unique<SelfCommunicator>(Device::cuda(world.local_device));
    model_ = std::make_unique<runtime::cuda::GpuModel>(config, weights, world.local_device, max_tokens, options);
    return;
  }
  RETRO_CUDA_CHECK(cudaSetDevice(world.local_device));
  RETRO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    device_group_ = make_tp_device_communicator(world, host_group, stream_);
    collectives_ = std::make_unique<DeviceCommunicatorCollectives>(*device_group_, stream_);
    ShardedWeightSource sliced(config, weights, plan_);
    model_ = std::make_unique<runtime::cuda::GpuModel>(config, sliced, world.local_device, max_tokens, options,
                                                       plan_.shard, collectives_.get());
  } catch (...) {
    release();
    throw;
  }
}

GpuModelShard::~GpuModelShard() { release(); }

void GpuModelShard::release() noexcept {
  // The model's queued work uses the communicator and the stream.
  model_.reset();
  collectives_.reset();
  device_group_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  stream_ = nullptr;
}

}  // namespace retro::parallel
