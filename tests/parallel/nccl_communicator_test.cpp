// NcclCommunicator across the ranks of an mpirun launch, one GPU per rank (skipped without): the
// same sums, gathers and broadcasts as the MPI tests, on device memory.

#include <gtest/gtest.h>

#ifdef RETRO_WITH_NCCL

#include <cuda_runtime.h>

#include <cstdlib>
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
  // bf16 holds every integer up to 256: with (rank + 1) * (i % 8) every partial sum of up to 8 ranks
  // stays there, so the sum is exact in whatever order NCCL adds (a ring of 4 rounds 58 + 87 + 116).
  ASSERT_LE(size, 8) << "the bf16 values are chosen for at most 8 ranks";
  std::vector<float> f(n);
  std::vector<bf16> h(n);
  for (int i = 0; i < n; ++i) {
    f[i] = static_cast<float>((rank + 1) * i) + 0.5f;
    h[i] = float_to_bf16(static_cast<float>((rank + 1) * (i % 8)));
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
      wh += static_cast<float>((r + 1) * (i % 8));
    }
    ASSERT_EQ(gf[i], wf) << i;
    ASSERT_EQ(bf16_to_float(gh[i]), wh) << i;
  }
}

// The residual stream of a sharded GPU model lives in the group's symmetric buffer (NCCL symmetric
// kernels): its all-reduce sums like the plain one, in graph capture too (the decode step's).
TEST_F(NcclGroup, AllReduceInTheSymmetricBufferSumsLikeThePlainOne) {
  const int n = 12 * 4096, size = comm_->size(), rank = comm_->rank();
  ::setenv("RETRO_NCCL_SYMMETRIC", "1", 1);  // opt-in
  void* buffer = comm_->symmetric_buffer(size_t(n) * sizeof(bf16));
  ::unsetenv("RETRO_NCCL_SYMMETRIC");
  if (buffer == nullptr) GTEST_SKIP() << "no symmetric window here (NCCL before 2.27)";
  ASSERT_LE(size, 8) << "the bf16 values are chosen for at most 8 ranks";
  std::vector<bf16> h(n);
  for (int i = 0; i < n; ++i) h[i] = float_to_bf16(static_cast<float>((rank + 1) * (i % 8)));
  const Tensor view(buffer, DType::kBF16, {n}, comm_->device());
  auto check = [&](const char* how) {
    std::vector<bf16> got(n);
    RETRO_CUDA_CHECK(cudaMemcpy(got.data(), buffer, got.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
      float want = 0.0f;
      for (int r = 0; r < size; ++r) want += static_cast<float>((r + 1) * (i % 8));
      ASSERT_EQ(bf16_to_float(got[i]), want) << how << ", element " << i;
    }
  };
  RETRO_CUDA_CHECK(cudaMemcpy(buffer, h.data(), h.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  comm_->all_reduce_sum(view);
  comm_->barrier();
  check("eager");
  // Captured and replayed, as the decode step runs it.
  RETRO_CUDA_CHECK(cudaMemcpy(buffer, h.data(), h.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  RETRO_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  comm_->all_reduce_sum(view);
  RETRO_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  RETRO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  RETRO_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  comm_->barrier();
  check("graph");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
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
