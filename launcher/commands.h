#pragma once
// Subcommands of the `retroinfer` executable. Each registers itself on the CLI11 app and runs
// from its callback; errors propagate as retro::Error to main, which prints them and exits 1.

#include <CLI/CLI.hpp>

namespace retro::launcher {

void register_info_command(CLI::App& app);

}  // namespace retro::launcher
