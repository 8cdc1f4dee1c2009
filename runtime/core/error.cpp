#include "runtime/core/error.h"

namespace retro {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kInvalidInput: return "invalid input";
    case ErrorKind::kOutOfMemory: return "out of memory";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kInternal: return "internal error";
    case ErrorKind::kCuda: return "CUDA error";
    case ErrorKind::kComm: return "communication error";
  }
  return "error";
}

static std::string short_file(const char* file) {
  // Paths relative to the source tree ("runtime/core/tensor.cpp"), not the build host's absolute path.
  std::string f(file);
  const std::string root = RETRO_SOURCE_DIR;
  if (f.compare(0, root.size(), root) == 0) return f.substr(root.size());
  return f;
}

Error::Error(ErrorKind kind, const char* file, int line, const std::string& message)
    : std::runtime_error(fmt::format("{} ({}:{}): {}", error_kind_name(kind), short_file(file), line, message)),
      kind_(kind),
      file_(file),
      line_(line),
      message_(message) {}

namespace detail {
void throw_error(ErrorKind kind, const char* file, int line, const std::string& message) {
  throw Error(kind, file, line, message);
}
}  // namespace detail

}  // namespace retro
