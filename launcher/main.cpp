// retroinfer: long-context LLM inference with the KV cache as a vector store.

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <memory>

#include "launcher/commands.h"
#include "parallel/mpi_world.h"
#include "parallel/watchdog.h"
#include "runtime/core/build_info.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

int main(int argc, char** argv) {
  retro::init_logging();
  CLI::App app{"retroinfer: long-context LLM inference with the KV cache as a vector store (wave index + wave buffer)"};
  app.set_version_flag("--version", retro::build_info().version);
  app.require_subcommand(1);
  retro::launcher::register_info_command(app);
  retro::launcher::register_generate_command(app);
  retro::launcher::register_demo_command(app);
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks: print a markdown table, optionally JSON lines");
  bench->require_subcommand(1);
  retro::launcher::register_gpu_attention_benches(*bench);
  retro::launcher::register_model_benches(*bench);
  retro::launcher::register_gpu_model_bench(*bench);
  retro::launcher::register_gpu_wave_bench(*bench);
  retro::launcher::register_bench_command(app);
  // Outlives the handlers below: a rank that fails stops the job before its watchdog would wait
  // for the others to end.
  std::unique_ptr<retro::parallel::Watchdog> watchdog;
  try {
    watchdog = retro::parallel::start_watchdog(retro::parallel::init_mpi_world(&argc, &argv));
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const retro::Error& e) {
    RETRO_LOG_ERROR("{}", e.what());
    retro::parallel::stop_job_after_error(1);
    return 1;
  } catch (const std::exception& e) {
    RETRO_LOG_ERROR("unexpected error: {}", e.what());
    retro::parallel::stop_job_after_error(1);
    return 1;
  }
  return 0;
}
