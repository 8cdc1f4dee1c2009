#pragma once
// When decode-time index growth runs. A (layer, sequence) whose update segment is due may wait up
// to kWaveGrowthSlackTokens decode steps (its steady zone has room for them): the segments that a
// batch of sequences fills at the same step (equal prompts started together) are then clustered
// over the following steps a few at a time, not all in one step.

#include <cstdint>
#include <vector>

namespace retro::attention {

// Decode steps a due update segment may wait before it must be clustered.
inline constexpr int64_t kWaveGrowthSlackTokens = 128;

struct DueSegment {
  int layer = 0;
  int slot = 0;
  int64_t steps_left = 0;  // steps it may still wait; 0: it grows before the next token
  // The sequence's admission order, which breaks ties in place of the slot: a sequence picks the
  // same steps whichever slot it sits in (swapping slots changes no output).
  uint64_t sequence = 0;
};

// The segments to grow before this step, earliest deadline first (then layer, then sequence):
// every one whose deadline is now, and as many more as the smallest steady rate that meets every
// deadline (were that rate kept on the following steps) asks for; at least one when any is due, so
// quiet steps take the work.
// Throws retro::Error on a negative steps_left.
std::vector<DueSegment> pick_growth(std::vector<DueSegment> due);

}  // namespace retro::attention
