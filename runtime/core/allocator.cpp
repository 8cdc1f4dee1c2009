#include "runtime/core/allocator.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <mutex>

#include "runtime/core/error.h"

namespace retro {

const char* memory_kind_name(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kHost: return "host";
    case MemoryKind::kPinnedHost: return "pinned-host";
    case MemoryKind::kDevice: return "device";
  }
  return "unknown";
}

const char* memory_purpose_name(MemoryPurpose purpose) {
  switch (purpose) {
    case MemoryPurpose::kWeights: return "weights";
    case MemoryPurpose::kKvHost: return "kv-host";
    case MemoryPurpose::kKvCache: return "kv-cache";
    case MemoryPurpose::kIndex: return "index";
    case MemoryPurpose::kActivations: return "activations";
    case MemoryPurpose::kWorkspace: return "workspace";
  }
  return "unknown";
}

std::string format_bytes(size_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 4) {
    v /= 1024.0;
    ++unit;
  }
  if (unit == 0) return fmt::format("{} B", bytes);
  return fmt::format("{:.2f} {}", v, kUnits[unit]);
}

// ---- MemoryAccounting ----

void MemoryAccounting::raise_peak(std::atomic<size_t>& peak, size_t value) {
  size_t prev = peak.load(std::memory_order_relaxed);
  while (prev < value && !peak.compare_exchange_weak(prev, value, std::memory_order_relaxed)) {
  }
}

void MemoryAccounting::add(MemoryPurpose purpose, size_t bytes) {
  Counter& c = counters_[static_cast<size_t>(purpose)];
  raise_peak(c.peak, c.live.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  c.count.fetch_add(1, std::memory_order_relaxed);
  raise_peak(total_.peak, total_.live.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  total_.count.fetch_add(1, std::memory_order_relaxed);
}

void MemoryAccounting::remove(MemoryPurpose purpose, size_t bytes) {
  Counter& c = counters_[static_cast<size_t>(purpose)];
  c.live.fetch_sub(bytes, std::memory_order_relaxed);
  c.count.fetch_sub(1, std::memory_order_relaxed);
  total_.live.fetch_sub(bytes, std::memory_order_relaxed);
  total_.count.fetch_sub(1, std::memory_order_relaxed);
}

MemoryUsage MemoryAccounting::usage(MemoryPurpose purpose) const {
  const Counter& c = counters_[static_cast<size_t>(purpose)];
  return {c.live.load(), c.peak.load(), c.count.load()};
}

MemoryUsage MemoryAccounting::total() const { return {total_.live.load(), total_.peak.load(), total_.count.load()}; }

void MemoryAccounting::reset_peaks() {
  for (Counter& c : counters_) c.peak.store(c.live.load());
  total_.peak.store(total_.live.load());
}

// ---- Buffer ----

Buffer::Buffer(Buffer&& other) noexcept
    : owner_(other.owner_), ptr_(other.ptr_), bytes_(other.bytes_), purpose_(other.purpose_) {
  other.owner_ = nullptr;
  other.ptr_ = nullptr;
  other.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    reset();
    owner_ = other.owner_;
    ptr_ = other.ptr_;
    bytes_ = other.bytes_;
    purpose_ = other.purpose_;
    other.owner_ = nullptr;
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

Buffer::~Buffer() { reset(); }

void Buffer::reset() {
  if (owner_ != nullptr && ptr_ != nullptr) owner_->release(ptr_, bytes_, purpose_);
  owner_ = nullptr;
  ptr_ = nullptr;
  bytes_ = 0;
}

// ---- Allocator registry (for report_allocators) ----

namespace {
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<Allocator*>& registry() {
  static std::vector<Allocator*> r;
  return r;
}
}  // namespace

Allocator::Allocator(MemoryKind kind, Device device, size_t capacity_bytes)
    : kind_(kind), device_(device), capacity_(capacity_bytes) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(this);
}

Allocator::~Allocator() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& r = registry();
  r.erase(std::remove(r.begin(), r.end(), this), r.end());
}

size_t Allocator::available() const {
  if (capacity_ == 0) return std::numeric_limits<size_t>::max();
  size_t used = reserved_.load();
  return used >= capacity_ ? 0 : capacity_ - used;
}

std::string Allocator::name() const {
  if (kind_ == MemoryKind::kDevice) return fmt::format("device({})", device_.str());
  return memory_kind_name(kind_);
}

Buffer Allocator::allocate(size_t bytes, MemoryPurpose purpose, size_t alignment) {
  RETRO_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0, "alignment {} is not a power of two", alignment);
  if (bytes == 0) return Buffer();
  if (capacity_ != 0) {
    size_t prev = reserved_.fetch_add(bytes);
    if (prev + bytes > capacity_ || prev + bytes < prev) {
      reserved_.fetch_sub(bytes);
      std::string breakdown;
      for (MemoryPurpose p : kAllMemoryPurposes) {
        size_t live = accounting_.usage(p).live_bytes;
        if (live) breakdown += fmt::format(", {} {}", memory_purpose_name(p), format_bytes(live));
      }
      RETRO_THROW_KIND(ErrorKind::kOutOfMemory, "{} pool cannot allocate {} for {}: {} of {} in use{}", name(),
                       format_bytes(bytes), memory_purpose_name(purpose), format_bytes(prev), format_bytes(capacity_),
                       breakdown);
    }
  } else {
    reserved_.fetch_add(bytes);
  }
  void* ptr = nullptr;
  try {
    ptr = raw_allocate(bytes, alignment);
  } catch (...) {
    reserved_.fetch_sub(bytes);
    throw;
  }
  accounting_.add(purpose, bytes);
  return Buffer(this, ptr, bytes, purpose);
}

void Allocator::release(void* ptr, size_t bytes, MemoryPurpose purpose) noexcept {
  raw_free(ptr);
  accounting_.remove(purpose, bytes);
  reserved_.fetch_sub(bytes);
}

// ---- Host allocator ----

namespace {
class HostAllocator final : public Allocator {
 public:
  explicit HostAllocator(size_t capacity) : Allocator(MemoryKind::kHost, Device::cpu(), capacity) {}
  ~HostAllocator() override = default;

 protected:
  void* raw_allocate(size_t bytes, size_t alignment) override {
    alignment = std::max<size_t>(alignment, 64);
    size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (p == nullptr) {
      RETRO_THROW_KIND(ErrorKind::kOutOfMemory, "host allocation of {} failed", format_bytes(bytes));
    }
    return p;
  }
  void raw_free(void* ptr) noexcept override { std::free(ptr); }
};
}  // namespace

std::unique_ptr<Allocator> make_host_allocator(size_t capacity_bytes) {
  return std::make_unique<HostAllocator>(capacity_bytes);
}

#ifndef RETRO_WITH_CUDA
std::unique_ptr<Allocator> make_pinned_host_allocator(size_t) {
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "pinned host memory needs a CUDA build (configure with -DRETRO_CUDA=ON)");
}
std::unique_ptr<Allocator> make_device_allocator(int, size_t) {
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "device memory needs a CUDA build (configure with -DRETRO_CUDA=ON)");
}
#endif

std::vector<AllocatorReport> report_allocators() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<AllocatorReport> out;
  for (Allocator* a : registry()) {
    AllocatorReport r{a->name(), a->kind(), a->capacity(), a->accounting().total(), {}};
    for (MemoryPurpose p : kAllMemoryPurposes) r.by_purpose[static_cast<size_t>(p)] = a->accounting().usage(p);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace retro
