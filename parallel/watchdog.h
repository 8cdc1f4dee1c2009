#pragma once
// Failure watchdog of a job of several ranks. MPI and NCCL collectives wait for a missing peer
// forever, and mpirun notices a rank only once its process exits: a stopped, cut-off or hung rank
// would leave the others waiting in silence. With the watchdog, when a rank dies, stops or hangs,
// the job stops within the timeout with one error line naming the rank and what was seen.
//
//   Heartbeats  each rank runs a thread that sends a heartbeat to rank 0, the monitor, every
//               interval_s(), on a communicator of its own (MPI_Comm_dup of the world, so its
//               messages never mix with the model's), and rank 0 sends one back. A rank whose
//               heartbeats stop for declare_after_s() (killed, SIGSTOPped, cut off) is named by
//               the monitor; rank 0 is named by any other rank.
//   Progress    the main thread marks progress: watchdog_progress() after a step or a stretch of
//               long work, and every host collective marks entering and leaving through
//               WaitingForPeers. A heartbeat carries how long ago its rank last marked progress
//               and whether it waits in a collective. When a rank has waited for
//               declare_after_s() without progress, the ranks neither waiting nor progressing for
//               as long are the ones it waits for: hung inside a step (diagnose_ranks).
//   NCCL        NCCL communicators register themselves (watchdog_watch_nccl); each rank's thread
//               polls ncclCommGetAsyncError, and a rank stopping the job first aborts them
//               (ncclCommAbort) so that no kernel keeps waiting for a peer.
//   Stopping    the rank that sees a failure logs one error line and calls MPI_Abort (exit
//               status 1); mpirun then ends every rank, stopped ones included (SIGKILL).
//   Ending      a rank that ends normally says so in its heartbeats and waits, still watching
//               and watched, until every rank has ended (~Watchdog), as MPI_Finalize would wait:
//               ranks may end at different times, and a rank that has ended waits for no one's
//               progress. A rank that ends with an error stops the job (stop_job_after_error)
//               rather than leave the others waiting for it.
//
// RETRO_WATCHDOG_TIMEOUT_S (default 30; 0: no watchdog) bounds the time from a failure to the job
// stopping: a rank is declared failed after declare_after_s(), the rest covers the heartbeat lag
// and mpirun ending the processes (about 1 s measured with Open MPI on one node, whose
// odls_base_sigkill_timeout waits 1 s before the SIGKILL). The thread calls MPI while the main
// thread may be inside a collective, so the watchdog needs MPI_THREAD_MULTIPLE (init_mpi_world
// asks for it).
//
// What it cannot tell apart: work without a progress mark that outlasts declare_after_s() while
// a peer waits in a collective reads as a hang (long loops mark progress, and so does a
// coordinator waiting for requests while its workers wait for its next plan); collectives replayed
// inside a CUDA graph are invisible to the host (the loop that launches the graph marks progress
// per step); ranks are judged as one group, so in a job of several model replicas an idle replica
// is named beside a hung one; a rank that hangs after every other one ended looks like one with
// a long last stretch of work.

#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi_world.h"

#ifdef RETRO_WITH_NCCL
#include <nccl.h>
#endif

namespace retro::parallel {

struct WatchdogParams {
  static constexpr double kMinTimeoutS = 5.0;
  // What ending the processes after MPI_Abort may take.
  static constexpr double kAbortS = 2.0;

  double timeout_s = 30.0;  // a failure stops the job within this (>= kMinTimeoutS); 0: no watchdog

  // Heartbeat period, also the period of the checks: 1 s, shorter for short timeouts.
  double interval_s() const { return timeout_s / 20.0 < 1.0 ? timeout_s / 20.0 : 1.0; }
  // Silence or stall after which a rank is declared failed: the timeout less three heartbeat
  // periods (the progress mark seen a tick late, the heartbeat in flight, the monitor's tick) and
  // kAbortS. 25 s for the default, 3.1 s for a 6 s timeout.
  double declare_after_s() const { return timeout_s - 3.0 * interval_s() - kAbortS; }
  // The defaults with RETRO_WATCHDOG_TIMEOUT_S applied. Throws retro::Error (kInvalidArgument)
  // naming the variable unless it is 0 or a number of seconds >= kMinTimeoutS.
  static WatchdogParams from_env();
};

class Watchdog {
 public:
  // Collective over MPI_COMM_WORLD: duplicates it, shares the host names and starts the thread.
  // Throws retro::Error (kUnsupported) when MPI does not provide MPI_THREAD_MULTIPLE, and
  // kInvalidArgument for a timeout below kMinTimeoutS.
  Watchdog(const MpiWorld& world, const WatchdogParams& params);
  // This rank ended normally: tells the peers, waits until every rank has ended (watching them
  // meanwhile) and stops the thread. Every rank destroys its watchdog, before MPI_Finalize; a rank
  // that fails calls stop_job_after_error while its watchdog still lives (the launcher's main).
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The watchdog of this process's MPI world: null for a world of one or when
// RETRO_WATCHDOG_TIMEOUT_S is 0. Collective over the world when it is started.
std::unique_ptr<Watchdog> start_watchdog(const MpiWorld& world);

// Marks that this rank's main thread moved on. One relaxed atomic increment: cheap enough for
// every step, and harmless when no watchdog runs.
void watchdog_progress();

// While one lives, this rank's main thread waits for its peers (inside a collective). Entering
// and leaving both mark progress. Nests.
class WaitingForPeers {
 public:
  WaitingForPeers();
  ~WaitingForPeers();
  WaitingForPeers(const WaitingForPeers&) = delete;
  WaitingForPeers& operator=(const WaitingForPeers&) = delete;
};

#ifdef RETRO_WITH_NCCL
// NCCL communicators the watchdog polls for asynchronous errors and aborts when it stops the job.
// A communicator is unwatched before it is destroyed.
void watchdog_watch_nccl(ncclComm_t comm);
void watchdog_unwatch_nccl(ncclComm_t comm);
#endif

// After this rank failed with an error it has already logged: in a world of several ranks, stops
// them all (MPI_Abort with `exit_code`), since the others would wait for this one forever.
// Returns in a world of one.
void stop_job_after_error(int exit_code);

// What the monitor knows of one rank at a check.
struct RankHealth {
  double silent_s = 0.0;   // since its last heartbeat arrived
  double stalled_s = 0.0;  // since its main thread last marked progress, as of that heartbeat
  bool waiting = false;    // its main thread waits in a collective
  bool ended = false;      // it ended normally: its silence still counts, its progress no longer
};

// The monitor's rule, apart from MPI so that it can be tested alone. `ranks` and `hosts` are in
// rank order. Returns the failure to report, empty while the job is healthy:
//   ranks silent for declare_after_s         "rank 1 on node7 sent no heartbeat for 22.6 s ..."
//   else, ranks waiting that long with no progress, and ranks neither waiting nor progressing
//   that long                                "rank 1 on node7 made no progress for 22.5 s while
//                                             rank 0 on node6 waits for it in a collective"
//   else, every rank that has not ended waits with no progress (mismatched collectives, or a
//   rank that ended without them)            "ranks 0 on node6, 1 on node7 have waited 22.5 s in
//                                             collectives that no rank makes progress towards"
// A rank waiting while another one progresses is no failure: it may wait for that one.
std::string diagnose_ranks(const std::vector<RankHealth>& ranks, const std::vector<std::string>& hosts,
                           double declare_after_s);

}  // namespace retro::parallel
