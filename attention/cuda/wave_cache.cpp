// Planning, initialisation and argument checks of the GPU cluster cache; the launches are in
// wave_cache.cu.

#include "attention/cuda/wave_cache.h"

#include <algorithm>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void check_view(const WaveCacheView& c) {
  RETRO_CHECK(c.num_sets > 0 && c.ways > 0 && c.tags != nullptr && c.stamps != nullptr && c.step != nullptr &&
                  c.counters != nullptr,
              "wave cache: not initialised (init_wave_cache)");
}

}  // namespace

size_t wave_cache_slot_bytes(const WaveBufferParams& params, int head_dim) {
  return size_t(2) * size_t(std::max(params.slot_tokens, 0)) * size_t(std::max(head_dim, 0)) *
         size_t(wave_kv_elem_bytes(params.kv_dtype));
}

WaveCacheLayout plan_wave_cache(const WaveBufferParams& params, int head_dim, size_t offloaded_kv_bytes) {
  RETRO_CHECK(head_dim == 64 || head_dim == 128, "wave cache: head_dim {} (built for 64 and 128)", head_dim);
  RETRO_CHECK(wave_kv_elem_bytes(params.kv_dtype) > 0, "wave cache: kv_dtype {} (bf16 or fp8_e4m3)",
              dtype_name(params.kv_dtype));
  RETRO_CHECK(params.slot_tokens >= 1 && params.slot_tokens <= 4096, "wave cache: slot_tokens {} (1 to 4096)",
              params.slot_tokens);
  RETRO_CHECK(params.ways >= 1 && params.ways <= 64, "wave cache: ways {} (1 to 64)", params.ways);
  RETRO_CHECK(params.num_slots >= 0 && params.kv_fraction >= 0.0, "wave cache: num_slots {}, kv_fraction {}",
              params.num_slots, params.kv_fraction);
  const size_t slot_bytes = wave_cache_slot_bytes(params, head_dim);
  int64_t slots = params.num_slots;
  if (slots == 0) {
    const double bytes = params.cache_bytes > 0 ? double(params.cache_bytes)
                                                : params.kv_fraction * double(offloaded_kv_bytes);
    slots = static_cast<int64_t>(bytes / double(slot_bytes));
  }
  WaveCacheLayout L;
  L.head_dim = head_dim;
  L.slot_tokens = params.slot_tokens;
  L.ways = params.ways;
  L.kv_dtype = params.kv_dtype;
  L.num_sets = slots / params.ways;
  RETRO_CHECK(L.num_sets >= 1, "wave cache: {} slots of {} bytes do not make one set of {} ways", slots, slot_bytes,
              params.ways);
  // Retrieval keeps a slot index shifted left by one in an int32.
  RETRO_CHECK(L.num_slots() < (int64_t(1) << 30), "wave cache: {} slots (at most 2^30)", L.num_slots());
  const size_t n = static_cast<size_t>(L.num_slots());
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  L.k_offset = take(n * slot_bytes / 2);
  L.v_offset = take(n * slot_bytes / 2);
  L.tags_offset = take(n * sizeof(uint64_t));
  L.stamps_offset = take(n * sizeof(unsigned long long));
  L.step_offset = take(sizeof(unsigned long long));
  L.counters_offset = take(kWaveCacheNumCounters * sizeof(unsigned long long));
  L.bytes = off;
  return L;
}

WaveCacheView init_wave_cache(const WaveCacheLayout& layout, void* memory, cudaStream_t stream) {
  RETRO_CHECK(layout.num_sets > 0 && layout.bytes > 0, "wave cache: init without a plan (plan_wave_cache)");
  RETRO_CHECK(memory != nullptr && reinterpret_cast<uintptr_t>(memory) % kAlign == 0,
              "wave cache: memory must be device memory aligned to {} bytes", kAlign);
  char* base = static_cast<char*>(memory);
  WaveCacheView c;
  c.head_dim = layout.head_dim;
  c.slot_tokens = layout.slot_tokens;
  c.ways = layout.ways;
  c.num_sets = layout.num_sets;
  c.kv_dtype = layout.kv_dtype;
  c.k_slots = base + layout.k_offset;
  c.v_slots = base + layout.v_offset;
  c.tags = reinterpret_cast<uint64_t*>(base + layout.tags_offset);
  c.stamps = reinterpret_cast<unsigned long long*>(base + layout.stamps_offset);
  c.step = reinterpret_cast<unsigned long long*>(base + layout.step_offset);
  c.counters = reinterpret_cast<unsigned long long*>(base + layout.counters_offset);
  clear_wave_cache(c, stream);
  RETRO_CUDA_CHECK(cudaMemsetAsync(c.step, 0, sizeof(unsigned long long), stream));
  reset_wave_cache_counters(c, stream);
  return c;
}

void clear_wave_cache(const WaveCacheView& cache, cudaStream_t stream) {
  check_view(cache);
  const size_t n = static_cast<size_t>(cache.num_sets * cache.ways);
  RETRO_CUDA_CHECK(cudaMemsetAsync(cache.tags, 0xFF, n * sizeof(uint64_t), stream));  // kWaveTagEmpty
  RETRO_CUDA_CHECK(cudaMemsetAsync(cache.stamps, 0, n * sizeof(unsigned long long), stream));
}

void invalidate_wave_cache(const WaveCacheView& cache, const int64_t* uids, int count, cudaStream_t stream) {
  check_view(cache);
  RETRO_CHECK(count >= 0 && (count == 0 || uids != nullptr), "wave cache: invalidate {} uids from {}", count,
              static_cast<const void*>(uids));
  RETRO_CUDA_CHECK(launch_wave_cache_invalidate(cache, uids, count, stream));
}

void reset_wave_cache_counters(const WaveCacheView& cache, cudaStream_t stream) {
  check_view(cache);
  RETRO_CUDA_CHECK(cudaMemsetAsync(cache.counters, 0, kWaveCacheNumCounters * sizeof(unsigned long long), stream));
}

WaveCacheCounters read_wave_cache_counters(const WaveCacheView& cache, cudaStream_t stream) {
  check_view(cache);
  unsigned long long c[kWaveCacheNumCounters] = {};
  unsigned long long step = 0;
  RETRO_CUDA_CHECK(cudaMemcpyAsync(c, cache.counters, sizeof(c), cudaMemcpyDeviceToHost, stream));
  RETRO_CUDA_CHECK(cudaMemcpyAsync(&step, cache.step, sizeof(step), cudaMemcpyDeviceToHost, stream));
  RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
  WaveCacheCounters r;
  r.hit_parts = c[kWaveCacheHitParts];
  r.miss_parts = c[kWaveCacheMissParts];
  r.admitted_parts = c[kWaveCacheAdmittedParts];
  r.host_rows = c[kWaveCacheHostRows];
  r.host_bytes = c[kWaveCacheHostBytes];
  r.step = step;
  return r;
}

}  // namespace retro::attention::cuda
