#pragma once
// Tensor parallelism for the GPU model: each rank of a tensor-parallel group holds its shard of the
// heads, MLP channels and LM-head rows (runtime/model_shard.h) on its own GPU, with its own wave
// index, host store and cluster cache, and joins the others through NCCL on the model's stream.
// Built with CUDA (RETRO_WITH_CUDA); a group of more than one rank also needs NCCL.

#include <cuda_runtime.h>

#include <memory>

#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "parallel/world_config.h"
#include "runtime/cuda/gpu_model.h"
#include "runtime/model_shard.h"
#include "runtime/weight_source.h"

namespace retro::parallel {

// The GPU model's collectives over a device communicator whose collectives are enqueued on `stream`
// (make_tp_device_communicator(world, host_group, stream)). `comm` must outlive this object.
class DeviceCommunicatorCollectives final : public runtime::DeviceShardCollectives {
 public:
  DeviceCommunicatorCollectives(Communicator& comm, cudaStream_t stream);
  void all_reduce_sum_bf16(void* data, int64_t count) override;
  void all_gather_fp32(const float* send, int64_t count, float* recv) override;
  CUstream_st* stream() const override { return stream_; }
  void* symmetric_buffer(size_t bytes) override { return comm_.symmetric_buffer(bytes); }

 private:
  Communicator& comm_;
  cudaStream_t stream_;
};

// One rank's GPU model: the whole model when tp is 1; otherwise this rank's shard, its stream, the
// group's NCCL communicator and the collectives the model uses, destroyed in the right order.
class GpuModelShard {
 public:
  // Collective over the tensor-parallel group (every rank calls it with the same arguments; a tp
  // that does not divide the model's KV heads fails on every rank alike, before any collective).
  // Runs on world.local_device, with this process bound to that GPU's NUMA node (numa_binding.h).
  // Each rank reads only its slices of `weights` into device memory.
  // `host_group` is this rank's tensor-parallel host communicator (make_tp_host_communicator) and
  // must outlive this object.
  GpuModelShard(const WorldConfig& world, Communicator& host_group, const runtime::ModelConfig& config,
                const runtime::WeightSource& weights, int64_t max_tokens, const runtime::cuda::GpuModelOptions& options);
  ~GpuModelShard();
  GpuModelShard(const GpuModelShard&) = delete;
  GpuModelShard& operator=(const GpuModelShard&) = delete;

  runtime::cuda::GpuModel& model() { return *model_; }
  const ShardingPlan& plan() const { return plan_; }
  // The device communicator of the group (a one-rank no-op when tp is 1).
  Communicator& device_group() { return *device_group_; }
  // The stream the model and the group's collectives run on (null when tp is 1: the model's own).
  cudaStream_t stream() const { return stream_; }

 private:
  void release() noexcept;  // in dependency order: model, collectives, communicator, stream

  ShardingPlan plan_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> device_group_;
  std::unique_ptr<DeviceCommunicatorCollectives> collectives_;
  std::unique_ptr<runtime::cuda::GpuModel> model_;
};

}  // namespace retro::parallel
