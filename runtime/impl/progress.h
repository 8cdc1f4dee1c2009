#pragma once
// A one-line progress bar on stderr for long loads. Draws only when enabled (by default: stderr is a
// terminal), so logs, pipes and test output never see it.

#include <chrono>
#include <cstdint>
#include <string>

namespace retro::runtime::impl {

bool stderr_is_terminal();

class ProgressBar {
 public:
  // `total` in the unit `advance` counts (bytes when `bytes` is true, which also formats them).
  ProgressBar(std::string label, uint64_t total, bool bytes, bool enabled = stderr_is_terminal());
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void advance(uint64_t amount);
  // Draws the final state and ends the line; called by the destructor if not before.
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw();

  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool bytes_;
  bool enabled_;
  bool finished_ = false;
  int last_permille_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace retro::runtime::impl
