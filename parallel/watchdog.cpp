#include "parallel/watchdog.h"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "parallel/impl/mpi_check.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace retro::parallel {

namespace {

// What this rank's main thread reports to its watchdog thread.
std::atomic<uint64_t> g_progress{0};  // progress marks so far
std::atomic<int> g_waiting{0};        // live WaitingForPeers

#ifdef RETRO_WITH_NCCL
std::mutex g_nccl_mutex;  // held while the thread polls or aborts the communicators
std::vector<ncclComm_t> g_nccl_comms;
#endif

constexpr int kBeatTag = 1;
// While ending, how often the thread looks whether every rank has ended too.
constexpr std::chrono::milliseconds kEndPoll{10};

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One heartbeat, sent as [sizeof(Beat)] bytes.
struct Beat {
  int32_t ended = 0;      // the sender ended normally and waits for the others to end
  int32_t waiting = 0;    // the sender's main thread waits in a collective
  double stalled_s = 0.0; // since the sender's main thread last marked progress
};

// "rank 1 on node7" or "ranks 0 on node6, 1 on node7".
std::string name_ranks(const std::vector<int>& ranks, const std::vector<std::string>& hosts) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i)
    s += fmt::format("{}{} on {}", i == 0 ? "" : ", ", ranks[i], hosts[static_cast<size_t>(ranks[i])]);
  return s;
}

// Ends every rank of the job, from any thread: NCCL communicators first, so that no kernel keeps
// waiting for a peer, then MPI_Abort, after which mpirun ends the other processes.
[[noreturn]] void abort_job(int exit_code) {
  spdlog::default_logger()->flush();
#ifdef RETRO_WITH_NCCL
  // Held until the process ends: no other thread may finalise an aborted communicator.
  g_nccl_mutex.lock();
  for (ncclComm_t comm : g_nccl_comms) ncclCommAbort(comm);
#endif
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return
}

}  // namespace

WatchdogParams WatchdogParams::from_env() {
  WatchdogParams p;
  const char* v = std::getenv("RETRO_WATCHDOG_TIMEOUT_S");
  if (v == nullptr || *v == '\0') return p;
  char* end = nullptr;
  const double t = std::strtod(v, &end);
  RETRO_CHECK(end != nullptr && *end == '\0' && std::isfinite(t) && (t == 0.0 || t >= kMinTimeoutS),
              "RETRO_WATCHDOG_TIMEOUT_S must be 0 (no watchdog) or a number of seconds >= {}, got '{}'", kMinTimeoutS,
              v);
  p.timeout_s = t;
  return p;
}

std::string diagnose_ranks(const std::vector<RankHealth>& ranks, const std::vector<std::string>& hosts,
                           double declare_after_s) {
  RETRO_CHECK(ranks.size() == hosts.size(), "{} ranks but {} host names", ranks.size(), hosts.size());
  std::vector<int> silent, waiting, stuck, ended;
  double silent_for = 0.0;
  double stuck_for = std::numeric_limits<double>::infinity();
  double waited_for = std::numeric_limits<double>::infinity();
  bool progressing = false;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const RankHealth& h = ranks[i];
    const int r = static_cast<int>(i);
    if (h.silent_s >= declare_after_s) {
      silent.push_back(r);
      silent_for = std::max(silent_for, h.silent_s);
    } else if (h.ended) {
      ended.push_back(r);
    } else if (h.stalled_s < declare_after_s) {
      progressing = true;
    } else if (h.waiting) {
      waiting.push_back(r);
      waited_for = std::min(waited_for, h.stalled_s);
    } else {
      stuck.push_back(r);
      stuck_for = std::min(stuck_for, h.stalled_s);
    }
  }
  if (!silent.empty())
    return fmt::format("{} sent no heartbeat for {:.1f} s: dead, stopped or cut off", name_ranks(silent, hosts),
                       silent_for);
  if (waiting.empty()) return {};
  if (!stuck.empty())
    return fmt::format("{} made no progress for {:.1f} s while {} {} for {} in a collective", name_ranks(stuck, hosts),
                       stuck_for, name_ranks(waiting, hosts), waiting.size() == 1 ? "waits" : "wait",
                       stuck.size() == 1 ? "it" : "them");
  if (progressing) return {};
  return fmt::format("{} {} waited {:.1f} s in collectives that no rank makes progress towards ({})",
                     name_ranks(waiting, hosts), waiting.size() == 1 ? "has" : "have", waited_for,
                     ended.empty() ? std::string("mismatched collectives")
                                   : name_ranks(ended, hosts) + (ended.size() == 1 ? " has" : " have") + " ended");
}

// The watchdog thread and everything it owns. Only this thread calls MPI on `comm`.
struct Watchdog::State {
  WatchdogParams params;
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  std::vector<std::string> hosts;  // by rank

  // Per rank, its last heartbeat and when it arrived (rank 0 hears every rank, the others rank 0).
  std::vector<Beat> beats;
  std::vector<Clock::time_point> heard_at;
  // Heartbeats in flight: each buffer stays put until MPI is done with it.
  struct Send {
    std::unique_ptr<Beat> beat;
    MPI_Request request = MPI_REQUEST_NULL;
  };
  std::vector<Send> sends;
  // This rank's main thread as last sampled.
  uint64_t progress = 0;
  Clock::time_point progress_at;

  MPI_Request all_ended = MPI_REQUEST_NULL;  // barrier every rank enters when it ends

  std::mutex mutex;
  std::condition_variable wake;
  bool ending = false;  // under mutex: the main thread is in ~Watchdog

  std::thread thread;

  void run();
  void tick(Clock::time_point now, bool ended);
  Beat sample(Clock::time_point now, bool ended);
  void send(int to, const Beat& beat);
  void receive(Clock::time_point now);
  void reap_sends();
  std::string nccl_failure() const;
  [[noreturn]] void stop_job(const std::string& failure) const;
};

void Watchdog::State::run() {
  const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(params.interval_s()));
  Clock::time_point next_tick = Clock::now();
  for (;;) {
    bool ended = false;
    {
      std::unique_lock lock(mutex);
      wake.wait_until(lock, ending ? std::min(next_tick, Clock::now() + kEndPoll) : next_tick);
      ended = ending;
    }
    try {
      if (ended && all_ended == MPI_REQUEST_NULL) {
        RETRO_MPI_CHECK(MPI_Ibarrier(comm, &all_ended));
        next_tick = Clock::now();  // tell the peers at once
      }
      if (ended) {
        int done = 0;
        RETRO_MPI_CHECK(MPI_Test(&all_ended, &done, MPI_STATUS_IGNORE));
        if (done) break;
      }
      const Clock::time_point now = Clock::now();
      if (now >= next_tick) {
        tick(now, ended);
        next_tick = now + period;
      }
    } catch (const Error& e) {
      stop_job(fmt::format("heartbeats failed: {}", e.message()));
    }
  }
  // Every rank has ended: what is still in flight is dropped, and MPI keeps the buffers of the
  // sends it has not finished (their peers are ending too).
  try {
    receive(Clock::now());
    reap_sends();
  } catch (const Error& e) {
    RETRO_LOG_DEBUG("watchdog: {}", e.message());
  }
  for (Send& s : sends) {
    if (s.request == MPI_REQUEST_NULL) continue;
    MPI_Request_free(&s.request);
    static_cast<void>(s.beat.release());
  }
}

void Watchdog::State::tick(Clock::time_point now, bool ended) {
  reap_sends();
  receive(now);
  const Beat mine = sample(now, ended);
  std::string failure;
  if (rank == 0) {
    for (int r = 1; r < size; ++r) send(r, mine);
    beats[0] = mine;
    heard_at[0] = now;
    std::vector<RankHealth> health;
    for (size_t r = 0; r < beats.size(); ++r)
      health.push_back({.silent_s = seconds(now - heard_at[r]),
                        .stalled_s = beats[r].stalled_s,
                        .waiting = beats[r].waiting != 0,
                        .ended = beats[r].ended != 0});
    failure = diagnose_ranks(health, hosts, params.declare_after_s());
  } else {
    send(0, mine);
    // Rank 0 is the one rank this one judges, and only by its heartbeats.
    failure = diagnose_ranks({{.silent_s = seconds(now - heard_at[0])}}, {hosts[0]}, params.declare_after_s());
  }
  if (failure.empty()) failure = nccl_failure();
  if (!failure.empty()) stop_job(failure);
}

Beat Watchdog::State::sample(Clock::time_point now, bool ended) {
  const uint64_t p = g_progress.load(std::memory_order_relaxed);
  if (p != progress) {
    progress = p;
    progress_at = now;
  }
  return {.ended = ended ? 1 : 0,
          .waiting = g_waiting.load(std::memory_order_relaxed) > 0 ? 1 : 0,
          .stalled_s = seconds(now - progress_at)};
}

void Watchdog::State::send(int to, const Beat& beat) {
  Send s{std::make_unique<Beat>(beat), MPI_REQUEST_NULL};
  try {
    RETRO_MPI_CHECK(MPI_Isend(s.beat.get(), sizeof(Beat), MPI_BYTE, to, kBeatTag, comm, &s.request));
  } catch (const Error& e) {
    RETRO_THROW_KIND(ErrorKind::kComm, "to rank {} on {}: {}", to, hosts[static_cast<size_t>(to)], e.message());
  }
  sends.push_back(std::move(s));
}

void Watchdog::State::receive(Clock::time_point now) {
  for (;;) {
    int found = 0;
    MPI_Message message = MPI_MESSAGE_NULL;
    MPI_Status status;
    RETRO_MPI_CHECK(MPI_Improbe(MPI_ANY_SOURCE, kBeatTag, comm, &found, &message, &status));
    if (!found) return;
    Beat b;
    RETRO_MPI_CHECK(MPI_Mrecv(&b, sizeof(Beat), MPI_BYTE, &message, MPI_STATUS_IGNORE));
    beats[static_cast<size_t>(status.MPI_SOURCE)] = b;
    heard_at[static_cast<size_t>(status.MPI_SOURCE)] = now;
  }
}

void Watchdog::State::reap_sends() {
  for (Send& s : sends) {
    int done = 0;
    RETRO_MPI_CHECK(MPI_Test(&s.request, &done, MPI_STATUS_IGNORE));
  }
  std::erase_if(sends, [](const Send& s) { return s.request == MPI_REQUEST_NULL; });
}

std::string Watchdog::State::nccl_failure() const {
#ifdef RETRO_WITH_NCCL
  std::lock_guard lock(g_nccl_mutex);
  for (ncclComm_t comm : g_nccl_comms) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t polled = ncclCommGetAsyncError(comm, &state);
    if (polled != ncclSuccess) state = polled;
    if (state != ncclSuccess && state != ncclInProgress)
      return fmt::format("rank {} on {}: an NCCL communicator failed: {} ({})", rank,
                         hosts[static_cast<size_t>(rank)], ncclGetErrorString(state), ncclGetLastError(comm));
  }
#endif
  return {};
}

void Watchdog::State::stop_job(const std::string& failure) const {
  RETRO_LOG_ERROR("watchdog: {}; stopping the job", failure);
  abort_job(1);
}

Watchdog::Watchdog(const MpiWorld& world, const WatchdogParams& params) : state_(std::make_unique<State>()) {
  RETRO_CHECK_KIND(world.initialized, ErrorKind::kComm, "the watchdog needs MPI: launch with mpirun");
  RETRO_CHECK(params.timeout_s >= WatchdogParams::kMinTimeoutS, "the watchdog's timeout must be at least {} s, got {} s",
              WatchdogParams::kMinTimeoutS, params.timeout_s);
  RETRO_CHECK_KIND(world.thread_multiple, ErrorKind::kUnsupported,
                   "the failure watchdog calls MPI from its own thread and needs MPI_THREAD_MULTIPLE, which {} "
                   "does not provide (RETRO_WATCHDOG_TIMEOUT_S=0 runs without the watchdog)",
                   world.library_version);
  State& s = *state_;
  s.params = params;
  s.rank = world.rank;
  s.size = world.size;
  RETRO_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &s.comm));
  // Errors come back as codes: the thread reports them and stops the job itself.
  RETRO_MPI_CHECK(MPI_Comm_set_errhandler(s.comm, MPI_ERRORS_RETURN));
  constexpr int kLen = MPI_MAX_PROCESSOR_NAME;
  std::string mine = world.processor_name;
  mine.resize(kLen, '\0');
  std::vector<char> all(static_cast<size_t>(kLen) * static_cast<size_t>(s.size));
  RETRO_MPI_CHECK(MPI_Allgather(mine.data(), kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, s.comm));
  for (int r = 0; r < s.size; ++r) s.hosts.emplace_back(all.data() + static_cast<size_t>(r) * kLen);
  const Clock::time_point now = Clock::now();
  s.beats.assign(static_cast<size_t>(s.size), Beat{});
  s.heard_at.assign(static_cast<size_t>(s.size), now);
  s.progress = g_progress.load(std::memory_order_relaxed);
  s.progress_at = now;
  s.thread = std::thread([&s] { s.run(); });
  RETRO_LOG_DEBUG("watchdog: heartbeat every {:.2f} s; a rank silent or stalled for {:.1f} s stops the job",
                  params.interval_s(), params.declare_after_s());
}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(state_->mutex);
    state_->ending = true;
  }
  state_->wake.notify_all();
  state_->thread.join();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&state_->comm);
}

std::unique_ptr<Watchdog> start_watchdog(const MpiWorld& world) {
  if (!world.initialized || world.size == 1) return nullptr;
  const WatchdogParams params = WatchdogParams::from_env();
  if (params.timeout_s == 0.0) return nullptr;
  return std::make_unique<Watchdog>(world, params);
}

void watchdog_progress() { g_progress.fetch_add(1, std::memory_order_relaxed); }

WaitingForPeers::WaitingForPeers() {
  g_waiting.fetch_add(1, std::memory_order_relaxed);
  watchdog_progress();
}

WaitingForPeers::~WaitingForPeers() {
  g_waiting.fetch_sub(1, std::memory_order_relaxed);
  watchdog_progress();
}

#ifdef RETRO_WITH_NCCL
void watchdog_watch_nccl(ncclComm_t comm) {
  std::lock_guard lock(g_nccl_mutex);
  g_nccl_comms.push_back(comm);
}

void watchdog_unwatch_nccl(ncclComm_t comm) {
  std::lock_guard lock(g_nccl_mutex);
  std::erase(g_nccl_comms, comm);
}
#endif

void stop_job_after_error(int exit_code) {
  const MpiWorld& world = mpi_world();
  int finalized = 0;
  if (world.initialized) MPI_Finalized(&finalized);
  if (!world.initialized || world.size == 1 || finalized) return;
  abort_job(exit_code);
}

}  // namespace retro::parallel
