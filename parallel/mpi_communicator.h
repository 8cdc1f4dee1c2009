#pragma once
// Collectives over host memory through MPI, on a communicator of its own (split from a parent, so
// its traffic never mixes with other groups'). The CPU backend's tensor-parallel all-reduces and
// gathers, and the bootstrap channel of NcclCommunicator.

#include <mpi.h>

#include "parallel/communicator.h"

namespace retro::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // MPI_Comm_split(parent, color, key): ranks with the same color form a group, ordered by key.
  // Collective over `parent`. MPI must be initialised.
  MpiCommunicator(MPI_Comm parent, int color, int key);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int size() const override { return size_; }
  int rank() const override { return rank_; }
  Device device() const override { return Device::cpu(); }
  const char* backend() const override { return "mpi"; }
  void all_reduce_sum(const Tensor& data) override;
  void all_gather(const Tensor& send, const Tensor& recv) override;
  void broadcast(const Tensor& data, int root) override;
  void barrier() override;

  MPI_Comm comm() const { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int size_ = 0;
  int rank_ = 0;
  // MPI has no bf16: a 2-byte type and a sum that widens to fp32 and rounds back.
  MPI_Datatype bf16_type_ = MPI_DATATYPE_NULL;
  MPI_Op bf16_sum_ = MPI_OP_NULL;
};

}  // namespace retro::parallel
