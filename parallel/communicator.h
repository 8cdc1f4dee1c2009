#pragma once
// Collectives over a group of ranks (a tensor-parallel group), one interface for both backends:
//   MpiCommunicator  (mpi_communicator.h)   host memory, the CPU backend
//   NcclCommunicator (nccl_communicator.h)  device memory, enqueued on a CUDA stream
//   SelfCommunicator (below)                a group of one: nothing moves
// Every rank of the group calls each collective in the same order with the same sizes and dtype.
// Buffers are contiguous Tensors in device() memory; failures throw retro::Error (kComm).

#include <memory>

#include "parallel/world_config.h"
#include "runtime/core/device.h"
#include "runtime/core/tensor.h"

struct CUstream_st;  // cudaStream_t, without the CUDA headers

namespace retro::parallel {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int size() const = 0;
  virtual int rank() const = 0;
  // Where buffers must live: the host (MPI, self) or one GPU (NCCL).
  virtual Device device() const = 0;
  virtual const char* backend() const = 0;  // "mpi", "nccl", "self"

  // data (fp32 or bf16): replaced by its element-wise sum over the group. bf16 sums are rounded to
  // bf16 after each addition, as NCCL's ring does (its symmetric kernels add in fp32).
  virtual void all_reduce_sum(const Tensor& data) = 0;
  // send [n] of every rank -> recv [size() * n] in group-rank order; any dtype, the same for both.
  virtual void all_gather(const Tensor& send, const Tensor& recv) = 0;
  // data of group rank `root` -> data of every rank; any dtype.
  virtual void broadcast(const Tensor& data, int root) = 0;
  // Returns once every rank of the group has entered it (NCCL: and this rank's enqueued work is done).
  virtual void barrier() = 0;
  // Device memory of at least `bytes` registered with the group so that collectives on it take a
  // faster path (NCCL symmetric windows), owned by the communicator; null where the backend has
  // none. Collective: every rank asks for the same size at the same point.
  virtual void* symmetric_buffer(size_t bytes) {
    (void)bytes;
    return nullptr;
  }
};

// A group of one rank: reductions and broadcasts leave the data as it is, all_gather copies send to
// recv (host memory; on a device only in place, where it is a no-op).
class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(Device device = Device::cpu()) : device_(device) {}
  int size() const override { return 1; }
  int rank() const override { return 0; }
  Device device() const override { return device_; }
  const char* backend() const override { return "self"; }
  void all_reduce_sum(const Tensor& data) override;
  void all_gather(const Tensor& send, const Tensor& recv) override;
  void broadcast(const Tensor& data, int root) override;
  void barrier() override {}

 private:
  Device device_;
};

// The host-memory communicator of this rank's tensor-parallel group: an MpiCommunicator over the
// ranks sharing its dp_rank, or a SelfCommunicator when tp is 1. Collective over the MPI world
// when tp > 1 (every rank must call it).
std::unique_ptr<Communicator> make_tp_host_communicator(const WorldConfig& world);
// The device-memory communicator of the same group on world.local_device: a NcclCommunicator
// bootstrapped over `host_group` (which must outlive it), or a SelfCommunicator on that device when
// tp is 1. Throws kUnsupported in a build without NCCL or with no visible GPU.
std::unique_ptr<Communicator> make_tp_device_communicator(const WorldConfig& world, Communicator& host_group,
                                                          CUstream_st* stream);

namespace impl {
// Shared argument checks of the implementations (kInvalidArgument naming the collective).
void check_buffer(const Communicator& comm, const Tensor& t, const char* what);
void check_reduce_dtype(const Tensor& t, const char* what);
void check_gather(const Communicator& comm, const Tensor& send, const Tensor& recv);
void check_root(const Communicator& comm, int root);
}  // namespace impl

}  // namespace retro::parallel
