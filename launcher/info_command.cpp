// `retroinfer info`: version, build features, GPUs, MPI world, host memory and NUMA nodes.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>

#include "launcher/commands.h"
#include "parallel/mpi_world.h"
#include "runtime/core/allocator.h"
#include "runtime/core/build_info.h"
#include "runtime/core/system_info.h"

namespace retro::launcher {

namespace {

struct InfoOptions {
  bool json = false;
};

nlohmann::ordered_json collect(const parallel::MpiWorld& world, const std::vector<std::string>& hosts) {
  nlohmann::ordered_json j;
  const BuildInfo& b = build_info();
  j["version"] = b.version;
  j["build_type"] = b.build_type;
  j["compiler"] = b.compiler;
  for (const auto& f : b.features) j["features"][f.name] = {{"enabled", f.enabled}, {"detail", f.detail}};
  CudaRuntimeInfo cuda = query_cuda_runtime();
  j["cuda"] = {{"built", cuda.built_with_cuda},
               {"runtime_version", cuda.runtime_version},
               {"driver_version", cuda.driver_version},
               {"error", cuda.error}};
  j["gpus"] = nlohmann::ordered_json::array();
  for (const GpuInfo& g : query_gpus()) {
    j["gpus"].push_back({{"index", g.index},
                         {"name", g.name},
                         {"compute_capability", fmt::format("{}.{}", g.cc_major, g.cc_minor)},
                         {"total_memory", g.total_memory},
                         {"free_memory", g.free_memory},
                         {"multiprocessors", g.multiprocessors},
                         {"l2_cache_bytes", g.l2_cache_bytes},
                         {"shared_memory_per_block_optin", g.shared_memory_per_block_optin},
                         {"memory_bus_width_bits", g.memory_bus_width_bits},
                         {"memory_clock_khz", g.memory_clock_khz},
                         {"peak_memory_bandwidth_gbs", g.peak_memory_bandwidth_gbs},
                         {"pci_bus_id", g.pci_bus_id},
                         {"numa_node", g.numa_node},
                         {"can_map_host_memory", g.can_map_host_memory},
                         {"unified_addressing", g.unified_addressing}});
  }
  j["mpi"] = {{"initialized", world.initialized},
              {"world_size", world.size},
              {"rank", world.rank},
              {"local_size", world.local_size},
              {"library", world.library_version},
              {"hosts", hosts}};
  HostInfo h = query_host();
  j["host"] = {{"hostname", h.hostname},
               {"logical_cpus", h.logical_cpus},
               {"total_memory", h.total_memory},
               {"available_memory", h.available_memory}};
  j["host"]["numa_nodes"] = nlohmann::ordered_json::array();
  for (const NumaNode& n : h.numa_nodes)
    j["host"]["numa_nodes"].push_back(
        {{"id", n.id}, {"cpus", n.cpus}, {"total_memory", n.total_memory}, {"free_memory", n.free_memory}});
  return j;
}

void print_text(const nlohmann::ordered_json& j) {
  fmt::print("retroinfer {} ({}, {})\n\n", j["version"].get<std::string>(), j["build_type"].get<std::string>(),
             j["compiler"].get<std::string>());
  fmt::print("Build features\n");
  for (const auto& [name, f] : j["features"].items()) {
    fmt::print("  {:<8} {:<3}  {}\n", name, f["enabled"].get<bool>() ? "on" : "off", f["detail"].get<std::string>());
  }
  const auto& cuda = j["cuda"];
  fmt::print("\nGPUs\n");
  if (cuda["built"].get<bool>()) {
    int rt = cuda["runtime_version"], drv = cuda["driver_version"];
    fmt::print("  CUDA runtime {}.{}, driver {}\n", rt / 1000, (rt % 1000) / 10,
               drv ? fmt::format("{}.{}", drv / 1000, (drv % 1000) / 10) : std::string("not loaded"));
  }
  if (j["gpus"].empty()) fmt::print("  none visible: {}\n", cuda["error"].get<std::string>());
  for (const auto& g : j["gpus"]) {
    fmt::print("  [{}] {}  sm_{}  {} ({} free)\n", g["index"].get<int>(), g["name"].get<std::string>(),
               [&] {
                 std::string cc = g["compute_capability"];
                 cc.erase(std::remove(cc.begin(), cc.end(), '.'), cc.end());
                 return cc;
               }(),
               format_bytes(g["total_memory"]), format_bytes(g["free_memory"]));
    fmt::print("      {} SMs, L2 {}, smem/block {} (opt-in), {}-bit bus @ {} MHz -> {:.0f} GB/s peak\n",
               g["multiprocessors"].get<int>(), format_bytes(g["l2_cache_bytes"]),
               format_bytes(g["shared_memory_per_block_optin"]), g["memory_bus_width_bits"].get<int>(),
               g["memory_clock_khz"].get<int>() / 1000, g["peak_memory_bandwidth_gbs"].get<double>());
    fmt::print("      PCI {}, NUMA node {}, map host memory: {}, unified addressing: {}\n",
               g["pci_bus_id"].get<std::string>(), g["numa_node"].get<int>(),
               g["can_map_host_memory"].get<bool>() ? "yes" : "no", g["unified_addressing"].get<bool>() ? "yes" : "no");
  }
  const auto& mpi = j["mpi"];
  fmt::print("\nMPI world\n");
  if (mpi["initialized"].get<bool>()) {
    fmt::print("  {} ranks ({} on this node), {}\n", mpi["world_size"].get<int>(), mpi["local_size"].get<int>(),
               mpi["library"].get<std::string>());
    int r = 0;
    for (const auto& host : mpi["hosts"]) fmt::print("  rank {} on {}\n", r++, host.get<std::string>());
  } else {
    fmt::print("  single process (not started by an MPI launcher)\n");
  }
  const auto& h = j["host"];
  fmt::print("\nHost\n  {}: {} logical CPUs, {} memory ({} available)\n", h["hostname"].get<std::string>(),
             h["logical_cpus"].get<int>(), format_bytes(h["total_memory"]), format_bytes(h["available_memory"]));
  for (const auto& n : h["numa_nodes"])
    fmt::print("  NUMA node {}: CPUs {}, {} ({} free)\n", n["id"].get<int>(), n["cpus"].get<std::string>(),
               format_bytes(n["total_memory"]), format_bytes(n["free_memory"]));
}

}  // namespace

void register_info_command(CLI::App& app) {
  auto opts = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand("info", "Show version, build features, GPUs, MPI world, host memory and NUMA nodes");
  cmd->add_flag("--json", opts->json, "Print one JSON object instead of text");
  cmd->callback([opts] {
    const parallel::MpiWorld& world = parallel::mpi_world();
    std::vector<std::string> hosts = parallel::gather_processor_names();
    if (world.rank != 0) return;
    nlohmann::ordered_json j = collect(world, hosts);
    if (opts->json) {
      std::cout << j.dump(2) << std::endl;
    } else {
      print_text(j);
    }
  });
}

}  // namespace retro::launcher
