#include "attention/wave_growth.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace retro::attention {

std::vector<DueSegment> pick_growth(std::vector<DueSegment> due) {
  for (const DueSegment& d : due)
    RETRO_CHECK(d.steps_left >= 0, "wave growth: layer {} slot {} is {} steps past its deadline", d.layer, d.slot,
                -d.steps_left);
  std::sort(due.begin(), due.end(), [](const DueSegment& a, const DueSegment& b) {
    if (a.steps_left != b.steps_left) return a.steps_left < b.steps_left;
    return a.layer != b.layer ? a.layer < b.layer : a.sequence < b.sequence;
  });
  // The i + 1 earliest deadlines fall within steps_left_i + 1 steps (this one included): meeting
  // them all at a steady rate takes ceil((i + 1) / (steps_left_i + 1)) a step.
  int64_t rate = due.empty() ? 0 : 1;
  for (size_t i = 0; i < due.size(); ++i)
    rate = std::max<int64_t>(rate, (int64_t(i) + 1 + due[i].steps_left) / (due[i].steps_left + 1));
  due.resize(size_t(std::min<int64_t>(rate, int64_t(due.size()))));
  return due;
}

}  // namespace retro::attention
