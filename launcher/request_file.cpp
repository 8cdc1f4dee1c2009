#include "launcher/request_file.h"

#include <fmt/format.h>

#include <fstream>
#include <limits>

#include "runtime/core/error.h"

namespace retro::launcher {

namespace {

constexpr const char* kFields = "id, prompt, max_new_tokens, temperature, top_k, top_p, seed";

RequestLine parse_line(const std::string& text, const RequestLine& defaults) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ..." without the tag.
    const std::string what = e.what();
    const size_t tag = what.find("] ");
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "not valid JSON: {}",
                     tag == std::string::npos ? what : what.substr(tag + 2));
  }
  RETRO_CHECK_INPUT(j.is_object(), "a request is a JSON object, got {}", j.type_name());
  RequestLine r = defaults;
  for (const auto& [key, value] : j.items()) {
    auto expect = [&](bool ok, const char* what) {
      RETRO_CHECK_INPUT(ok, "\"{}\" must be {}, got {}", key, what, value.dump());
    };
    if (key == "id") {
      expect(value.is_string() || value.is_number_integer(), "a string or an integer");
      r.id = value;
    } else if (key == "prompt") {
      expect(value.is_string() && !value.get<std::string>().empty(), "a non-empty string");
      r.prompt = value.get<std::string>();
    } else if (key == "max_new_tokens") {
      expect(value.is_number_integer() && value.get<int64_t>() >= 0 &&
                 value.get<int64_t>() <= std::numeric_limits<int>::max(),
             "an integer >= 0");
      r.max_new_tokens = value.get<int>();
    } else if (key == "temperature") {
      expect(value.is_number(), "a number");
      r.sampling.temperature = value.get<float>();
    } else if (key == "top_k") {
      expect(value.is_number_integer() && value.get<int64_t>() >= 0 &&
                 value.get<int64_t>() <= std::numeric_limits<int>::max(),
             "an integer >= 0");
      r.sampling.top_k = value.get<int>();
    } else if (key == "top_p") {
      expect(value.is_number(), "a number");
      r.sampling.top_p = value.get<float>();
    } else if (key == "seed") {
      expect(value.is_number_unsigned(), "an integer >= 0");
      r.sampling.seed = value.get<uint64_t>();
    } else {
      RETRO_THROW_KIND(ErrorKind::kInvalidInput, "unknown field \"{}\" (fields: {})", key, kFields);
    }
  }
  RETRO_CHECK_INPUT(!r.prompt.empty(), "no \"prompt\"");
  try {
    r.sampling.validate();
  } catch (const Error& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "{}", e.message());
  }
  return r;
}

}  // namespace

std::vector<RequestLine> read_request_file(const std::string& path, const RequestLine& defaults) {
  std::ifstream f(path);
  RETRO_CHECK_KIND(f.good(), ErrorKind::kIo, "cannot open request file '{}'", path);
  std::vector<RequestLine> requests;
  std::string text;
  for (int line = 1; std::getline(f, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    RequestLine defaults_here = defaults;
    defaults_here.line = line;
    defaults_here.id = line;
    try {
      requests.push_back(parse_line(text, defaults_here));
    } catch (const Error& e) {
      RETRO_THROW_KIND(e.kind(), "{} line {}: {}", path, line, e.message());
    }
  }
  RETRO_CHECK_KIND(!f.bad(), ErrorKind::kIo, "cannot read request file '{}'", path);
  RETRO_CHECK_INPUT(!requests.empty(), "request file '{}' holds no request", path);
  return requests;
}

}  // namespace retro::launcher
