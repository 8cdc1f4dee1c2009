# `retroinfer generate --requests` refuses a bad request file with one error naming the file, the
# line and the problem, and runs nothing: malformed JSON, no prompt, a negative max_new_tokens, a
# sampling value out of range, an unknown field, a request the KV pool can never hold, no request
# at all. Run with -DRETROINFER= -DWORK_DIR= (cmake -P).
file(MAKE_DIRECTORY ${WORK_DIR})
function(expect_refused name content expected)
  set(file ${WORK_DIR}/${name}.jsonl)
  file(WRITE ${file} "${content}")
  execute_process(COMMAND ${RETROINFER} generate --model preset:tiny --kv-memory-mib 4 --requests ${file} ${ARGN}
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  string(FIND "${err}" "${expected}" at)
  if(rc EQUAL 0 OR at EQUAL -1 OR NOT out STREQUAL "")
    message(FATAL_ERROR "${name}: expected a refusal containing '${expected}', got (${rc}):\n${out}\n${err}")
  endif()
endfunction()

expect_refused(malformed "{\"prompt\": \"abc\"}\n\n{\"prompt\": \"abc\", oops}\n"
               "malformed.jsonl line 3: not valid JSON: parse error at line 1, column 19")
expect_refused(no_prompt "{\"max_new_tokens\": 3}\n" "no_prompt.jsonl line 1: no \"prompt\"")
expect_refused(not_an_object "[1, 2]\n" "not_an_object.jsonl line 1: a request is a JSON object, got array")
expect_refused(negative "{\"prompt\": \"x\"}\n{\"prompt\": \"x\", \"max_new_tokens\": -2}\n"
               "negative.jsonl line 2: \"max_new_tokens\" must be an integer >= 0, got -2")
expect_refused(top_p "{\"prompt\": \"x\", \"top_p\": 1.5}\n" "top_p.jsonl line 1: top_p must lie in (0, 1], got 1.5")
expect_refused(unknown "{\"prompt\": \"x\", \"max_tokens\": 3}\n"
               "unknown.jsonl line 1: unknown field \"max_tokens\" (fields: id, prompt")
expect_refused(never_fits "{\"prompt\": \"hello\"}\n{\"prompt\": \"hello\", \"max_new_tokens\": 5000}\n"
               "never_fits.jsonl line 2: needs 5005 tokens of KV (prompt 5 + max_new_tokens 5000)")
expect_refused(empty "\n\n" "request file '${WORK_DIR}/empty.jsonl' holds no request")
message("every bad request file was refused with its line")
