#include "parallel/communicator.h"

#include <cstring>

#include "parallel/mpi_communicator.h"
#ifdef RETRO_WITH_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include "runtime/core/error.h"

namespace retro::parallel {

namespace impl {

void check_buffer(const Communicator& comm, const Tensor& t, const char* what) {
  RETRO_CHECK(t.is_contiguous(), "{}: {} is not contiguous", what, t.str());
  RETRO_CHECK(t.device() == comm.device(), "{}: {} is not in the memory of the {} communicator ({})", what, t.str(),
              comm.backend(), comm.device().str());
  RETRO_CHECK(t.data() != nullptr || t.numel() == 0, "{}: {} has no data", what, t.str());
}

void check_reduce_dtype(const Tensor& t, const char* what) {
  RETRO_CHECK(t.dtype() == DType::kFP32 || t.dtype() == DType::kBF16, "{}: sums fp32 or bf16, got {}", what,
              dtype_name(t.dtype()));
}

void check_gather(const Communicator& comm, const Tensor& send, const Tensor& recv) {
  check_buffer(comm, send, "all_gather");
  check_buffer(comm, recv, "all_gather");
  RETRO_CHECK(send.dtype() == recv.dtype(), "all_gather: send is {}, recv is {}", dtype_name(send.dtype()),
              dtype_name(recv.dtype()));
  RETRO_CHECK(recv.numel() == send.numel() * comm.size(),
              "all_gather: recv holds {} elements, {} ranks x {} sent need {}", recv.numel(), comm.size(),
              send.numel(), send.numel() * comm.size());
}

void check_root(const Communicator& comm, int root) {
  RETRO_CHECK(root >= 0 && root < comm.size(), "broadcast root {} is not a rank of a group of {}", root, comm.size());
}

}  // namespace impl

void SelfCommunicator::all_reduce_sum(const Tensor& data) {
  impl::check_buffer(*this, data, "all_reduce_sum");
  impl::check_reduce_dtype(data, "all_reduce_sum");
}

void SelfCommunicator::all_gather(const Tensor& send, const Tensor& recv) {
  impl::check_gather(*this, send, recv);
  if (send.data() == recv.data() || send.numel() == 0) return;
  RETRO_CHECK_KIND(device_.is_cpu(), ErrorKind::kUnsupported,
                   "all_gather of a one-rank group on {} copies nothing: pass recv == send", device_.str());
  std::memmove(recv.data(), send.data(), send.nbytes());
}

void SelfCommunicator::broadcast(const Tensor& data, int root) {
  impl::check_buffer(*this, data, "broadcast");
  impl::check_root(*this, root);
}

std::unique_ptr<Communicator> make_tp_host_communicator(const WorldConfig& world) {
  if (world.tp == 1) return std::make_unique<SelfCommunicator>();
  // Color: the replica; key: the place in it, so group rank == tp_rank.
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, world.dp_rank, world.tp_rank);
}

std::unique_ptr<Communicator> make_tp_device_communicator(const WorldConfig& world, Communicator& host_group,
                                                          CUstream_st* stream) {
  RETRO_CHECK_KIND(world.local_device >= 0, ErrorKind::kUnsupported,
                   "a device communicator needs a GPU, and rank {} sees none", world.rank);
  RETRO_CHECK(host_group.size() == world.tp && host_group.rank() == world.tp_rank,
              "host group (rank {} of {}) is not this rank's tensor-parallel group (tp_rank {} of {})",
              host_group.rank(), host_group.size(), world.tp_rank, world.tp);
  if (world.tp == 1) return std::make_unique<SelfCommunicator>(Device::cuda(world.local_device));
#ifdef RETRO_WITH_NCCL
  return std::make_unique<NcclCommunicator>(host_group, world.local_device, stream);
#else
  RETRO_THROW_KIND(ErrorKind::kUnsupported,
                   "tensor parallelism on GPUs needs NCCL, and this build has none (set NCCL_HOME and reconfigure)");
#endif
}

}  // namespace retro::parallel
