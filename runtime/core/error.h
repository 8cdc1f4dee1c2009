#pragma once
// One error family for the whole runtime: an exception carrying file, line and a formatted
// message, thrown through the RETRO_* macros below.

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace retro {

// What kind of failure an Error reports; callers that recover (admission control, the HTTP
// layer) branch on it, everything else just prints what().
enum class ErrorKind {
  kInvalidArgument,  // bad parameter, shape or dtype from a caller
  kInvalidInput,     // malformed file or request (config, safetensors, tokenizer, HTTP body)
  kOutOfMemory,      // a pool or device cannot hold the request
  kIo,               // file system or network failure
  kUnsupported,      // feature not built in or not implemented for this case
  kInternal,         // broken invariant: a bug
  kCuda,             // CUDA runtime / driver / library error
  kComm,             // MPI, NCCL or UCX failure
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const char* file, int line, const std::string& message);

  ErrorKind kind() const { return kind_; }
  const char* file() const { return file_; }
  int line() const { return line_; }
  // The message without the "file:line" prefix.
  const std::string& message() const { return message_; }

 private:
  ErrorKind kind_;
  const char* file_;
  int line_;
  std::string message_;
};

namespace detail {
[[noreturn]] void throw_error(ErrorKind kind, const char* file, int line, const std::string& message);

inline std::string format_message() { return {}; }
template <typename... Args>
std::string format_message(fmt::format_string<Args...> format, Args&&... args) {
  return fmt::format(format, std::forward<Args>(args)...);
}
}  // namespace detail

}  // namespace retro

// Throws retro::Error of the given kind with a fmt-formatted message.
#define RETRO_THROW_KIND(kind, ...) \
  ::retro::detail::throw_error((kind), __FILE__, __LINE__, ::retro::detail::format_message(__VA_ARGS__))

#define RETRO_THROW(...) RETRO_THROW_KIND(::retro::ErrorKind::kInvalidArgument, __VA_ARGS__)

// Checks a caller-visible condition; the message says what was expected.
#define RETRO_CHECK_KIND(cond, kind, ...)                                                      \
  do {                                                                                         \
    if (!(cond)) [[unlikely]] {                                                                \
      ::retro::detail::throw_error((kind), __FILE__, __LINE__,                                 \
                                   ::retro::detail::format_message(__VA_ARGS__));              \
    }                                                                                          \
  } while (0)

#define RETRO_CHECK(cond, ...) RETRO_CHECK_KIND(cond, ::retro::ErrorKind::kInvalidArgument, __VA_ARGS__)
#define RETRO_CHECK_INPUT(cond, ...) RETRO_CHECK_KIND(cond, ::retro::ErrorKind::kInvalidInput, __VA_ARGS__)

// Internal invariant: failing it is a bug in the runtime, not in the caller's input.
#define RETRO_ASSERT(cond)                                                                         \
  do {                                                                                             \
    if (!(cond)) [[unlikely]] {                                                                    \
      ::retro::detail::throw_error(::retro::ErrorKind::kInternal, __FILE__, __LINE__,              \
                                   "internal invariant violated: " #cond);                         \
    }                                                                                              \
  } while (0)
