// A loop of all-reduces across the ranks of an mpirun launch with the failure watchdog on, and on
// request one fault or uneven work: the program the watchdog's mpirun tests run
// (watchdog_fault.cmake).
//
//   watchdog_fault [--steps N] [--step-ms MS] [--fault kill|stop|stall --fault-rank R --fault-step S]
//                  [--slow-rank R --slow-ms MS] [--linger-rank R --linger-ms MS] [--nccl]
//
//   kill   the rank ends at once (SIGKILL)
//   stop   the rank's process stops (SIGSTOP), its watchdog thread with it
//   stall  the rank's main thread sleeps forever inside the step; its watchdog thread goes on
//   slow   the rank works MS more in every step
//   linger the rank works MS more after the loop, while the others have ended
//
// --nccl: the all-reduces run on the GPUs through NCCL (one GPU per rank, node-local rank mod the
// visible GPUs), as a tensor-parallel decode step does; a peer that fails leaves the others' NCCL
// kernels waiting on the device, which the watchdog must abort.
//
// Every rank prints "rank R is process PID" at the start, so the test can look for processes left
// behind; the faulty rank prints "fault <kind> on rank R at unix ms T" first, so the test can time
// the stop from the fault. Each step checks the sum; rank 0 prints "all N steps done" at the end.

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef RETRO_WITH_NCCL
#include <cuda_runtime.h>

#include "parallel/nccl_communicator.h"
#include "parallel/world_config.h"
#include "runtime/core/cuda/cuda_check.h"
#endif
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_world.h"
#include "parallel/watchdog.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace {

struct Options {
  int steps = 20;
  int step_ms = 50;
  std::string fault;  // kill | stop | stall
  int fault_rank = -1;
  int fault_step = 3;
  int slow_rank = -1;
  int slow_ms = 0;
  int linger_rank = -1;
  int linger_ms = 0;
  bool nccl = false;
};

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

void inject(const std::string& fault, int rank) {
  const auto unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
  fmt::print("fault {} on rank {} at unix ms {}\n", fault, rank, unix_ms.count());
  std::fflush(stdout);
  if (fault == "kill") std::raise(SIGKILL);
  if (fault == "stop") std::raise(SIGSTOP);
  for (;;) sleep_ms(1000);  // stall
}

// The sum of every rank's `rank + step` in each of `n` elements.
float expected_sum(const retro::parallel::MpiWorld& world, int step) {
  return static_cast<float>(world.size * (world.size - 1) / 2 + world.size * step);
}

void run(const Options& o, const retro::parallel::MpiWorld& world) {
  fmt::print("rank {} is process {}\n", world.rank, static_cast<long>(getpid()));
  std::fflush(stdout);
  retro::parallel::MpiCommunicator comm(MPI_COMM_WORLD, 0, world.rank);
  std::vector<float> data(16);
#ifdef RETRO_WITH_NCCL
  std::unique_ptr<retro::parallel::NcclCommunicator> nccl;
  cudaStream_t stream = nullptr;
  float* device_data = nullptr;
  if (o.nccl) {
    const retro::parallel::WorldConfig wc = retro::parallel::make_world_config(world, 0);
    const int gpus = retro::parallel::visible_device_count();
    RETRO_CHECK(gpus >= wc.local_size, "--nccl needs a GPU for each of the {} ranks on this node, {} visible",
                wc.local_size, gpus);
    RETRO_CUDA_CHECK(cudaSetDevice(wc.local_device));
    RETRO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    RETRO_CUDA_CHECK(cudaMalloc(&device_data, data.size() * sizeof(float)));
    nccl = std::make_unique<retro::parallel::NcclCommunicator>(comm, wc.local_device, stream);
  }
#else
  RETRO_CHECK(!o.nccl, "--nccl needs a build with CUDA and NCCL");
#endif
  for (int step = 0; step < o.steps; ++step) {
    if (world.rank == o.fault_rank && step == o.fault_step) inject(o.fault, world.rank);
    sleep_ms(o.step_ms + (world.rank == o.slow_rank ? o.slow_ms : 0));
    for (float& x : data) x = static_cast<float>(world.rank + step);
#ifdef RETRO_WITH_NCCL
    if (nccl) {
      const size_t bytes = data.size() * sizeof(float);
      RETRO_CUDA_CHECK(cudaMemcpyAsync(device_data, data.data(), bytes, cudaMemcpyHostToDevice, stream));
      nccl->all_reduce_sum(retro::Tensor(device_data, retro::DType::kFP32, {static_cast<int64_t>(data.size())},
                                         nccl->device()));
      // As a decode step's host does: wait for the result, here with the peers' kernels.
      const retro::parallel::WaitingForPeers waiting;
      RETRO_CUDA_CHECK(cudaMemcpyAsync(data.data(), device_data, bytes, cudaMemcpyDeviceToHost, stream));
      RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
    } else
#endif
    {
      comm.all_reduce_sum(retro::Tensor(data.data(), retro::DType::kFP32, {static_cast<int64_t>(data.size())}));
    }
    RETRO_CHECK(data[0] == expected_sum(world, step), "step {}: the sum is {}, expected {}", step, data[0],
                expected_sum(world, step));
    retro::parallel::watchdog_progress();
  }
  if (world.rank == o.linger_rank) sleep_ms(o.linger_ms);
  if (world.rank == 0) fmt::print("all {} steps done\n", o.steps);
#ifdef RETRO_WITH_NCCL
  nccl.reset();
  if (device_data != nullptr) cudaFree(device_data);
  if (stream != nullptr) cudaStreamDestroy(stream);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  retro::init_logging();
  CLI::App app{"All-reduces under the failure watchdog, with one fault injected on request"};
  Options o;
  app.add_option("--steps", o.steps, "Steps, one all-reduce each");
  app.add_option("--step-ms", o.step_ms, "Work of a step in milliseconds");
  app.add_option("--fault", o.fault, "kill, stop or stall")->check(CLI::IsMember({"kill", "stop", "stall"}));
  app.add_option("--fault-rank", o.fault_rank, "Rank that fails");
  app.add_option("--fault-step", o.fault_step, "Step at which it fails");
  app.add_option("--slow-rank", o.slow_rank, "Rank whose steps take longer");
  app.add_option("--slow-ms", o.slow_ms, "Extra work per step of the slow rank");
  app.add_option("--linger-rank", o.linger_rank, "Rank that works on after the loop");
  app.add_option("--linger-ms", o.linger_ms, "How long it works on");
  app.add_flag("--nccl", o.nccl, "All-reduce on the GPUs through NCCL instead of on the host through MPI");
  // Outlives the handlers below, like the launcher's.
  std::unique_ptr<retro::parallel::Watchdog> watchdog;
  try {
    const retro::parallel::MpiWorld& world = retro::parallel::init_mpi_world(&argc, &argv, /*force=*/true);
    app.parse(argc, argv);
    watchdog = retro::parallel::start_watchdog(world);
    RETRO_CHECK(watchdog != nullptr, "the watchdog is off: run under mpirun with more than one rank");
    run(o, world);
    return 0;
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const retro::Error& e) {
    RETRO_LOG_ERROR("{}", e.what());
    retro::parallel::stop_job_after_error(1);
    return 1;
  }
}
