#include "parallel/nccl_communicator.h"

#include <dlfcn.h>

#include "parallel/watchdog.h"
#include "runtime/core/logging.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/env.h"
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

namespace {

// Symmetric windows as found in the NCCL loaded at run time (2.27 and later), looked up by name so
// that the binary builds against older headers and still loads, and runs without them, against an
// older library. (ncclWindow_t is a pointer: void* here.)
struct WindowApi {
  ncclResult_t (*mem_alloc)(void**, size_t) = nullptr;
  ncclResult_t (*mem_free)(void*) = nullptr;
  ncclResult_t (*reg)(ncclComm_t, void*, size_t, void**, int) = nullptr;
  ncclResult_t (*dereg)(ncclComm_t, void*) = nullptr;
  bool complete() const { return mem_alloc && mem_free && reg && dereg; }
};
template <typename Fn>
void look_up(Fn& fn, const char* name) {
  fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}
const WindowApi& window_api() {
  static const WindowApi api = [] {
    WindowApi a;
    look_up(a.mem_alloc, "ncclMemAlloc");
    look_up(a.mem_free, "ncclMemFree");
    look_up(a.reg, "ncclCommWindowRegister");
    look_up(a.dereg, "ncclCommWindowDeregister");
    return a.complete() ? a : WindowApi{};
  }();
  return api;
}

constexpr int kWindowSymmetric = 0x01;  // NCCL_WIN_COLL_SYMMETRIC

}  // namespace

void* NcclCommunicator::symmetric_buffer(size_t bytes) {
  // Opt-in: at tp 2 on H200 a 128K batch-12 wave step took 9.91 ms with the window and 9.81 ms
  // without (one all-reduce alone 8.0 against 7.2 us), so plain buffers stay the default.
  if (!env_is("RETRO_NCCL_SYMMETRIC", "1")) return nullptr;
  const WindowApi& api = window_api();
  if (!api.complete() || bytes == 0) return nullptr;
  RETRO_CUDA_CHECK(cudaSetDevice(device_));
  Window w;
  RETRO_NCCL_CHECK(api.mem_alloc(&w.memory, bytes));
  // Collective: every rank registers here; a failure is the same on every rank (the group falls
  // back to plain buffers together).
  const ncclResult_t st = api.reg(comm_, w.memory, bytes, &w.handle, kWindowSymmetric);
  if (st != ncclSuccess) {
    RETRO_LOG_WARN("NCCL symmetric window of {} bytes not registered ({}): collectives use plain buffers", bytes,
                   ncclGetErrorString(st));
    api.mem_free(w.memory);
    return nullptr;
  }
  windows_.push_back(w);
  return w.memory;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  watchdog_unwatch_nccl(comm_);
  // Windows go first (every rank deregisters, as every rank registered), once no collective on this
  // stream can still read them.
  if (!windows_.empty()) cudaStreamSynchronize(stream_);
  for (const Window& w : windows_) {
    window_api().dereg(comm_, w.handle);
    window_api().mem_free(w.memory);
  }
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
