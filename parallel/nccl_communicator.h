#pragma once
// Collectives over GPU memory through NCCL, enqueued on one CUDA stream with no host wait, so a
// decode step that uses them can be captured in a CUDA graph. Built when NCCL is found
// (RETRO_WITH_NCCL); make_tp_device_communicator (communicator.h) is the way in for callers that
// must also build without it.

#include <cuda_runtime.h>
#include <nccl.h>

#include <vector>

#include "parallel/communicator.h"

namespace retro::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Joins the group that `bootstrap` spans (host collectives over the same ranks, in the same order:
  // an MpiCommunicator): its rank 0 creates the NCCL unique id and broadcasts it, then every rank
  // initialises on `device`, which becomes the current device. Every collective runs on `stream`
  // (null: the legacy default stream). `bootstrap` must outlive this communicator (barrier uses it).
  // Sets NCCL_NVLS_ENABLE=0 unless the environment already sets it.
  NcclCommunicator(Communicator& bootstrap, int device, cudaStream_t stream);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int size() const override { return size_; }
  int rank() const override { return rank_; }
  Device device() const override { return Device::cuda(device_); }
  const char* backend() const override { return "nccl"; }
  void all_reduce_sum(const Tensor& data) override;
  void all_gather(const Tensor& send, const Tensor& recv) override;
  void broadcast(const Tensor& data, int root) override;
  // Waits for the work enqueued on the stream, then for every rank (over `bootstrap`).
  void barrier() override;
  // ncclMemAlloc memory registered as a symmetric window (NCCL_WIN_COLL_SYMMETRIC): all-reduces of
  // small messages in it run NCCL's symmetric kernels over NVLink. Null when the NCCL found at run
  // time has no window registration (before 2.27), when registration fails, or unless
  // RETRO_NCCL_SYMMETRIC=1 (opt-in).
  void* symmetric_buffer(size_t bytes) override;

  ncclComm_t comm() const { return comm_; }
  cudaStream_t stream() const { return stream_; }

 private:
  Communicator& bootstrap_;
  int device_;
  cudaStream_t stream_;
  ncclComm_t comm_ = nullptr;
  int size_ = 0;
  int rank_ = 0;
  struct Window {
    void* memory = nullptr;
    void* handle = nullptr;  // ncclWindow_t
  };
  std::vector<Window> windows_;
};

}  // namespace retro::parallel
