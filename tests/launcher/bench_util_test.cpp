#include "launcher/bench_util.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "runtime/core/error.h"

namespace retro::launcher {
namespace {

TEST(SizeList, ReadsSuffixesAndRejectsWhatIsNotASize) {
  EXPECT_EQ(parse_size_list("4k,32K,1m,100", "--context"), (std::vector<int64_t>{4096, 32768, 1048576, 100}));
  for (const char* bad : {"", "4k,", ",4k", "0", "-1", "4x", "k", "1.5k", "32k 64k"})
    EXPECT_THROW(parse_size_list(bad, "--context"), Error) << bad;
  try {
    parse_size_list("4q", "--batch");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--batch"), std::string::npos) << e.what();
  }
}

TEST(NameList, SplitsOnCommasAndRejectsEmptyEntries) {
  EXPECT_EQ(parse_name_list("mma,wgmma", "--kernel"), (std::vector<std::string>{"mma", "wgmma"}));
  EXPECT_EQ(parse_name_list("auto", "--kernel"), (std::vector<std::string>{"auto"}));
  for (const char* bad : {"", "mma,", ",mma", "mma,,wgmma"})
    EXPECT_THROW(parse_name_list(bad, "--kernel"), Error) << bad;
}

TEST(StepTimes, MedianPercentileAndSlowestStep) {
  EXPECT_EQ(summarize_steps({}).total_ms, 0.0);
  // 100 steps of 10 ms with two spikes: the median ignores them, p99 (nearest rank: the 99th of 100)
  // sees the smaller, the slowest is the larger with its index.
  std::vector<double> ms(100, 10.0);
  ms[37] = 50.0;
  ms[80] = 30.0;
  const StepTimes t = summarize_steps(ms);
  EXPECT_DOUBLE_EQ(t.total_ms, std::accumulate(ms.begin(), ms.end(), 0.0));
  EXPECT_DOUBLE_EQ(t.mean_ms, t.total_ms / 100);
  EXPECT_DOUBLE_EQ(t.median_ms, 10.0);
  EXPECT_DOUBLE_EQ(t.p99_ms, 30.0);
  EXPECT_DOUBLE_EQ(t.slowest_ms, 50.0);
  EXPECT_EQ(t.slowest_step, 37u);
  const StepTimes one = summarize_steps(std::vector<double>{4.0});
  EXPECT_DOUBLE_EQ(one.median_ms, 4.0);
  EXPECT_DOUBLE_EQ(one.p99_ms, 4.0);
  EXPECT_EQ(one.slowest_step, 0u);
}

TEST(Median, UpperMiddleOfAnEvenCount) {
  EXPECT_EQ(median({}), 0.0);
  EXPECT_EQ(median({3, 1, 2}), 2.0);
  EXPECT_EQ(median({4, 1, 3, 2}), 3.0);
}

}  // namespace
}  // namespace retro::launcher
