#include "parallel/step_plan.h"

#include <cereal/archives/binary.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/vector.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sstream>

#include "runtime/core/error.h"

// Found by argument-dependent lookup from cereal's archives.
namespace retro::runtime {
template <class Archive>
void serialize(Archive& ar, WorkItem& item) {
  ar(item.slot, item.kind, item.position, item.tokens, item.ends_prompt);
}
}  // namespace retro::runtime

namespace retro::parallel {

namespace {

constexpr uint32_t kMagic = 0x4c505352;  // "RSPL" in little-endian bytes
constexpr uint32_t kVersion = 1;

struct Header {
  uint32_t magic = kMagic;
  uint32_t version = kVersion;
  uint64_t payload_bytes = 0;
  uint64_t checksum = 0;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(magic, version, payload_bytes, checksum);
  }
};
constexpr size_t kHeaderBytes = 24;

template <class Archive>
void serialize_plan(Archive& ar, StepPlan& plan) {
  ar(plan.step, plan.release, plan.items, plan.shutdown);
}

uint64_t fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

std::string StepPlan::describe() const {
  int64_t decodes = 0, prefills = 0, prefill_tokens = 0;
  for (const runtime::WorkItem& item : items) {
    if (item.kind == runtime::WorkKind::kDecode) {
      ++decodes;
    } else {
      ++prefills;
      prefill_tokens += static_cast<int64_t>(item.tokens.size());
    }
  }
  std::string s = fmt::format("step {}:", step);
  if (!release.empty()) s += fmt::format(" release {}", release);
  s += fmt::format(" {} decode, {} prefill ({} tokens)", decodes, prefills, prefill_tokens);
  if (shutdown) s += ", shutdown";
  return s;
}

std::string encode_step_plan(const StepPlan& plan) {
  std::ostringstream payload;
  {
    cereal::BinaryOutputArchive ar(payload);
    serialize_plan(ar, const_cast<StepPlan&>(plan));
  }
  const std::string body = payload.str();
  Header header;
  header.payload_bytes = body.size();
  header.checksum = fnv1a(body);
  std::ostringstream out;
  {
    cereal::BinaryOutputArchive ar(out);
    ar(header);
  }
  RETRO_ASSERT(out.str().size() == kHeaderBytes);
  return out.str() + body;
}

StepPlan decode_step_plan(std::string_view bytes) {
  RETRO_CHECK_INPUT(bytes.size() >= kHeaderBytes, "step plan of {} bytes is shorter than its {}-byte header",
                    bytes.size(), kHeaderBytes);
  Header header;
  {
    std::istringstream in(std::string(bytes.substr(0, kHeaderBytes)));
    cereal::BinaryInputArchive ar(in);
    ar(header);
  }
  RETRO_CHECK_INPUT(header.magic == kMagic, "not a step plan: magic {:#010x}, expected {:#010x}", header.magic, kMagic);
  RETRO_CHECK_INPUT(header.version == kVersion, "step plan format version {}, this build reads version {}",
                    header.version, kVersion);
  const std::string_view body = bytes.substr(kHeaderBytes);
  RETRO_CHECK_INPUT(header.payload_bytes == body.size(), "step plan header announces {} payload bytes, {} follow",
                    header.payload_bytes, body.size());
  RETRO_CHECK_INPUT(header.checksum == fnv1a(body),
                    "step plan payload checksum {:#018x} does not match the header's {:#018x}", fnv1a(body),
                    header.checksum);
  StepPlan plan;
  std::istringstream in{std::string(body)};
  try {
    cereal::BinaryInputArchive ar(in);
    serialize_plan(ar, plan);
  } catch (const cereal::Exception& e) {
    RETRO_THROW_KIND(ErrorKind::kInvalidInput, "step plan payload of {} bytes is unreadable: {}", body.size(),
                     e.what());
  }
  RETRO_CHECK_INPUT(in.peek() == std::char_traits<char>::eof(), "step plan payload has {} bytes past the plan",
                    body.size() - static_cast<size_t>(in.tellg()));
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const auto kind = static_cast<uint8_t>(plan.items[i].kind);
    RETRO_CHECK_INPUT(kind <= static_cast<uint8_t>(runtime::WorkKind::kDecode), "step plan item {} has work kind {}",
                      i, kind);
  }
  RETRO_CHECK_INPUT(!plan.shutdown || plan.items.empty(), "step plan {} shuts down but carries {} items", plan.step,
                    plan.items.size());
  return plan;
}

void broadcast_step_plan(Communicator& comm, StepPlan& plan, int root) {
  const bool sender = comm.rank() == root;
  std::string bytes = sender ? encode_step_plan(plan) : std::string();
  int64_t size = static_cast<int64_t>(bytes.size());
  comm.broadcast(Tensor(&size, DType::kInt8, {static_cast<int64_t>(sizeof(size))}), root);
  if (!sender) {
    RETRO_CHECK_KIND(size >= static_cast<int64_t>(kHeaderBytes), ErrorKind::kComm,
                     "received a step plan size of {} bytes from rank {}", size, root);
    bytes.resize(static_cast<size_t>(size));
  }
  comm.broadcast(Tensor(bytes.data(), DType::kInt8, {size}), root);
  if (!sender) plan = decode_step_plan(bytes);
}

}  // namespace retro::parallel
