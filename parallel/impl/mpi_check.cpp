#include "parallel/impl/mpi_check.h"

#include <fmt/format.h>

#include <string>

#include "runtime/core/error.h"

namespace retro::parallel::impl {

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  std::string text = MPI_Error_string(code, msg, &len) == MPI_SUCCESS ? std::string(msg, static_cast<size_t>(len))
                                                                       : fmt::format("MPI error code {}", code);
  detail::throw_error(ErrorKind::kComm, file, line, fmt::format("{} failed: {}", call, text));
}

}  // namespace retro::parallel::impl
