// pick_growth: which due update segments grow before a decode step.

#include "attention/wave_growth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "runtime/core/error.h"

namespace retro::attention {
namespace {

TEST(WaveGrowth, NothingDueGrowsNothing) { EXPECT_TRUE(pick_growth({}).empty()); }

TEST(WaveGrowth, OneDueSegmentWithRoomGrowsAtOnce) {
  const std::vector<DueSegment> got = pick_growth({{3, 1, 100}});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].layer, 3);
  EXPECT_EQ(got[0].slot, 1);
}

TEST(WaveGrowth, EverySegmentAtItsDeadlineGrowsAndOnlyAsManyMoreAsTheRateNeeds) {
  std::vector<DueSegment> due;
  for (int s = 0; s < 5; ++s) due.push_back({7, s, 0});
  for (int s = 5; s < 8; ++s) due.push_back({2, s, 100});
  const std::vector<DueSegment> got = pick_growth(due);
  ASSERT_EQ(got.size(), 5u);
  for (const DueSegment& d : got) EXPECT_EQ(d.steps_left, 0) << "layer " << d.layer << " slot " << d.slot;
}

TEST(WaveGrowth, EarliestDeadlineFirstThenLayerAndSequence) {
  const std::vector<DueSegment> got =
      pick_growth({{1, 0, 9, 0}, {0, 2, 3, 2}, {0, 1, 3, 1}, {4, 0, 1, 0}, {2, 2, 1, 5}, {2, 1, 1, 7}, {2, 0, 1, 6}});
  // Deadlines 1, 1, 1, 1 within two steps: ceil(4 / 2) = 2.
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].layer, 2);
  EXPECT_EQ(got[0].sequence, 5u);
  EXPECT_EQ(got[1].layer, 2);
  EXPECT_EQ(got[1].sequence, 6u);
}

// Ties go by the sequence, not the slot: the same sequences in other slots grow at the same steps.
TEST(WaveGrowth, SwappingSlotsPicksTheSameSequences) {
  std::vector<DueSegment> due, swapped;
  for (int s = 0; s < 6; ++s) {
    due.push_back({3, s, 40, uint64_t(10 + s)});
    swapped.push_back({3, 5 - s, 40, uint64_t(10 + s)});
  }
  const std::vector<DueSegment> a = pick_growth(due), b = pick_growth(swapped);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_LT(a.size(), due.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].sequence, b[i].sequence);
    EXPECT_EQ(b[i].slot, 5 - a[i].slot);
  }
}

TEST(WaveGrowth, RefusesASegmentPastItsDeadline) { EXPECT_THROW(pick_growth({{0, 0, -1}}), Error); }

// A batch of 16 equal prompts over 32 layers whose growth is staggered by one step a layer: every
// (layer, slot) falls due within 32 steps, 512 segments. Growing each as it falls due builds 16 in
// a step; with the slack, no step builds more than ceil(512 / (slack + 32)) and none is late.
TEST(WaveGrowth, ALockstepBatchIsSpreadOverTheSlackAndMeetsEveryDeadline) {
  const int layers = 32, slots = 16;
  struct Pending {
    DueSegment segment;
    int64_t deadline;
  };
  std::vector<Pending> pending;
  size_t most = 0, grown = 0;
  for (int64_t step = 0; step < 400; ++step) {
    if (step < layers)
      for (int s = 0; s < slots; ++s) pending.push_back({{int(step), s, 0}, step + kWaveGrowthSlackTokens});
    std::vector<DueSegment> due;
    for (const Pending& p : pending) {
      ASSERT_GE(p.deadline, step) << "layer " << p.segment.layer << " slot " << p.segment.slot << " is late";
      due.push_back({p.segment.layer, p.segment.slot, p.deadline - step});
    }
    const std::vector<DueSegment> picked = pick_growth(due);
    most = std::max(most, picked.size());
    grown += picked.size();
    for (const DueSegment& d : picked)
      pending.erase(std::find_if(pending.begin(), pending.end(), [&](const Pending& p) {
        return p.segment.layer == d.layer && p.segment.slot == d.slot;
      }));
  }
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(grown, size_t(layers * slots));
  const size_t bound = size_t((layers * slots + kWaveGrowthSlackTokens + layers - 1) / (kWaveGrowthSlackTokens + layers));
  EXPECT_LE(most, bound);
  EXPECT_LT(most, size_t(slots));
}

}  // namespace
}  // namespace retro::attention
