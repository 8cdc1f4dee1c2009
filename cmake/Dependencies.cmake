# Finds every dependency the CMake way and records which optional features are on.
# Required: MPI, spdlog, fmt, CLI11, nlohmann-json, cereal, OpenBLAS, PCRE2 (and GoogleTest for tests).
# Optional, each with a clear message when missing: CUDA (+ cuBLAS, NCCL), UCX, cpp-httplib,
# Google Benchmark.

include(CheckLanguage)
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)

# Kept as three parallel lists: a detail may contain characters that would split a packed entry.
set(RETRO_FEATURE_NAMES "")
set(RETRO_FEATURE_STATES "")
set(RETRO_FEATURE_DETAILS "")
macro(retro_feature name on detail)
  list(APPEND RETRO_FEATURE_NAMES "${name}")
  list(APPEND RETRO_FEATURE_STATES "${on}")
  string(REPLACE ";" "," _retro_detail "${detail}")
  list(APPEND RETRO_FEATURE_DETAILS "${_retro_detail}")
endmacro()

if(RETRO_USE_CCACHE)
  find_program(CCACHE_PROGRAM ccache)
  if(CCACHE_PROGRAM)
    set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
    set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
  endif()
endif()

# ---- CUDA ----
set(RETRO_WITH_CUDA OFF)
if(NOT RETRO_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90a CACHE STRING "CUDA architectures (default: Hopper, sm_90a)")
    endif()
    enable_language(CUDA)
    # .cu files hold kernels and launches only (C++17 is enough and every CMake knows its flags).
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(RETRO_WITH_CUDA ON)
    # Kernels on Hopper warpgroup MMA (wgmma) exist only in sm_90a code; the host side asks for them
    # only where the build has it.
    if("90a" IN_LIST CMAKE_CUDA_ARCHITECTURES OR "90a-real" IN_LIST CMAKE_CUDA_ARCHITECTURES)
      add_compile_definitions(RETRO_CUDA_SM90A)
    endif()
  elseif(RETRO_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RETRO_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit "
                        "or set CMAKE_CUDA_COMPILER (or configure with -DRETRO_CUDA=OFF)")
  endif()
endif()
if(RETRO_WITH_CUDA)
  retro_feature("CUDA" ON "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
  retro_feature("cuBLAS" ON "${CUDAToolkit_LIBRARY_DIR}")
else()
  retro_feature("CUDA" OFF "RETRO_CUDA=${RETRO_CUDA}: no nvcc found or disabled; CPU backend only")
  retro_feature("cuBLAS" OFF "needs CUDA")
endif()

# NCCL has no CMake package: look for the header and library beside the CUDA toolkit and the system.
set(RETRO_WITH_NCCL OFF)
if(RETRO_WITH_CUDA)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{NCCL_HOME}/lib)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(retro::nccl UNKNOWN IMPORTED)
    set_target_properties(retro::nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                                                 INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
    set(RETRO_WITH_NCCL ON)
    retro_feature("NCCL" ON "${NCCL_LIBRARY}")
  else()
    retro_feature("NCCL" OFF "nccl.h / libnccl not found (set NCCL_HOME); GPU collectives fall back to none")
  endif()
else()
  retro_feature("NCCL" OFF "needs CUDA")
endif()

# ---- MPI (required: the CPU backend's collectives and the launcher) ----
find_package(MPI REQUIRED COMPONENTS C)
# C API only: keep the deprecated C++ bindings out of every translation unit.
set_property(TARGET MPI::MPI_C APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS OMPI_SKIP_MPICXX MPICH_SKIP_MPICXX)
retro_feature("MPI" ON "MPI ${MPI_C_VERSION}, ${MPIEXEC_EXECUTABLE}")

# ---- UCX (optional: host-memory KV segment transport) ----
pkg_check_modules(UCX IMPORTED_TARGET ucx)
if(UCX_FOUND)
  set(RETRO_WITH_UCX ON)
  retro_feature("UCX" ON "${UCX_VERSION}")
else()
  set(RETRO_WITH_UCX OFF)
  retro_feature("UCX" OFF "pkg-config ucx not found (apt-get install libucx-dev); KV segments move over MPI only")
endif()

# ---- cpp-httplib (optional: `retroinfer serve`) ----
# Debian ships a split build (header + libcpp-httplib.so), so it is found through pkg-config.
pkg_check_modules(HTTPLIB IMPORTED_TARGET cpp-httplib)
if(HTTPLIB_FOUND)
  set(RETRO_WITH_HTTP ON)
  retro_feature("HTTP" ON "cpp-httplib ${HTTPLIB_VERSION}")
else()
  set(RETRO_WITH_HTTP OFF)
  retro_feature("HTTP" OFF "pkg-config cpp-httplib not found (apt-get install libcpp-httplib-dev): no `serve`")
endif()

# ---- header-only libraries ----
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(cereal REQUIRED)

# spdlog and fmt as header-only targets, so the binaries carry no Debian-only shared libraries.
get_target_property(_fmt_inc fmt::fmt-header-only INTERFACE_INCLUDE_DIRECTORIES)
get_target_property(_spdlog_inc spdlog::spdlog_header_only INTERFACE_INCLUDE_DIRECTORIES)
add_library(retro_logging_deps INTERFACE)
target_include_directories(retro_logging_deps SYSTEM INTERFACE ${_spdlog_inc} ${_fmt_inc})
target_compile_definitions(retro_logging_deps INTERFACE SPDLOG_HEADER_ONLY SPDLOG_FMT_EXTERNAL FMT_HEADER_ONLY=1)
target_link_libraries(retro_logging_deps INTERFACE Threads::Threads)
add_library(retro::logging_deps ALIAS retro_logging_deps)
retro_feature("spdlog/fmt" ON "spdlog ${spdlog_VERSION}, fmt ${fmt_VERSION} (header-only)")

if(TARGET cereal::cereal)
  set(RETRO_CEREAL_TARGET cereal::cereal)
else()
  set(RETRO_CEREAL_TARGET cereal)
endif()

# ---- OpenBLAS (CPU GEMMs) ----
set(BLA_VENDOR OpenBLAS)
find_package(BLAS REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas x86_64-linux-gnu/openblas-pthread)
if(NOT CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: apt-get install libopenblas-dev")
endif()
add_library(retro_blas INTERFACE)
target_include_directories(retro_blas SYSTEM INTERFACE ${CBLAS_INCLUDE_DIR})
target_link_libraries(retro_blas INTERFACE ${BLAS_LIBRARIES})
add_library(retro::blas ALIAS retro_blas)
retro_feature("OpenBLAS" ON "${BLAS_LIBRARIES}")

# ---- PCRE2 (tokenizer pre-tokenizer regexes) ----
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
retro_feature("PCRE2" ON "${PCRE2_VERSION}")

# ---- tests and benchmarks ----
if(RETRO_BUILD_TESTS)
  find_package(GTest REQUIRED)
  retro_feature("GoogleTest" ON "${GTest_VERSION}")
endif()
set(RETRO_WITH_BENCHMARK OFF)
if(RETRO_BUILD_BENCHMARKS)
  find_package(benchmark QUIET)
  if(benchmark_FOUND)
    set(RETRO_WITH_BENCHMARK ON)
    retro_feature("Google Benchmark" ON "${benchmark_VERSION}")
  else()
    retro_feature("Google Benchmark" OFF "not found (apt-get install libbenchmark-dev); micro-benchmarks skipped")
  endif()
endif()

function(retro_print_feature_summary)
  message(STATUS "")
  message(STATUS "RetroInfer ${PROJECT_VERSION} feature summary")
  list(LENGTH RETRO_FEATURE_NAMES n)
  math(EXPR last "${n} - 1")
  foreach(i RANGE ${last})
    list(GET RETRO_FEATURE_NAMES ${i} name)
    list(GET RETRO_FEATURE_STATES ${i} feature_on)
    list(GET RETRO_FEATURE_DETAILS ${i} detail)
    if(feature_on)
      set(state "ON ")
    else()
      set(state "OFF")
    endif()
    string(LENGTH "${name}" len)
    math(EXPR pad "18 - ${len}")
    string(REPEAT " " ${pad} spaces)
    message(STATUS "  ${name}${spaces}${state}  ${detail}")
  endforeach()
  message(STATUS "")
endfunction()

# Booleans and details for runtime/core/build_info.cpp.in.
foreach(f CUDA NCCL UCX HTTP)
  if(RETRO_WITH_${f})
    set(RETRO_WITH_${f}_BOOL true)
  else()
    set(RETRO_WITH_${f}_BOOL false)
  endif()
endforeach()
if(RETRO_WITH_CUDA)
  set(RETRO_CUDA_DETAIL "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm ${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(RETRO_CUDA_DETAIL "")
endif()
