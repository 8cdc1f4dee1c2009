// StepPlan's wire form: every field survives encode/decode (and a broadcast in a group of one), and
// a buffer that is short, foreign, corrupted, of another version or inconsistent is refused with an
// error that says which.

#include <gtest/gtest.h>

#include "tests/test_support.h"

#include <cstring>
#include <string>

#include "parallel/communicator.h"
#include "parallel/step_plan.h"

namespace retro::parallel {
namespace {

using runtime::WorkItem;
using runtime::WorkKind;
using test_support::error_of;

StepPlan sample_plan() {
  StepPlan plan;
  plan.step = 41;
  plan.release = {3, 0};
  plan.items.push_back(WorkItem{.slot = 1, .kind = WorkKind::kDecode, .position = 700, .tokens = {17}});
  plan.items.push_back(WorkItem{.slot = 2, .kind = WorkKind::kPrefill, .position = 512, .tokens = {5, 6, 7, 8},
                                .ends_prompt = true});
  plan.items.push_back(WorkItem{.slot = 0, .kind = WorkKind::kPrefill, .position = 0, .tokens = {9, 10}});
  return plan;
}

// A valid header (magic, version 1, size, FNV-1a 64 checksum) in front of any payload.
std::string with_header(const std::string& payload) {
  uint64_t checksum = 0xcbf29ce484222325ull;
  for (unsigned char c : payload) {
    checksum ^= c;
    checksum *= 0x100000001b3ull;
  }
  const uint32_t magic = 0x4c505352, version = 1;
  const uint64_t size = payload.size();
  std::string header(24, '\0');
  std::memcpy(header.data(), &magic, 4);
  std::memcpy(header.data() + 4, &version, 4);
  std::memcpy(header.data() + 8, &size, 8);
  std::memcpy(header.data() + 16, &checksum, 8);
  return header + payload;
}

TEST(StepPlan, EveryFieldSurvivesTheWireForm) {
  const StepPlan plan = sample_plan();
  EXPECT_EQ(decode_step_plan(encode_step_plan(plan)), plan);
  EXPECT_EQ(plan.logits_rows(), 2);
  EXPECT_EQ(plan.describe(), "step 41: release [3, 0] 1 decode, 2 prefill (6 tokens)");
  StepPlan last;
  last.step = 42;
  last.release = {1, 2};
  last.shutdown = true;
  EXPECT_EQ(decode_step_plan(encode_step_plan(last)), last);
  EXPECT_EQ(decode_step_plan(encode_step_plan(StepPlan{})), StepPlan{});
}

TEST(StepPlan, BroadcastInAGroupOfOneKeepsThePlan) {
  SelfCommunicator self;
  StepPlan plan = sample_plan();
  broadcast_step_plan(self, plan);
  EXPECT_EQ(plan, sample_plan());
}

TEST(StepPlan, MalformedBuffersAreRefusedWithTheReason) {
  const std::string good = encode_step_plan(sample_plan());
  auto error = [](const std::string& bytes) { return error_of([&] { decode_step_plan(bytes); }); };

  EXPECT_NE(error("").find("step plan of 0 bytes is shorter than its 24-byte header"), std::string::npos);
  EXPECT_NE(error(good.substr(0, 10)).find("shorter than its 24-byte header"), std::string::npos);
  EXPECT_NE(error(std::string(64, 'x')).find("not a step plan: magic 0x78787878"), std::string::npos);

  std::string version = good;
  version[4] = 9;
  EXPECT_NE(error(version).find("step plan format version 9, this build reads version 1"), std::string::npos);

  const std::string truncated = good.substr(0, good.size() - 3);
  EXPECT_NE(error(truncated).find("header announces " + std::to_string(good.size() - 24) + " payload bytes, " +
                                  std::to_string(good.size() - 27) + " follow"),
            std::string::npos);

  std::string flipped = good;
  flipped[good.size() - 5] ^= 0x40;
  EXPECT_NE(error(flipped).find("checksum"), std::string::npos) << error(flipped);

  // A sound header over a payload that is not a whole plan, or more than one.
  const std::string payload = good.substr(24);
  EXPECT_EQ(with_header(payload), good);
  EXPECT_NE(error(with_header(payload.substr(0, payload.size() - 6))).find("payload of"), std::string::npos);
  EXPECT_NE(error(with_header(payload + "zz")).find("step plan payload has 2 bytes past the plan"), std::string::npos);

  // Consistent header, inconsistent plans: built as an encoder of another build could send them.
  StepPlan kind = sample_plan();
  kind.items[0].kind = static_cast<WorkKind>(7);
  EXPECT_NE(error(encode_step_plan(kind)).find("step plan item 0 has work kind 7"), std::string::npos);
  StepPlan shutdown = sample_plan();
  shutdown.shutdown = true;
  EXPECT_NE(error(encode_step_plan(shutdown)).find("step plan 41 shuts down but carries 3 items"), std::string::npos);
}

}  // namespace
}  // namespace retro::parallel
