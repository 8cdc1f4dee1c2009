#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "parallel/impl/mpi_check.h"
#include "parallel/watchdog.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace retro::parallel {

namespace {

void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const bf16* a = static_cast<const bf16*>(in);
  bf16* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]));
}

// MPI counts are int: larger in-place collectives run in slices of at most this many elements.
constexpr int64_t kMaxCount = INT_MAX;

int int_count(int64_t n, const char* what) {
  RETRO_CHECK(n <= kMaxCount, "{} of {} elements exceeds MPI's int count", what, n);
  return static_cast<int>(n);
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm parent, int color, int key) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  RETRO_CHECK_KIND(initialized != 0, ErrorKind::kComm, "MpiCommunicator needs MPI: launch with mpirun");
  RETRO_MPI_CHECK(MPI_Comm_split(parent, color, key, &comm_));
  // Errors on this communicator come back as codes, so they surface as retro::Error with a message.
  RETRO_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  RETRO_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  RETRO_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  RETRO_MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &bf16_type_));
  RETRO_MPI_CHECK(MPI_Type_commit(&bf16_type_));
  RETRO_MPI_CHECK(MPI_Op_create(&bf16_sum, /*commute=*/1, &bf16_sum_));
}

MpiCommunicator::~MpiCommunicator() {
  // After MPI_Finalize (an exit path) the handles are gone with MPI itself.
  if (mpi_finalized()) return;
  if (bf16_sum_ != MPI_OP_NULL) MPI_Op_free(&bf16_sum_);
  if (bf16_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&bf16_type_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce_sum(const Tensor& data) {
  impl::check_buffer(*this, data, "all_reduce_sum");
  impl::check_reduce_dtype(data, "all_reduce_sum");
  const WaitingForPeers waiting;
  const bool fp32 = data.dtype() == DType::kFP32;
  MPI_Datatype type = fp32 ? MPI_FLOAT : bf16_type_;
  MPI_Op op = fp32 ? MPI_SUM : bf16_sum_;
  char* p = static_cast<char*>(data.data());
  for (int64_t done = 0; done < data.numel();) {
    const int64_t n = std::min(kMaxCount, data.numel() - done);
    RETRO_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + done * data.element_size(), static_cast<int>(n), type, op, comm_));
    done += n;
  }
}

void MpiCommunicator::all_gather(const Tensor& send, const Tensor& recv) {
  impl::check_gather(*this, send, recv);
  const int bytes = int_count(static_cast<int64_t>(send.nbytes()), "all_gather");
  const WaitingForPeers waiting;
  RETRO_MPI_CHECK(MPI_Allgather(send.data(), bytes, MPI_BYTE, recv.data(), bytes, MPI_BYTE, comm_));
}

void MpiCommunicator::broadcast(const Tensor& data, int root) {
  impl::check_buffer(*this, data, "broadcast");
  impl::check_root(*this, root);
  const WaitingForPeers waiting;
  char* p = static_cast<char*>(data.data());
  const int64_t total = static_cast<int64_t>(data.nbytes());
  for (int64_t done = 0; done < total;) {
    const int64_t n = std::min(kMaxCount, total - done);
    RETRO_MPI_CHECK(MPI_Bcast(p + done, static_cast<int>(n), MPI_BYTE, root, comm_));
    done += n;
  }
}

void MpiCommunicator::barrier() {
  const WaitingForPeers waiting;
  RETRO_MPI_CHECK(MPI_Barrier(comm_));
}

}  // namespace retro::parallel
