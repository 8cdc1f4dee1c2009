# `retroinfer generate` on one process and as tp 2 under mpirun must print the same text, once;
# the ranks' logs name their rank. Run with -DRETROINFER= -DMPIRUN= -DMPI_ENV= -DMODEL= (cmake -P).
if(NOT EXISTS ${MODEL}/config.json)
  message("SKIPPED: test model not found at ${MODEL}")
  return()
endif()
set(args generate --model ${MODEL} --prompt "Some special magic numbers are hidden" --max-new-tokens 16)
execute_process(COMMAND ${RETROINFER} ${args}
                OUTPUT_VARIABLE one ERROR_VARIABLE one_err RESULT_VARIABLE one_rc)
if(NOT one_rc EQUAL 0)
  message(FATAL_ERROR "single-process generate failed (${one_rc}):\n${one_err}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E env ${MPI_ENV} ${MPIRUN} -np 2 ${RETROINFER} ${args} --tp 2
                OUTPUT_VARIABLE two ERROR_VARIABLE two_err RESULT_VARIABLE two_rc)
if(NOT two_rc EQUAL 0)
  message(FATAL_ERROR "mpirun -np 2 generate --tp 2 failed (${two_rc}):\n${two_err}")
endif()
if(NOT one STREQUAL two)
  message(FATAL_ERROR "tp 2 printed\n[${two}]\none process printed\n[${one}]")
endif()
if(NOT two_err MATCHES "\\[rank 1\\][^\n]*tp 2 \\(tp_rank 1\\)")
  message(FATAL_ERROR "rank 1's log does not say its place in the group:\n${two_err}")
endif()
message("tp 2 and one process both printed: ${one}")
