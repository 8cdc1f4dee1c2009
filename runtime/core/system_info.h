#pragma once
// What this process can see of its machine: GPUs (with the properties that bound bandwidth and
// capacity), host memory and NUMA nodes. Used by `retroinfer info`, placement and admission.

#include <cstddef>
#include <string>
#include <vector>

namespace retro {

struct GpuInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;
  size_t free_memory = 0;
  int multiprocessors = 0;
  size_t l2_cache_bytes = 0;
  size_t shared_memory_per_block_optin = 0;
  int memory_bus_width_bits = 0;
  int memory_clock_khz = 0;
  double peak_memory_bandwidth_gbs = 0.0;  // 2 (DDR) x clock x bus width
  std::string pci_bus_id;
  int numa_node = -1;  // -1 when the platform does not say
  bool can_map_host_memory = false;
  bool unified_addressing = false;
};

struct NumaNode {
  int id = 0;
  std::string cpus;  // kernel cpulist, "0-15"
  size_t total_memory = 0;
  size_t free_memory = 0;
};

struct HostInfo {
  std::string hostname;
  int logical_cpus = 0;
  size_t total_memory = 0;
  size_t available_memory = 0;
  std::vector<NumaNode> numa_nodes;
};

struct CudaRuntimeInfo {
  bool built_with_cuda = false;
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;   // 0 when no driver is loaded
  std::string error;        // why no GPU is visible, if none is
};

CudaRuntimeInfo query_cuda_runtime();
// Empty when built without CUDA or when no device is visible (see query_cuda_runtime().error).
std::vector<GpuInfo> query_gpus();
HostInfo query_host();

}  // namespace retro
