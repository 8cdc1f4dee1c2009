#include "parallel/numa_binding.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "runtime/core/env.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/system_info.h"

namespace retro::parallel {

namespace {

int parse_cpu(std::string_view text, std::string_view whole) {
  int value = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  RETRO_CHECK_INPUT(ec == std::errc() && end == text.data() + text.size() && value >= 0,
                    "malformed cpulist '{}': '{}' is not a CPU number", whole, text);
  return value;
}

// Nothing changed, and why.
NumaBinding unchanged(int node, const char* reason) {
  NumaBinding b;
  b.node = node;
  b.reason = reason;
  return b;
}

std::vector<int> current_affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

}  // namespace

std::vector<int> parse_cpulist(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  std::vector<int> cpus;
  const std::string_view whole = text;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    RETRO_CHECK_INPUT(!item.empty(), "malformed cpulist '{}': empty item", whole);
    const size_t dash = item.find('-');
    const int first = parse_cpu(item.substr(0, dash), whole);
    const int last = dash == std::string_view::npos ? first : parse_cpu(item.substr(dash + 1), whole);
    RETRO_CHECK_INPUT(first <= last, "malformed cpulist '{}': range {}-{} runs backwards", whole, first, last);
    for (int c = first; c <= last; ++c) cpus.push_back(c);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

NumaBinding plan_numa_binding(int gpu_node, int numa_nodes, const std::vector<int>& node_cpus,
                              const std::vector<int>& allowed_cpus) {
  NumaBinding b;
  b.node = gpu_node;
  if (gpu_node < 0) {
    b.reason = "the GPU's NUMA node is unknown";
    return b;
  }
  if (numa_nodes <= 1) {
    b.reason = "one NUMA node";
    return b;
  }
  std::vector<int> both;
  std::set_intersection(node_cpus.begin(), node_cpus.end(), allowed_cpus.begin(), allowed_cpus.end(),
                        std::back_inserter(both));
  if (both.empty()) {
    b.reason = "the process is bound to CPUs outside the GPU's node (mpirun's binding is kept)";
    return b;
  }
  b.cpus = std::move(both);
  b.bind = true;
  b.reason = "bound to the GPU's node";
  return b;
}

NumaBinding bind_to_gpu_numa_node(int device) {
  if (env_is("RETRO_NUMA_BIND", "0")) return unchanged(-1, "RETRO_NUMA_BIND=0");
  const std::vector<GpuInfo> gpus = query_gpus();
  if (device < 0 || device >= static_cast<int>(gpus.size())) return unchanged(-1, "no such GPU");
  const HostInfo host = query_host();
  const int node = gpus[static_cast<size_t>(device)].numa_node;
  std::vector<int> node_cpus;
  for (const NumaNode& n : host.numa_nodes)
    if (n.id == node) node_cpus = parse_cpulist(n.cpus);
  std::vector<int> allowed = current_affinity();
  NumaBinding b = plan_numa_binding(node, static_cast<int>(host.numa_nodes.size()), node_cpus, allowed);
  if (!b.bind) {
    if (node >= 0 && host.numa_nodes.size() > 1) RETRO_LOG_WARN("cuda:{} on NUMA node {}: {}", device, node, b.reason);
    return b;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : b.cpus) CPU_SET(c, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    RETRO_LOG_WARN("cuda:{}: could not bind to the CPUs of NUMA node {}: {}", device, node, std::strerror(errno));
    return unchanged(node, "sched_setaffinity failed");
  }
  RETRO_LOG_INFO("cuda:{} on NUMA node {}: threads on {} of its CPUs (host memory follows: local allocation)", device, node,
                 b.cpus.size());
  return b;
}

}  // namespace retro::parallel
