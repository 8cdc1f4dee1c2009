#pragma once
// Keeps a GPU rank's threads and host memory on the NUMA node of its GPU. The pinned host pages
// the GPU reads over PCIe every decode step (the wave host store) are then local to the GPU's root
// complex, and each rank of a multi-socket node uses its own socket's memory bandwidth (DESIGN.md
// §4). mpirun's own binding is respected: a rank it already bound to CPUs of another node is left
// as it is, with a warning.
//
// RETRO_NUMA_BIND=0 turns the binding off.

#include <string>
#include <string_view>
#include <vector>

namespace retro::parallel {

// The CPUs of a kernel cpulist ("0-3,8,10-11"), ascending. Throws retro::Error (kInvalidInput)
// naming the text when it is malformed.
std::vector<int> parse_cpulist(std::string_view text);

struct NumaBinding {
  int node = -1;          // the GPU's NUMA node; -1 when the platform does not say
  std::vector<int> cpus;  // the CPUs this rank runs on after binding (empty: unchanged)
  bool bind = false;      // whether to change the CPU affinity
  std::string reason;     // why not, or what was done
};

// The decision, without side effects: bind to the CPUs of `node_cpus` that the current affinity
// allows; leave everything as it is when the node is unknown, the machine has one node, or the
// current affinity (mpirun's binding) holds none of the node's CPUs.
NumaBinding plan_numa_binding(int gpu_node, int numa_nodes, const std::vector<int>& node_cpus,
                              const std::vector<int>& allowed_cpus);

// Plans for CUDA device `device` from the system's topology and this process's affinity, then
// applies it (sched_setaffinity). Under the kernel's default local-allocation policy the pages a
// thread touches come from its own node, so memory pinned after this call (the host store) is the
// GPU node's. Call it before pinning host memory. Returns what it did; never throws for a machine
// without NUMA.
NumaBinding bind_to_gpu_numa_node(int device);

}  // namespace retro::parallel
