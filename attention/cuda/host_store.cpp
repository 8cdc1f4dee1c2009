// Pinned page pool and per-layer page tables of the host store.

#include "attention/cuda/host_store.h"

#include <algorithm>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

void HostStoreParams::validate(size_t page_bytes) const {
  RETRO_CHECK(page_rows > 0, "host store: page_rows must be positive, got {}", page_rows);
  RETRO_CHECK(chunk_bytes >= page_bytes, "host store: chunk_bytes {} holds no page of {} bytes", chunk_bytes,
              page_bytes);
}

HostPagePool::HostPagePool(size_t page_bytes, size_t chunk_bytes, Allocator& pinned_allocator)
    : page_bytes_(page_bytes), chunk_bytes_(chunk_bytes), allocator_(&pinned_allocator) {
  RETRO_CHECK(page_bytes > 0 && chunk_bytes >= page_bytes, "host page pool: page {} bytes, chunk {} bytes",
              page_bytes, chunk_bytes);
  RETRO_CHECK(pinned_allocator.kind() == MemoryKind::kPinnedHost,
              "host page pool needs a pinned-host allocator (kernels read the pages), got {}",
              pinned_allocator.name());
}

// Pins one more chunk and puts its pages on the free list.
void HostPagePool::grow_locked() {
  const size_t pages = chunk_bytes_ / page_bytes_;
  if (!allocator_->can_allocate(pages * page_bytes_))
    RETRO_THROW_KIND(ErrorKind::kOutOfMemory,
                     "host KV store is full: {} pages of {} in use ({} pinned), {} more would pass the "
                     "pinned-memory capacity of {}",
                     in_use_, format_bytes(page_bytes_), format_bytes(pinned_bytes_locked()),
                     format_bytes(pages * page_bytes_), format_bytes(allocator_->capacity()));
  Buffer chunk = allocator_->allocate(pages * page_bytes_, MemoryPurpose::kKvHost, 4096);
  char* base = static_cast<char*>(chunk.data());
  for (size_t i = pages; i-- > 0;) free_.push_back(base + i * page_bytes_);
  chunks_.push_back(std::move(chunk));
}

void* HostPagePool::acquire() {
  std::lock_guard lock(mutex_);
  if (free_.empty()) grow_locked();
  void* page = free_.back();
  free_.pop_back();
  ++in_use_;
  return page;
}

void HostPagePool::reserve(size_t pages) {
  std::lock_guard lock(mutex_);
  while (free_.size() < pages) grow_locked();
}

void HostPagePool::release(void* page) {
  if (page == nullptr) return;
  std::lock_guard lock(mutex_);
  free_.push_back(page);
  --in_use_;
}

size_t HostPagePool::pages_in_use() const {
  std::lock_guard lock(mutex_);
  return in_use_;
}

size_t HostPagePool::pinned_bytes_locked() const {
  size_t total = 0;
  for (const Buffer& c : chunks_) total += c.size();
  return total;
}

size_t HostPagePool::pinned_bytes() const {
  std::lock_guard lock(mutex_);
  return pinned_bytes_locked();
}

HostKvStore::HostKvStore(int num_groups, int head_dim, size_t elem_bytes, int64_t max_rows, HostPagePool& pool,
                         Allocator& device_allocator)
    : num_groups_(num_groups), head_dim_(head_dim), elem_bytes_(elem_bytes), max_rows_(max_rows), pool_(&pool) {
  RETRO_CHECK(num_groups > 0 && head_dim > 0 && elem_bytes > 0 && max_rows >= 0,
              "host KV store: {} groups, head_dim {}, {} bytes per element, max_rows {}", num_groups, head_dim,
              elem_bytes, max_rows);
  const size_t row_bytes = size_t(head_dim) * elem_bytes;
  RETRO_CHECK(pool.page_bytes() % row_bytes == 0, "host KV store: pages of {} bytes do not hold whole rows of {}",
              pool.page_bytes(), row_bytes);
  page_rows_ = int64_t(pool.page_bytes() / row_bytes);
  max_pages_ = int(std::max<int64_t>(1, (max_rows + page_rows_ - 1) / page_rows_));
  const size_t table_bytes = size_t(num_groups) * size_t(max_pages_) * sizeof(void*);
  k_table_ = device_allocator.allocate(table_bytes, MemoryPurpose::kIndex);
  v_table_ = device_allocator.allocate(table_bytes, MemoryPurpose::kIndex);
  RETRO_CUDA_CHECK(cudaMemset(k_table_.data(), 0, table_bytes));
  RETRO_CUDA_CHECK(cudaMemset(v_table_.data(), 0, table_bytes));
  k_pages_.resize(size_t(num_groups));
  v_pages_.resize(size_t(num_groups));
}

HostKvStore::~HostKvStore() {
  for (auto* lists : {&k_pages_, &v_pages_})
    for (auto& pages : *lists)
      for (void* p : pages) pool_->release(p);
}

void HostKvStore::reserve(int group, int64_t rows, cudaStream_t stream) {
  RETRO_CHECK(group >= 0 && group < num_groups_, "host KV store: group {} of {}", group, num_groups_);
  RETRO_CHECK(rows >= 0 && rows <= max_rows_, "host KV store: {} rows for group {} exceed the {} rows it was sized for",
              rows, group, max_rows_);
  const int64_t pages = (rows + page_rows_ - 1) / page_rows_;
  auto& kp = k_pages_[size_t(group)];
  auto& vp = v_pages_[size_t(group)];
  const int64_t have = int64_t(kp.size());
  if (pages <= have) return;
  for (int64_t i = have; i < pages; ++i) {
    kp.push_back(pool_->acquire());
    vp.push_back(pool_->acquire());
  }
  const int64_t first = int64_t(group) * max_pages_ + have;
  const int n = int(pages - have);
  RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(k_table_.data()), first, kp.data() + have, n, stream));
  RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(v_table_.data()), first, vp.data() + have, n, stream));
}

void HostKvStore::release(int group, cudaStream_t stream) {
  RETRO_CHECK(group >= 0 && group < num_groups_, "host KV store: group {} of {}", group, num_groups_);
  auto& kp = k_pages_[size_t(group)];
  auto& vp = v_pages_[size_t(group)];
  std::vector<void*> nulls(kp.size(), nullptr);
  const int64_t first = int64_t(group) * max_pages_;
  RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(k_table_.data()), first, nulls.data(), int(nulls.size()), stream));
  RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(v_table_.data()), first, nulls.data(), int(nulls.size()), stream));
  for (void* p : kp) pool_->release(p);
  for (void* p : vp) pool_->release(p);
  kp.clear();
  vp.clear();
}

void HostKvStore::swap_groups(int a, int b, cudaStream_t stream) {
  RETRO_CHECK(a >= 0 && a < num_groups_ && b >= 0 && b < num_groups_, "host KV store: groups {} and {} of {}", a, b,
              num_groups_);
  if (a == b) return;
  std::swap(k_pages_[size_t(a)], k_pages_[size_t(b)]);
  std::swap(v_pages_[size_t(a)], v_pages_[size_t(b)]);
  // Each group's table row: its pages now, then nulls over what the other group held.
  for (int g : {a, b}) {
    const int other = g == a ? b : a;
    const size_t pages = k_pages_[size_t(g)].size(), stale = k_pages_[size_t(other)].size();
    std::vector<void*> k_row = k_pages_[size_t(g)], v_row = v_pages_[size_t(g)];
    k_row.resize(std::max(pages, stale), nullptr);
    v_row.resize(std::max(pages, stale), nullptr);
    if (k_row.empty()) continue;
    const int64_t first = int64_t(g) * max_pages_;
    RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(k_table_.data()), first, k_row.data(), int(k_row.size()), stream));
    RETRO_CUDA_CHECK(write_page_table(static_cast<void**>(v_table_.data()), first, v_row.data(), int(v_row.size()), stream));
  }
}

HostStoreView HostKvStore::view() const {
  HostStoreView v;
  v.k_pages = static_cast<const void* const*>(k_table_.data());
  v.v_pages = static_cast<const void* const*>(v_table_.data());
  v.max_pages = max_pages_;
  v.page_rows = page_rows_;
  v.elem_bytes = int(elem_bytes_);
  return v;
}

int64_t HostKvStore::capacity_rows(int group) const {
  RETRO_CHECK(group >= 0 && group < num_groups_, "host KV store: group {} of {}", group, num_groups_);
  return int64_t(k_pages_[size_t(group)].size()) * page_rows_;
}

void HostKvStore::upload_rows(int group, int64_t row0, int64_t count, const void* k, const void* v,
                              cudaStream_t stream) {
  RETRO_CHECK(group >= 0 && group < num_groups_, "host KV store: group {} of {}", group, num_groups_);
  RETRO_CHECK(row0 >= 0 && count >= 0 && row0 + count <= capacity_rows(group),
              "host KV store: rows [{}, {}) of group {} holding {}", row0, row0 + count, group, capacity_rows(group));
  const size_t row_bytes = size_t(head_dim_) * elem_bytes_;
  for (int64_t r = row0; r < row0 + count;) {
    const int64_t rows = std::min(page_rows_ - r % page_rows_, row0 + count - r);
    const size_t from = size_t(r - row0) * row_bytes, bytes = size_t(rows) * row_bytes;
    RETRO_CUDA_CHECK(cudaMemcpyAsync(row(group, r, false), static_cast<const char*>(k) + from, bytes,
                                     cudaMemcpyDeviceToHost, stream));
    RETRO_CUDA_CHECK(cudaMemcpyAsync(row(group, r, true), static_cast<const char*>(v) + from, bytes,
                                     cudaMemcpyDeviceToHost, stream));
    r += rows;
  }
}

void* HostKvStore::row(int group, int64_t r, bool value) const {
  RETRO_CHECK(r >= 0 && r < capacity_rows(group), "host KV store: row {} of group {} holding {}", r, group,
              capacity_rows(group));
  const auto& pages = value ? v_pages_[size_t(group)] : k_pages_[size_t(group)];
  return static_cast<char*>(pages[size_t(r / page_rows_)]) + size_t(r % page_rows_) * size_t(head_dim_) * elem_bytes_;
}

size_t HostKvStore::bytes_in_use() const {
  size_t pages = 0;
  for (const auto& p : k_pages_) pages += p.size();
  return 2 * pages * pool_->page_bytes();
}

}  // namespace retro::attention::cuda
