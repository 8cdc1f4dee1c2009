#pragma once
// The request file of `retroinfer generate --requests FILE.jsonl`: one JSON object a line,
//   {"prompt": "...", "max_new_tokens": 32, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 7, "id": "a"}
// where only "prompt" (a non-empty string) is required; the others default to the command line's
// values, and "id" (a string or an integer) to the line number. Blank lines are skipped.

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "runtime/sampler.h"

namespace retro::launcher {

struct RequestLine {
  int line = 0;         // 1-based line of the file
  nlohmann::json id;    // the object's "id", or the line number
  std::string prompt;
  int max_new_tokens = 0;
  runtime::SamplingParams sampling;
};

// Every request of the file at `path`, the fields a line leaves out taken from `defaults`. Throws
// retro::Error naming the file and line: kIo when it cannot be read, kInvalidInput for a line that is
// not a JSON object, a missing or empty prompt, a field of the wrong type or out of range (negative
// max_new_tokens, top_p outside (0, 1], ...) or an unknown field; and when the file holds no request.
std::vector<RequestLine> read_request_file(const std::string& path, const RequestLine& defaults);

}  // namespace retro::launcher
