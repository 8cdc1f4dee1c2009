// The one-rank communicator and the argument checks every communicator shares (no MPI needed;
// MpiCommunicator across two ranks is in mpi_communicator_test.cpp).

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <vector>

#include "parallel/communicator.h"

namespace retro::parallel {
namespace {

using test_support::error_of;

TEST(SelfCommunicator, CollectivesOfAOneRankGroupKeepTheData) {
  SelfCommunicator comm;
  std::vector<float> data = {1.5f, -2.0f, 3.25f};
  comm.all_reduce_sum(Tensor(data.data(), DType::kFP32, {3}));
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  comm.broadcast(Tensor(data.data(), DType::kFP32, {3}), 0);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  std::vector<float> recv(3, 0.0f);
  comm.all_gather(Tensor(data.data(), DType::kFP32, {3}), Tensor(recv.data(), DType::kFP32, {3}));
  EXPECT_EQ(recv, data);
  comm.barrier();
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.rank(), 0);
}

TEST(SelfCommunicator, BadArgumentsAreRefusedLikeInAnyGroup) {
  SelfCommunicator comm;
  std::vector<int32_t> ints(4);
  std::vector<float> f(4);
  std::string msg = error_of([&] { comm.all_reduce_sum(Tensor(ints.data(), DType::kInt32, {4})); },
                             ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("fp32 or bf16"), std::string::npos) << msg;
  msg = error_of([&] { comm.all_gather(Tensor(f.data(), DType::kFP32, {2}), Tensor(f.data(), DType::kFP32, {4})); },
                 ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("recv holds 4 elements"), std::string::npos) << msg;
  error_of([&] { comm.broadcast(Tensor(f.data(), DType::kFP32, {4}), 1); }, ErrorKind::kInvalidArgument);
  msg = error_of([&] { comm.all_reduce_sum(Tensor(f.data(), DType::kFP32, {2}, {2}, Device::cpu())); },
                 ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("not contiguous"), std::string::npos) << msg;
  msg = error_of([&] { comm.all_reduce_sum(Tensor(f.data(), DType::kFP32, {4}, Device::cuda(0))); },
                 ErrorKind::kInvalidArgument);
  EXPECT_NE(msg.find("not in the memory"), std::string::npos) << msg;
}

TEST(Communicator, HostGroupOfOneRankIsTheSelfCommunicator) {
  WorldConfig w = make_world_config(MpiWorld{}, 0);
  auto comm = make_tp_host_communicator(w);
  EXPECT_STREQ(comm->backend(), "self");
  EXPECT_TRUE(comm->device().is_cpu());
}

TEST(Communicator, DeviceGroupWithoutAGpuIsUnsupported) {
  WorldConfig w = make_world_config(1, 0, 0, 1, 1, /*visible_devices=*/0);
  SelfCommunicator host;
  error_of([&] { make_tp_device_communicator(w, host, nullptr); }, ErrorKind::kUnsupported);
}

}  // namespace
}  // namespace retro::parallel
