#pragma once
// Memory allocators with accounting by purpose.
//
// Every byte the runtime holds (weights, host KV store, GPU cluster cache, index, activations,
// workspace) comes from an Allocator and is tagged with a MemoryPurpose. Each allocator keeps live
// and peak bytes per purpose; metrics and admission control read them. An allocator may have a
// capacity: a request past it fails with ErrorKind::kOutOfMemory naming the purpose and the usage,
// before any system allocation is attempted.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/device.h"

namespace retro {

enum class MemoryKind : uint8_t { kHost, kPinnedHost, kDevice };

enum class MemoryPurpose : uint8_t { kWeights, kKvHost, kKvCache, kIndex, kActivations, kWorkspace };
inline constexpr int kNumMemoryPurposes = 6;
inline constexpr MemoryPurpose kAllMemoryPurposes[] = {MemoryPurpose::kWeights,     MemoryPurpose::kKvHost,
                                                       MemoryPurpose::kKvCache,     MemoryPurpose::kIndex,
                                                       MemoryPurpose::kActivations, MemoryPurpose::kWorkspace};

const char* memory_kind_name(MemoryKind kind);           // "host", "pinned-host", "device"
const char* memory_purpose_name(MemoryPurpose purpose);  // "weights", "kv-host", "kv-cache", ...
std::string format_bytes(size_t bytes);                  // "1.50 GiB"

struct MemoryUsage {
  size_t live_bytes = 0;
  size_t peak_bytes = 0;
  size_t live_allocations = 0;
};

// Thread-safe live/peak byte counters per purpose.
class MemoryAccounting {
 public:
  void add(MemoryPurpose purpose, size_t bytes);
  void remove(MemoryPurpose purpose, size_t bytes);
  MemoryUsage usage(MemoryPurpose purpose) const;
  // Sum over purposes; its peak is the peak of the sum, not the sum of peaks.
  MemoryUsage total() const;
  void reset_peaks();

 private:
  struct Counter {
    std::atomic<size_t> live{0};
    std::atomic<size_t> peak{0};
    std::atomic<size_t> count{0};
  };
  static void raise_peak(std::atomic<size_t>& peak, size_t value);
  std::array<Counter, kNumMemoryPurposes> counters_;
  Counter total_;
};

class Allocator;

// One allocation; returns its bytes to the allocator when destroyed. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  MemoryPurpose purpose() const { return purpose_; }
  Allocator* allocator() const { return owner_; }
  explicit operator bool() const { return ptr_ != nullptr; }
  void reset();

 private:
  friend class Allocator;
  Buffer(Allocator* owner, void* ptr, size_t bytes, MemoryPurpose purpose)
      : owner_(owner), ptr_(ptr), bytes_(bytes), purpose_(purpose) {}

  Allocator* owner_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  MemoryPurpose purpose_ = MemoryPurpose::kWorkspace;
};

class Allocator {
 public:
  // capacity_bytes == 0 means bounded only by the system.
  Allocator(MemoryKind kind, Device device, size_t capacity_bytes);
  virtual ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // Zero-byte requests return an empty Buffer. Alignment must be a power of two.
  Buffer allocate(size_t bytes, MemoryPurpose purpose, size_t alignment = 256);

  MemoryKind kind() const { return kind_; }
  Device device() const { return device_; }
  size_t capacity() const { return capacity_; }
  // Bytes still allocatable under the capacity (SIZE_MAX when unbounded).
  size_t available() const;
  bool can_allocate(size_t bytes) const { return bytes <= available(); }
  const MemoryAccounting& accounting() const { return accounting_; }
  MemoryAccounting& accounting() { return accounting_; }
  std::string name() const;  // "pinned-host" or "device(cuda:0)"

 protected:
  virtual void* raw_allocate(size_t bytes, size_t alignment) = 0;
  virtual void raw_free(void* ptr) noexcept = 0;

 private:
  friend class Buffer;
  void release(void* ptr, size_t bytes, MemoryPurpose purpose) noexcept;

  MemoryKind kind_;
  Device device_;
  size_t capacity_;
  std::atomic<size_t> reserved_{0};  // bytes counted against the capacity
  MemoryAccounting accounting_;
};

// Page-aligned system memory.
std::unique_ptr<Allocator> make_host_allocator(size_t capacity_bytes = 0);
// Page-locked host memory mapped into the device address space (cudaHostAllocMapped), so kernels
// can read it directly. Requires a CUDA build and a device; throws kUnsupported otherwise.
std::unique_ptr<Allocator> make_pinned_host_allocator(size_t capacity_bytes = 0);
// cudaMalloc on the given device. Requires a CUDA build and a device; throws kUnsupported otherwise.
std::unique_ptr<Allocator> make_device_allocator(int device_index, size_t capacity_bytes = 0);

// Snapshot of every live allocator in the process, for metrics.
struct AllocatorReport {
  std::string name;
  MemoryKind kind;
  size_t capacity_bytes;
  MemoryUsage total;
  std::array<MemoryUsage, kNumMemoryPurposes> by_purpose;
};
std::vector<AllocatorReport> report_allocators();

}  // namespace retro
