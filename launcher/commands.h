#pragma once
// Subcommands of the `retroinfer` executable. Each registers itself on the CLI11 app and runs
// from its callback; errors propagate as retro::Error to main, which prints them and exits 1.

#include <CLI/CLI.hpp>

namespace retro::launcher {

void register_info_command(CLI::App& app);
// `bench` (created here if no other registration made it) and its `attention` subcommand.
void register_bench_command(CLI::App& app);
void register_generate_command(CLI::App& app);
void register_demo_command(CLI::App& app);
// `bench niah` and `bench perplexity`: model-level accuracy of wave against dense attention.
void register_model_benches(CLI::App& bench);
// `bench` subcommands of the GPU attention kernels, added to the app's `bench` command.
void register_gpu_attention_benches(CLI::App& bench);
// `bench model --backend cuda`: end-to-end GPU prefill and decode of one sequence.
void register_gpu_model_bench(CLI::App& bench);
// `bench wave`: one layer of GPU wave attention against dense decode (bench_gpu_wave.cpp).
void register_gpu_wave_bench(CLI::App& bench);

}  // namespace retro::launcher
