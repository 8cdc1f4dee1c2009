// The error macros carry kind, file, line and a formatted message; logging levels parse.

#include <gtest/gtest.h>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace retro {
namespace {

TEST(Error, CheckCarriesFileLineKindAndFormattedMessage) {
  int line = 0;
  try {
    line = __LINE__ + 1;
    RETRO_CHECK(1 + 1 == 3, "expected {} heads, got {}", 32, 7);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(e.line(), line);
    EXPECT_EQ(e.message(), "expected 32 heads, got 7");
    std::string what = e.what();
    EXPECT_EQ(what.rfind("invalid argument (tests/core/error_test.cpp:", 0), 0u) << what;
    EXPECT_NE(what.find("expected 32 heads, got 7"), std::string::npos);
  }
}

TEST(Error, KindsAreKept) {
  try {
    RETRO_CHECK_INPUT(false, "safetensors header length {} exceeds file size {}", 100, 10);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("invalid input"), std::string::npos);
  }
  EXPECT_THROW(RETRO_THROW_KIND(ErrorKind::kUnsupported, "no"), Error);
  try {
    RETRO_ASSERT(2 < 1);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("2 < 1"), std::string::npos);
  }
}

TEST(Error, PassingChecksDoNotThrow) { EXPECT_NO_THROW(RETRO_CHECK(true, "never")); }

TEST(Logging, LevelsParseAndUnknownLevelsAreNamed) {
  EXPECT_EQ(parse_log_level("debug"), spdlog::level::debug);
  EXPECT_EQ(parse_log_level("WARN"), spdlog::level::warn);
  EXPECT_EQ(parse_log_level("off"), spdlog::level::off);
  try {
    parse_log_level("loud");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loud"), std::string::npos);
  }
}

TEST(Logging, InitReadsTheLevelFromTheEnvironment) {
  setenv("RETRO_LOG_LEVEL", "error", 1);
  init_logging();
  EXPECT_EQ(spdlog::get_level(), spdlog::level::err);
  setenv("RETRO_LOG_LEVEL", "info", 1);
  init_logging();
  EXPECT_EQ(spdlog::get_level(), spdlog::level::info);
  unsetenv("RETRO_LOG_LEVEL");
}

}  // namespace
}  // namespace retro
