#include "runtime/core/system_info.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace retro {

namespace {

std::string read_first_line(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::string line;
  if (f) std::getline(f, line);
  return line;
}

// Parses "Key:   12345 kB" lines of /proc/meminfo or a NUMA node's meminfo.
size_t meminfo_kb(const std::filesystem::path& p, const std::string& key) {
  std::ifstream f(p);
  std::string line;
  while (std::getline(f, line)) {
    auto pos = line.find(key + ":");
    if (pos == std::string::npos) continue;
    std::istringstream in(line.substr(pos + key.size() + 1));
    size_t kb = 0;
    in >> kb;
    return kb;
  }
  return 0;
}

}  // namespace

HostInfo query_host() {
  HostInfo h;
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) == 0) h.hostname = name;
  h.logical_cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  h.total_memory = meminfo_kb("/proc/meminfo", "MemTotal") * 1024;
  h.available_memory = meminfo_kb("/proc/meminfo", "MemAvailable") * 1024;
  std::error_code ec;
  const std::filesystem::path nodes("/sys/devices/system/node");
  if (std::filesystem::exists(nodes, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(nodes, ec)) {
      std::string fname = entry.path().filename().string();
      if (fname.rfind("node", 0) != 0 || fname.size() <= 4 || !std::isdigit(static_cast<unsigned char>(fname[4])))
        continue;
      NumaNode n;
      n.id = std::stoi(fname.substr(4));
      n.cpus = read_first_line(entry.path() / "cpulist");
      n.total_memory = meminfo_kb(entry.path() / "meminfo", "MemTotal") * 1024;
      n.free_memory = meminfo_kb(entry.path() / "meminfo", "MemFree") * 1024;
      h.numa_nodes.push_back(n);
    }
  }
  std::sort(h.numa_nodes.begin(), h.numa_nodes.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return h;
}

#ifdef RETRO_WITH_CUDA

CudaRuntimeInfo query_cuda_runtime() {
  CudaRuntimeInfo info;
  info.built_with_cuda = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  int count = 0;
  cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    info.error = cudaGetErrorString(st);
    cudaGetLastError();
  } else if (count == 0) {
    info.error = "no CUDA device visible";
  }
  return info;
}

std::vector<GpuInfo> query_gpus() {
  std::vector<GpuInfo> gpus;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return gpus;
  }
  int previous = 0;
  cudaGetDevice(&previous);
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    GpuInfo g;
    g.index = i;
    g.name = p.name;
    g.cc_major = p.major;
    g.cc_minor = p.minor;
    g.total_memory = p.totalGlobalMem;
    g.multiprocessors = p.multiProcessorCount;
    g.l2_cache_bytes = static_cast<size_t>(p.l2CacheSize);
    g.shared_memory_per_block_optin = p.sharedMemPerBlockOptin;
    g.memory_bus_width_bits = p.memoryBusWidth;
    cudaDeviceGetAttribute(&g.memory_clock_khz, cudaDevAttrMemoryClockRate, i);
    g.peak_memory_bandwidth_gbs = 2.0 * g.memory_clock_khz * 1e3 * (g.memory_bus_width_bits / 8.0) / 1e9;
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof(bus), i) == cudaSuccess) g.pci_bus_id = bus;
    g.can_map_host_memory = p.canMapHostMemory != 0;
    g.unified_addressing = p.unifiedAddressing != 0;
    std::string bus_lower = g.pci_bus_id;
    for (char& c : bus_lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string numa = read_first_line("/sys/bus/pci/devices/" + bus_lower + "/numa_node");
    if (!numa.empty()) g.numa_node = std::stoi(numa);
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) g.free_memory = free_b;
    }
    gpus.push_back(g);
  }
  cudaSetDevice(previous);
  return gpus;
}

#else

CudaRuntimeInfo query_cuda_runtime() {
  CudaRuntimeInfo info;
  info.error = "built without CUDA";
  return info;
}
std::vector<GpuInfo> query_gpus() { return {}; }

#endif

}  // namespace retro
