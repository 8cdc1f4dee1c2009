#pragma once
// One process-wide pool of worker threads for the CPU attention ops: loops over (sequence, KV head)
// groups and over row blocks run on it. The calling thread takes part; a parallel_for issued from
// inside a worker runs inline, so nested loops never deadlock or oversubscribe.
//
// Threads: RETRO_CPU_THREADS if set (>= 1), else std::thread::hardware_concurrency().

#include <cstdint>
#include <functional>

namespace retro::attention::impl {

// Calls fn(i) for every i in [0, n), spread over the pool; rethrows the first exception.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);
int num_threads();
// True on a pool worker (or the caller) while it runs a parallel_for body.
bool in_parallel_region();

}  // namespace retro::attention::impl
