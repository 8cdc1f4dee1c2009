#include "runtime/impl/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "runtime/core/allocator.h"

namespace retro::runtime::impl {

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(std::string label, uint64_t total, bool bytes, bool enabled)
    : label_(std::move(label)),
      total_(total),
      bytes_(bytes),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::advance(uint64_t amount) {
  done_ = std::min(total_, done_ + amount);
  if (!enabled_ || finished_) return;
  // Redraw at most every 100 ms or per 0.1%, so a loop of many small tensors stays cheap.
  const int permille = total_ == 0 ? 1000 : static_cast<int>(done_ * 1000 / total_);
  const auto now = std::chrono::steady_clock::now();
  if (permille == last_permille_ || now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_permille_ = permille;
  last_draw_ = now;
  draw();
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw();
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

void ProgressBar::draw() {
  constexpr int kWidth = 30;
  const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
  const int filled = static_cast<int>(fraction * kWidth);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string amounts = bytes_ ? fmt::format("{} / {}", format_bytes(done_), format_bytes(total_))
                                     : fmt::format("{} / {}", done_, total_);
  std::string line = fmt::format("\r{} [{}{}] {:5.1f}% {}  {:.1f} s", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, ' '), fraction * 100.0, amounts, seconds);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace retro::runtime::impl
