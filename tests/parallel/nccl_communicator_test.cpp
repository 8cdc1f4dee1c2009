// NcclCommunicator across the ranks of an mpirun launch, one GPU per rank (skipped without): the
// same sums, gathers and broadcasts as the MPI tests, on device memory.

#include <gtest/gtest.h>

#ifdef RETRO_WITH_NCCL

#include <cuda_runtime.h>

#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/nccl_communicator.h"
#include "parallel/world_config.h"
#include "runtime/core/allocator.h"
#include "tests/parallel/nccl_ranks.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/dtype.h"

namespace retro::parallel {
namespace {

class NcclGroup : public test::NcclRanks {
 protected:
  void SetUp() override {
    NcclRanks::SetUp();
    if (IsSkipped()) return;
    RETRO_CUDA_CHECK(cudaSetDevice(world_.local_device));
    RETRO_CUDA_CHECK(cudaStreamCreate(&stream_));
    comm_ = make_tp_device_communicator(world_, *host_group_, stream_);
    device_ = make_device_allocator(world_.local_device);
  }
  void TearDown() override {
    comm_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // A device copy of `values`, as a [n] tensor of `dtype`.
  template <typename T>
  TensorBuffer upload(const std::vector<T>& values) {
    TensorBuffer b(*device_, dtype_of<T>, {static_cast<int64_t>(values.size())}, MemoryPurpose::kWorkspace);
    RETRO_CUDA_CHECK(cudaMemcpy(b.data(), values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice));
    return b;
  }
  template <typename T>
  std::vector<T> download(const TensorBuffer& b) {
    std::vector<T> out(static_cast<size_t>(b.view().numel()));
    RETRO_CUDA_CHECK(cudaMemcpy(out.data(), b.data(), out.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<Allocator> device_;
};

TEST_F(NcclGroup, AllReduceSumsFp32AndBf16OnTheDevice) {
  EXPECT_STREQ(comm_->backend(), "nccl");
  const int n = 1000, size = comm_->size(), rank = comm_->rank();
  std::vector<float> f(n);
  std::vector<bf16> h(n);
  for (int i = 0; i < n; ++i) {
    f[i] = static_cast<float>((rank + 1) * i) + 0.5f;
    h[i] = float_to_bf16(static_cast<float>((rank + 1) * (i % 32)));
  }
  TensorBuffer df = upload(f), dh = upload(h);
  comm_->all_reduce_sum(df);
  comm_->all_reduce_sum(dh);
  comm_->barrier();
  std::vector<float> gf = download<float>(df);
  std::vector<bf16> gh = download<bf16>(dh);
  for (int i = 0; i < n; ++i) {
    float wf = 0.0f, wh = 0.0f;
    for (int r = 0; r < size; ++r) {
      wf += static_cast<float>((r + 1) * i) + 0.5f;
      wh += static_cast<float>((r + 1) * (i % 32));
    }
    ASSERT_EQ(gf[i], wf) << i;
    ASSERT_EQ(bf16_to_float(gh[i]), wh) << i;
  }
}

TEST_F(NcclGroup, AllGatherAndBroadcastOnTheDevice) {
  const int n = 7, size = comm_->size(), rank = comm_->rank();
  std::vector<int32_t> send(n);
  for (int i = 0; i < n; ++i) send[i] = 100 * rank + i;
  TensorBuffer ds = upload(send), dr = upload(std::vector<int32_t>(static_cast<size_t>(n * size), -1));
  comm_->all_gather(ds, dr);
  std::vector<int32_t> data(n, rank == 1 ? 42 : 0);
  TensorBuffer db = upload(data);
  comm_->broadcast(db, /*root=*/1);
  comm_->barrier();
  std::vector<int32_t> got = download<int32_t>(dr);
  for (int r = 0; r < size; ++r)
    for (int i = 0; i < n; ++i) EXPECT_EQ(got[static_cast<size_t>(r * n + i)], 100 * r + i);
  for (int32_t x : download<int32_t>(db)) EXPECT_EQ(x, 42);
}

}  // namespace
}  // namespace retro::parallel

#endif  // RETRO_WITH_NCCL
