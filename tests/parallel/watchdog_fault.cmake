# Runs watchdog_fault under `mpirun -np 2` with RETRO_WATCHDOG_TIMEOUT_S=TIMEOUT_S and holds the
# job to what the failure watchdog promises.
#   -DEXPECT=REGEX (a fault is injected): the job fails, stops within TIMEOUT_S of the fault, its
#                  output matches REGEX (the error naming the failed rank), and none of its
#                  processes is left behind.
#   no EXPECT:     the job succeeds and no watchdog error is logged.
# Run with -DPROGRAM= -DMPIRUN= -DMPI_ENV= -DTIMEOUT_S= -DARGS= [-DEXPECT=] (cmake -P).

function(unix_ms out)
  string(TIMESTAMP us "%s%f" UTC)
  math(EXPR ms "${us} / 1000")
  set(${out} ${ms} PARENT_SCOPE)
endfunction()

math(EXPR hard_limit_s "${TIMEOUT_S} * 5 + 30")
execute_process(COMMAND ${CMAKE_COMMAND} -E env ${MPI_ENV} RETRO_WATCHDOG_TIMEOUT_S=${TIMEOUT_S}
                        ${MPIRUN} -np 2 ${PROGRAM} ${ARGS}
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT ${hard_limit_s})
unix_ms(end_ms)
set(output "${out}\n${err}")
if(output MATCHES "--nccl needs (a GPU for each|a build with CUDA)")
  message("SKIPPED: ${CMAKE_MATCH_0}")
  return()
endif()

# Every rank that started said which process it is; none may outlive the job.
string(REGEX MATCHALL "rank [0-9]+ is process [0-9]+" started "${out}")
foreach(line IN LISTS started)
  string(REGEX REPLACE ".* process " "" pid "${line}")
  execute_process(COMMAND ps -o stat= -p ${pid} OUTPUT_VARIABLE state RESULT_VARIABLE gone)
  if(gone EQUAL 0 AND NOT state MATCHES "^ *Z")  # a zombie has ended, only not yet reaped
    execute_process(COMMAND kill -9 ${pid})
    message(FATAL_ERROR "${line} outlived the job (state ${state}); killed it now. Output:\n${output}")
  endif()
endforeach()
list(LENGTH started n_started)
if(NOT n_started EQUAL 2)
  message(FATAL_ERROR "expected both ranks to report their process, got ${n_started}:\n${output}")
endif()

if(NOT DEFINED EXPECT OR EXPECT STREQUAL "")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "a healthy job failed (${rc}):\n${output}")
  endif()
  if(output MATCHES "watchdog: ")
    message(FATAL_ERROR "the watchdog raised an alarm in a healthy job:\n${output}")
  endif()
  if(NOT out MATCHES "all [0-9]+ steps done")
    message(FATAL_ERROR "the job did not finish its steps:\n${output}")
  endif()
  message("healthy job ended cleanly:\n${output}")
  return()
endif()

if(rc EQUAL 0 OR NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the job with a fault did not fail with an exit status (${rc}):\n${output}")
endif()
if(NOT out MATCHES "fault [a-z]+ on rank [0-9]+ at unix ms ([0-9]+)")
  message(FATAL_ERROR "no fault was injected:\n${output}")
endif()
math(EXPR stopped_ms "${end_ms} - ${CMAKE_MATCH_1}")
math(EXPR limit_ms "${TIMEOUT_S} * 1000")
if(stopped_ms GREATER limit_ms)
  message(FATAL_ERROR "the job stopped ${stopped_ms} ms after the fault, beyond ${limit_ms} ms:\n${output}")
endif()
if(NOT output MATCHES "${EXPECT}")
  message(FATAL_ERROR "the output does not match '${EXPECT}':\n${output}")
endif()
message("stopped ${stopped_ms} ms after the fault (exit status ${rc}): ${CMAKE_MATCH_0}")
