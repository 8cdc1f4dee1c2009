// NUMA binding of a GPU rank: the kernel's cpulist format, and the decision to bind or to leave the
// process as it is (unknown node, one node, mpirun's binding elsewhere).

#include <gtest/gtest.h>

#include <vector>

#include "parallel/numa_binding.h"
#include "tests/test_support.h"

namespace retro::parallel {
namespace {

TEST(NumaBinding, CpulistsOfRangesAndSinglesParse) {
  EXPECT_EQ(parse_cpulist("0-3,8,10-11\n"), (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parse_cpulist("5"), std::vector<int>{5});
  EXPECT_EQ(parse_cpulist(""), std::vector<int>{});
  EXPECT_EQ(parse_cpulist("2,0-1,1"), (std::vector<int>{0, 1, 2}));
}

TEST(NumaBinding, MalformedCpulistsAreRefusedNamingTheText) {
  for (const char* bad : {"3-1", "a", "1,,2", "-1", "0-", "1-2-3"})
    test_support::expect_error([&] { parse_cpulist(bad); }, ErrorKind::kInvalidInput, {"cpulist", bad});
}

TEST(NumaBinding, BindsToTheNodesCpusThatTheAffinityAllows) {
  const std::vector<int> node1 = {8, 9, 10, 11}, all = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  NumaBinding b = plan_numa_binding(1, 2, node1, all);
  EXPECT_TRUE(b.bind);
  EXPECT_EQ(b.cpus, node1);
  // mpirun bound the rank to part of the node: that part.
  b = plan_numa_binding(1, 2, node1, {9, 10});
  EXPECT_TRUE(b.bind);
  EXPECT_EQ(b.cpus, (std::vector<int>{9, 10}));
}

TEST(NumaBinding, LeavesTheProcessAloneWhenThereIsNothingToGain) {
  EXPECT_FALSE(plan_numa_binding(-1, 2, {}, {0, 1}).bind);         // the platform does not say
  EXPECT_FALSE(plan_numa_binding(0, 1, {0, 1}, {0, 1}).bind);      // one node
  NumaBinding b = plan_numa_binding(1, 2, {8, 9}, {0, 1});         // mpirun bound it elsewhere
  EXPECT_FALSE(b.bind);
  EXPECT_NE(b.reason.find("mpirun"), std::string::npos) << b.reason;
}

}  // namespace
}  // namespace retro::parallel
