#pragma once
// MPI return codes as retro::Error (kComm) naming the call and MPI's own message. Calls on
// MPI_COMM_WORLD abort under MPI's default handler; communicators made here return their errors.

#include <mpi.h>

namespace retro::parallel::impl {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

}  // namespace retro::parallel::impl

#define RETRO_MPI_CHECK(expr)                                                                \
  do {                                                                                       \
    int retro_mpi_code_ = (expr);                                                            \
    if (retro_mpi_code_ != MPI_SUCCESS) [[unlikely]] {                                       \
      ::retro::parallel::impl::throw_mpi_error(retro_mpi_code_, #expr, __FILE__, __LINE__);  \
    }                                                                                        \
  } while (0)
