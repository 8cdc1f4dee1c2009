# `retroinfer generate --requests` on needle-llama-tiny: one JSON line per request (id, text, tokens,
# finish reason), the needle requests answer what a lone `generate --prompt` answers, `mpirun -np 2
# ... --tp 2` prints the same lines, and a bad line under mpirun stops both ranks with an error
# naming it. Run with -DRETROINFER= -DMPIRUN= -DMPI_ENV= -DMODEL= -DWORK_DIR= (cmake -P).
if(NOT EXISTS ${MODEL}/config.json)
  message("SKIPPED: test model not found at ${MODEL}")
  return()
endif()
file(MAKE_DIRECTORY ${WORK_DIR})
set(context "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards. One of the special magic numbers for display is: 3793012. Other which dot import string claim between. One of the special magic numbers for tracing is: 3653420. ")
set(display "${context}What is the special magic number for display mentioned in the provided text? One of the special magic numbers for display is: ")
set(tracing "${context}What is the special magic number for tracing mentioned in the provided text? One of the special magic numbers for tracing is: ")
set(requests ${WORK_DIR}/requests.jsonl)
file(WRITE ${requests}
  "{\"id\": \"display\", \"prompt\": \"${display}\", \"max_new_tokens\": 12}\n"
  "{\"id\": \"tracing\", \"prompt\": \"${tracing}\", \"max_new_tokens\": 12}\n"
  "\n"
  "{\"prompt\": \"Some special magic numbers\", \"max_new_tokens\": 6, \"temperature\": 0.8, \"top_k\": 20, \"seed\": 7}\n"
  "{\"prompt\": \"One of the special magic numbers for display is: 3793012.\", \"max_new_tokens\": 3}\n"
  "{\"prompt\": \"Make sure to memorize it.\", \"max_new_tokens\": 0}\n")
set(options --model ${MODEL} --max-slots 2 --prefill-chunk 128 --max-batched-tokens 160)

execute_process(COMMAND ${RETROINFER} generate ${options} --requests ${requests}
                OUTPUT_VARIABLE one ERROR_VARIABLE one_err RESULT_VARIABLE one_rc)
if(NOT one_rc EQUAL 0)
  message(FATAL_ERROR "generate --requests failed (${one_rc}):\n${one_err}")
endif()
string(STRIP "${one}" lines)
string(REPLACE "\n" ";" lines "${lines}")
list(LENGTH lines n)
if(NOT n EQUAL 5)
  message(FATAL_ERROR "expected 5 result lines, got ${n}:\n${one}")
endif()
set(ids "")
foreach(line IN LISTS lines)
  string(JSON id GET "${line}" id)
  string(JSON reason GET "${line}" finish_reason)
  string(JSON text GET "${line}" text)
  string(JSON count LENGTH "${line}" tokens)
  list(APPEND ids ${id})
  set(text_${id} "${text}")
  set(reason_${id} "${reason}")
  set(count_${id} "${count}")
endforeach()
list(SORT ids)
if(NOT ids STREQUAL "4;5;6;display;tracing")
  message(FATAL_ERROR "ids of the results: ${ids}\n${one}")
endif()
if(NOT reason_6 STREQUAL "length" OR NOT count_6 EQUAL 0 OR NOT count_5 EQUAL 3 OR NOT count_4 EQUAL 6)
  message(FATAL_ERROR "token budgets not kept:\n${one}")
endif()
foreach(id display tracing)
  execute_process(COMMAND ${RETROINFER} generate --model ${MODEL} --prefill-chunk 128 --prompt "${${id}}"
                          --max-new-tokens 12
                  OUTPUT_VARIABLE alone ERROR_VARIABLE alone_err RESULT_VARIABLE alone_rc)
  string(STRIP "${alone}" alone)
  if(NOT alone_rc EQUAL 0 OR NOT alone STREQUAL text_${id} OR NOT reason_${id} STREQUAL "stop")
    message(FATAL_ERROR "request ${id} answered '${text_${id}}' (${reason_${id}}), alone: '${alone}'\n${alone_err}")
  endif()
endforeach()

execute_process(COMMAND ${CMAKE_COMMAND} -E env ${MPI_ENV} ${MPIRUN} -np 2 ${RETROINFER} generate ${options} --tp 2
                        --requests ${requests}
                OUTPUT_VARIABLE two ERROR_VARIABLE two_err RESULT_VARIABLE two_rc)
if(NOT two_rc EQUAL 0)
  message(FATAL_ERROR "mpirun -np 2 generate --requests --tp 2 failed (${two_rc}):\n${two_err}")
endif()
if(NOT one STREQUAL two)
  message(FATAL_ERROR "tp 2 printed\n[${two}]\none process printed\n[${one}]")
endif()

set(bad ${WORK_DIR}/bad.jsonl)
file(WRITE ${bad} "{\"prompt\": \"abc\"}\n{\"prompt\": \"abc\", oops}\n")
execute_process(COMMAND ${CMAKE_COMMAND} -E env ${MPI_ENV} ${MPIRUN} -np 2 ${RETROINFER} generate ${options} --tp 2
                        --requests ${bad}
                OUTPUT_VARIABLE bad_out ERROR_VARIABLE bad_err RESULT_VARIABLE bad_rc)
if(bad_rc EQUAL 0 OR NOT bad_err MATCHES "bad.jsonl line 2: not valid JSON")
  message(FATAL_ERROR "a malformed line under mpirun gave (${bad_rc}):\n${bad_out}\n${bad_err}")
endif()
message("one process and tp 2 both printed:\n${one}")
