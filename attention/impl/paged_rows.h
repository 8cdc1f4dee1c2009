#pragma once
// Rows of fixed width stored in pages from an Allocator: grows a page at a time as rows arrive and
// frees pages from the front as rows leave (the steady zone's tail, the host store's lists).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

namespace retro::attention::impl {

template <typename T>
class PagedRows {
 public:
  PagedRows(Allocator& allocator, MemoryPurpose purpose, int64_t width, int64_t rows_per_page)
      : allocator_(&allocator), purpose_(purpose), width_(width), rows_per_page_(rows_per_page) {
    RETRO_ASSERT(width > 0 && rows_per_page > 0);
  }

  int64_t size() const { return size_; }
  int64_t width() const { return width_; }
  size_t bytes() const {
    size_t b = 0;
    for (const Buffer& p : pages_) b += p.size();
    return b;
  }

  T* row(int64_t i) {
    int64_t r = front_ + i;
    return page_data(r / rows_per_page_) + (r % rows_per_page_) * width_;
  }
  const T* row(int64_t i) const { return const_cast<PagedRows*>(this)->row(i); }

  // Appends n rows read from src, consecutive rows src_stride elements apart.
  void append(const T* src, int64_t n, int64_t src_stride) {
    for (int64_t i = 0; i < n;) {
      int64_t r = front_ + size_;
      int64_t page = r / rows_per_page_;
      if (page == static_cast<int64_t>(pages_.size())) {
        pages_.push_back(allocator_->allocate(static_cast<size_t>(rows_per_page_ * width_) * sizeof(T), purpose_));
      }
      int64_t in_page = std::min(n - i, rows_per_page_ - r % rows_per_page_);
      T* dst = page_data(page) + (r % rows_per_page_) * width_;
      if (src_stride == width_) {
        std::memcpy(dst, src + i * src_stride, static_cast<size_t>(in_page * width_) * sizeof(T));
      } else {
        for (int64_t j = 0; j < in_page; ++j)
          std::memcpy(dst + j * width_, src + (i + j) * src_stride, static_cast<size_t>(width_) * sizeof(T));
      }
      size_ += in_page;
      i += in_page;
    }
  }

  // Drops the first n rows, releasing the pages they emptied.
  void pop_front(int64_t n) {
    RETRO_ASSERT(n >= 0 && n <= size_);
    front_ += n;
    size_ -= n;
    int64_t drop = front_ / rows_per_page_;
    if (size_ == 0) drop = static_cast<int64_t>(pages_.size());
    pages_.erase(pages_.begin(), pages_.begin() + drop);
    front_ = size_ == 0 ? 0 : front_ - drop * rows_per_page_;
  }

  // Calls fn(const T* rows, int64_t first_row, int64_t count) for each page-contiguous run of the
  // rows [begin, begin + count).
  template <typename Fn>
  void for_each_run(int64_t begin, int64_t count, Fn&& fn) const {
    RETRO_ASSERT(begin >= 0 && count >= 0 && begin + count <= size_);
    for (int64_t i = 0; i < count;) {
      int64_t r = front_ + begin + i;
      int64_t in_page = std::min(count - i, rows_per_page_ - r % rows_per_page_);
      fn(static_cast<const T*>(pages_[static_cast<size_t>(r / rows_per_page_)].data()) + (r % rows_per_page_) * width_,
         begin + i, in_page);
      i += in_page;
    }
  }

  // Copies rows [begin, begin + count) to dst [count, width].
  void copy_rows(int64_t begin, int64_t count, T* dst) const {
    for_each_run(begin, count, [&](const T* rows, int64_t first, int64_t n) {
      std::memcpy(dst + (first - begin) * width_, rows, static_cast<size_t>(n * width_) * sizeof(T));
    });
  }

 private:
  T* page_data(int64_t page) { return static_cast<T*>(pages_[static_cast<size_t>(page)].data()); }

  Allocator* allocator_;
  MemoryPurpose purpose_;
  int64_t width_;
  int64_t rows_per_page_;
  std::vector<Buffer> pages_;
  int64_t front_ = 0;  // rows already dropped from the first page
  int64_t size_ = 0;
};

}  // namespace retro::attention::impl
