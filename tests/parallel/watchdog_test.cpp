// The failure watchdog's rule (diagnose_ranks) and its timing from the environment, without MPI;
// the watchdog across two ranks, faults injected, is run by watchdog_fault.cmake.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/watchdog.h"

namespace retro::parallel {
namespace {

using test_support::error_of;

constexpr double kDeclare = 3.0;
const std::vector<std::string> kHosts = {"node6", "node7", "node8"};

RankHealth progressing() { return {.silent_s = 0.2, .stalled_s = 0.5}; }
RankHealth waiting(double s) { return {.silent_s = 0.2, .stalled_s = s, .waiting = true}; }
RankHealth stuck(double s) { return {.silent_s = 0.2, .stalled_s = s}; }
RankHealth ended() { return {.silent_s = 0.2, .stalled_s = 9.0, .ended = true}; }

TEST(WatchdogRule, RanksThatProgressOrWaitBrieflyAreHealthy) {
  EXPECT_EQ(diagnose_ranks({progressing(), progressing(), progressing()}, kHosts, kDeclare), "");
  // Uneven work: rank 0 waits 2.9 s per step for a slow rank 1.
  EXPECT_EQ(diagnose_ranks({waiting(2.9), stuck(2.9), progressing()}, kHosts, kDeclare), "");
}

TEST(WatchdogRule, ARankThatWaitsWhileAnotherProgressesIsHealthy) {
  // Workers waiting for a coordinator that goes on marking progress (waiting for requests).
  EXPECT_EQ(diagnose_ranks({progressing(), waiting(60.0), waiting(60.0)}, kHosts, kDeclare), "");
}

TEST(WatchdogRule, IdleRanksThatNobodyWaitsForAreHealthy) {
  EXPECT_EQ(diagnose_ranks({stuck(60.0), stuck(60.0), ended()}, kHosts, kDeclare), "");
}

TEST(WatchdogRule, ARankThatEndedIsNeitherWaitingNorAwaited) {
  // Rank 1 ended; rank 0 goes on alone with a long last stretch of work.
  EXPECT_EQ(diagnose_ranks({stuck(60.0), ended(), ended()}, kHosts, kDeclare), "");
}

TEST(WatchdogRule, ASilentRankIsNamedWithItsHost) {
  RankHealth gone = progressing();
  gone.silent_s = 3.4;
  EXPECT_EQ(diagnose_ranks({waiting(3.4), gone, progressing()}, kHosts, kDeclare),
            "rank 1 on node7 sent no heartbeat for 3.4 s: dead, stopped or cut off");
}

TEST(WatchdogRule, SilenceCountsForRanksThatEnded) {
  RankHealth gone = ended();
  gone.silent_s = 5.0;
  EXPECT_EQ(diagnose_ranks({gone, ended(), progressing()}, kHosts, kDeclare),
            "rank 0 on node6 sent no heartbeat for 5.0 s: dead, stopped or cut off");
}

TEST(WatchdogRule, SilenceComesBeforeStalls) {
  RankHealth gone = waiting(10.0);
  gone.silent_s = 4.0;
  RankHealth gone_too = stuck(1.0);
  gone_too.silent_s = 3.5;
  EXPECT_EQ(diagnose_ranks({waiting(10.0), gone, gone_too}, kHosts, kDeclare),
            "ranks 1 on node7, 2 on node8 sent no heartbeat for 4.0 s: dead, stopped or cut off");
}

TEST(WatchdogRule, ARankHungInsideAStepIsNamedWithTheRanksWaitingForIt) {
  EXPECT_EQ(diagnose_ranks({waiting(3.2), stuck(3.1), waiting(3.3)}, kHosts, kDeclare),
            "rank 1 on node7 made no progress for 3.1 s while ranks 0 on node6, 2 on node8 wait for it in a "
            "collective");
  EXPECT_EQ(diagnose_ranks({stuck(3.5), waiting(3.2), stuck(4.0)}, kHosts, kDeclare),
            "ranks 0 on node6, 2 on node8 made no progress for 3.5 s while rank 1 on node7 waits for them in a "
            "collective");
}

TEST(WatchdogRule, EveryRankWaitingWithNoProgressIsAFailure) {
  EXPECT_EQ(diagnose_ranks({waiting(3.2), waiting(3.5), waiting(3.1)}, kHosts, kDeclare),
            "ranks 0 on node6, 1 on node7, 2 on node8 have waited 3.1 s in collectives that no rank makes progress "
            "towards (mismatched collectives)");
  EXPECT_EQ(diagnose_ranks({waiting(3.2), ended(), ended()}, kHosts, kDeclare),
            "rank 0 on node6 has waited 3.2 s in collectives that no rank makes progress towards (ranks 1 on node7, "
            "2 on node8 have ended)");
}

TEST(WatchdogParams, TheTimeoutLeavesRoomForTheHeartbeatLagAndTheAbort) {
  const WatchdogParams p;
  EXPECT_EQ(p.timeout_s, 30.0);
  EXPECT_EQ(p.interval_s(), 1.0);
  EXPECT_EQ(p.declare_after_s(), 25.0);
  const WatchdogParams fast{.timeout_s = 6.0};
  EXPECT_DOUBLE_EQ(fast.interval_s(), 0.3);
  EXPECT_DOUBLE_EQ(fast.declare_after_s(), 3.1);
  const WatchdogParams shortest{.timeout_s = WatchdogParams::kMinTimeoutS};
  EXPECT_GT(shortest.declare_after_s(), 2.0);
}

TEST(WatchdogParams, TheTimeoutComesFromTheEnvironment) {
  setenv("RETRO_WATCHDOG_TIMEOUT_S", "7.5", 1);
  EXPECT_EQ(WatchdogParams::from_env().timeout_s, 7.5);
  setenv("RETRO_WATCHDOG_TIMEOUT_S", "0", 1);
  EXPECT_EQ(WatchdogParams::from_env().timeout_s, 0.0);
  for (const char* bad : {"4", "-3", "soon", "30s"}) {
    setenv("RETRO_WATCHDOG_TIMEOUT_S", bad, 1);
    const std::string msg = error_of([] { WatchdogParams::from_env(); }, ErrorKind::kInvalidArgument);
    EXPECT_NE(msg.find("RETRO_WATCHDOG_TIMEOUT_S"), std::string::npos) << msg;
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  }
  unsetenv("RETRO_WATCHDOG_TIMEOUT_S");
  EXPECT_EQ(WatchdogParams::from_env().timeout_s, 30.0);
}

}  // namespace
}  // namespace retro::parallel
