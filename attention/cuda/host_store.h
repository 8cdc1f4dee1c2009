#pragma once
// The host store of the wave buffer: every clustered K/V row lives in pinned host memory mapped into
// the device address space, so retrieval kernels read misses straight from it (DESIGN.md section 3).
//
// HostPagePool hands out fixed-size pages carved from large pinned chunks: pinning is slow (a
// cudaHostAlloc call per page would dominate prefill), so chunks are pinned a few hundred MiB at a
// time and only as sequences grow — never preallocated for the maximum length. Freed pages go back
// to a free list for the next sequence. Every chunk comes from the caller's pinned Allocator and is
// counted as MemoryPurpose::kKvHost.
//
// HostKvStore is the store of one layer: per group (sequence slot, KV head) a list of K pages and V
// pages and a page table on the device (the HostStoreView of wave_layout.h). Rows are appended by
// reserving capacity first; the page table reaches the device in stream order through a small
// kernel whose arguments carry the new pointers, so no host buffer is shared with in-flight copies.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "attention/cuda/page_table.h"
#include "attention/cuda/wave_layout.h"
#include "runtime/core/allocator.h"

namespace retro::attention::cuda {

struct HostStoreParams {
  int64_t page_rows = 4096;             // rows per page (1 MiB of bf16 K at head_dim 128)
  size_t chunk_bytes = size_t(256) << 20;  // pinned per cudaHostAlloc call
  // Throws retro::Error naming the field when a value is not positive or a chunk holds no page.
  void validate(size_t page_bytes) const;
};

class HostPagePool {
 public:
  HostPagePool(size_t page_bytes, size_t chunk_bytes, Allocator& pinned_allocator);
  HostPagePool(const HostPagePool&) = delete;
  HostPagePool& operator=(const HostPagePool&) = delete;

  // A page (device-visible pointer, page_bytes long); pins a new chunk when the free list is empty.
  // Throws kOutOfMemory, with the pool's usage, when the allocator's capacity is reached.
  void* acquire();
  void release(void* page);
  // Pins chunks until at least `pages` pages are free (a server pins its pool ahead of the first
  // prompts, so they do not pay for cudaHostAlloc). Throws kOutOfMemory like acquire().
  void reserve(size_t pages);

  size_t page_bytes() const { return page_bytes_; }
  size_t pages_in_use() const;
  size_t pinned_bytes() const;  // all chunks

 private:
  size_t pinned_bytes_locked() const;
  void grow_locked();

  size_t page_bytes_, chunk_bytes_;
  Allocator* allocator_;
  mutable std::mutex mutex_;
  std::vector<Buffer> chunks_;
  std::vector<void*> free_;
  size_t in_use_ = 0;
};

class HostKvStore {
 public:
  // num_groups groups of head_dim-wide rows of elem_bytes each (2: bf16, 1: fp8-e4m3, whose pages
  // then hold twice the rows); up to max_rows rows per group. The page tables are allocated on the
  // device from device_allocator (kIndex).
  HostKvStore(int num_groups, int head_dim, size_t elem_bytes, int64_t max_rows, HostPagePool& pool,
              Allocator& device_allocator);
  ~HostKvStore();
  HostKvStore(const HostKvStore&) = delete;
  HostKvStore& operator=(const HostKvStore&) = delete;

  // Makes group g hold at least `rows` rows (whole pages), enqueuing the page-table update on
  // stream. Throws kInvalidArgument past max_rows.
  void reserve(int group, int64_t rows, cudaStream_t stream);
  // Returns every page of group g to the pool. The caller guarantees no queued kernel still reads
  // them (it synchronises the stream first).
  void release(int group, cudaStream_t stream);
  // Exchanges the pages (and page-table rows) of groups a and b: a sequence moving between slots.
  void swap_groups(int a, int b, cudaStream_t stream);

  HostStoreView view() const;
  int64_t capacity_rows(int group) const;
  int64_t page_rows() const { return page_rows_; }
  size_t elem_bytes() const { return elem_bytes_; }
  int max_pages() const { return max_pages_; }
  // Copies `count` rows from device memory (k and v: contiguous rows of head_dim elements) into rows
  // [row0, row0 + count) of group g, one cudaMemcpyAsync per page touched: the copy engines move
  // them, no kernel. The rows must be reserved. Stream-ordered; the source must stay valid until
  // the copies ran.
  void upload_rows(int group, int64_t row0, int64_t count, const void* k, const void* v, cudaStream_t stream);
  // Host address of row r of group g (K or V): where the CPU twin and the tests read the store.
  void* row(int group, int64_t r, bool value) const;
  size_t bytes_in_use() const;  // pages held by this store, K and V

 private:
  int num_groups_, head_dim_;
  size_t elem_bytes_;
  int64_t max_rows_;
  int64_t page_rows_;
  int max_pages_;
  HostPagePool* pool_;
  Buffer k_table_, v_table_;  // [groups, max_pages] device pointers
  std::vector<std::vector<void*>> k_pages_, v_pages_;
};

}  // namespace retro::attention::cuda
