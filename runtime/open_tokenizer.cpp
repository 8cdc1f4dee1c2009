#include "runtime/open_tokenizer.h"

#include <filesystem>

#include "runtime/core/error.h"
#include "runtime/gguf.h"

namespace retro::runtime {

std::optional<Tokenizer> open_tokenizer(const std::string& spec) {
  if (spec.rfind("preset:", 0) == 0) return std::nullopt;
  std::filesystem::path p(spec);
  if (p.extension() == ".gguf") return gguf_tokenizer(*GgufFile::open(p));
  std::filesystem::path dir = std::filesystem::is_directory(p) ? p : p.parent_path();
  std::filesystem::path file = dir / "tokenizer.json";
  RETRO_CHECK_INPUT(std::filesystem::exists(file), "model {} has no tokenizer.json (looked for {})", spec,
                    file.string());
  return Tokenizer::from_file(file);
}

}  // namespace retro::runtime
