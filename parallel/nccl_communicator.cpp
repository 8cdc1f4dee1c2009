#include "parallel/nccl_communicator.h"

#include <cstdlib>

#include "parallel/watchdog.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

// NCCL result codes as retro::Error (kComm), with NCCL's description of the last failure.
#define RETRO_NCCL_CHECK(expr)                                                                          \
  do {                                                                                                  \
    ncclResult_t retro_nccl_status_ = (expr);                                                           \
    if (retro_nccl_status_ != ncclSuccess) [[unlikely]] {                                               \
      ::retro::detail::throw_error(::retro::ErrorKind::kComm, __FILE__, __LINE__,                       \
                                   ::fmt::format("{} failed: {} ({})", #expr,                           \
                                                 ncclGetErrorString(retro_nccl_status_),                \
                                                 ncclGetLastError(nullptr)));                           \
    }                                                                                                   \
  } while (0)

namespace retro::parallel {

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device, cudaStream_t stream)
    : bootstrap_(bootstrap), device_(device), stream_(stream) {
  RETRO_CHECK(bootstrap.device().is_cpu(), "NCCL bootstraps over a host communicator, got a {} one on {}",
              bootstrap.backend(), bootstrap.device().str());
  RETRO_CHECK(device >= 0, "NcclCommunicator needs a GPU, got device {}", device);
  // NVLink SHARP needs multicast objects that reserve memory per communicator and fabric support
  // many hosts lack; a user who wants it sets the variable.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) RETRO_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(Tensor(&id, DType::kInt8, {static_cast<int64_t>(sizeof(id))}), 0);
  RETRO_CUDA_CHECK(cudaSetDevice(device));
  RETRO_NCCL_CHECK(ncclCommInitRank(&comm_, bootstrap.size(), id, bootstrap.rank()));
  RETRO_NCCL_CHECK(ncclCommCount(comm_, &size_));
  RETRO_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
  watchdog_watch_nccl(comm_);
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  watchdog_unwatch_nccl(comm_);
  // Finalize flushes the collectives still in flight before the resources go.
  ncclCommFinalize(comm_);
  ncclCommDestroy(comm_);
}

void NcclCommunicator::all_reduce_sum(const Tensor& data) {
  impl::check_buffer(*this, data, "all_reduce_sum");
  impl::check_reduce_dtype(data, "all_reduce_sum");
  const ncclDataType_t type = data.dtype() == DType::kFP32 ? ncclFloat32 : ncclBfloat16;
  RETRO_NCCL_CHECK(ncclAllReduce(data.data(), data.data(), static_cast<size_t>(data.numel()), type, ncclSum, comm_,
                                 stream_));
}

void NcclCommunicator::all_gather(const Tensor& send, const Tensor& recv) {
  impl::check_gather(*this, send, recv);
  RETRO_NCCL_CHECK(ncclAllGather(send.data(), recv.data(), send.nbytes(), ncclUint8, comm_, stream_));
}

void NcclCommunicator::broadcast(const Tensor& data, int root) {
  impl::check_buffer(*this, data, "broadcast");
  impl::check_root(*this, root);
  RETRO_NCCL_CHECK(ncclBroadcast(data.data(), data.data(), data.nbytes(), ncclUint8, root, comm_, stream_));
}

void NcclCommunicator::barrier() {
  const WaitingForPeers waiting;  // the stream's collectives wait for the peers too
  RETRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  bootstrap_.barrier();
}

}  // namespace retro::parallel
