// Planning and argument checks of retrieval-zone attention; the launches are in wave_retrieve.cu.

#include "attention/cuda/wave_retrieve.h"

#include <algorithm>
#include <cmath>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

// The first part of every retrieved cluster sits in shared memory (32 KB of it at most).
constexpr int kMaxRetrieveCapacity = 8191;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

WaveRetrievePlan plan_wave_retrieve(int num_groups, int group_size, int head_dim, int retrieve_capacity,
                                    int slot_tokens, int part_capacity, int num_sms, int ctas_per_sm) {
  RETRO_CHECK(num_groups >= 1 && num_groups <= 65535, "wave retrieve: {} groups (1 to 65535)", num_groups);
  RETRO_CHECK(head_dim == 64 || head_dim == 128, "wave retrieve: head_dim {} (built for 64 and 128)", head_dim);
  RETRO_CHECK_KIND(wave_retrieve_group_supported(group_size), ErrorKind::kUnsupported,
                   "wave retrieve: group size {} not built (1, 2, 4-8 are)", group_size);
  RETRO_CHECK_KIND(retrieve_capacity >= 1 && retrieve_capacity <= kMaxRetrieveCapacity, ErrorKind::kUnsupported,
                   "wave retrieve: retrieve capacity {} (1 to {})", retrieve_capacity, kMaxRetrieveCapacity);
  RETRO_CHECK(slot_tokens >= 1 && slot_tokens <= 4096, "wave retrieve: slot_tokens {} (1 to 4096)", slot_tokens);
  RETRO_CHECK(part_capacity >= 0, "wave retrieve: part capacity {}", part_capacity);
  if (num_sms <= 0) {
    int dev = 0;
    RETRO_CUDA_CHECK(cudaGetDevice(&dev));
    RETRO_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev));
  }
  if (ctas_per_sm <= 0) ctas_per_sm = wave_retrieve_ctas_per_sm(head_dim, group_size, retrieve_capacity);
  WaveRetrievePlan plan;
  plan.num_groups = num_groups;
  plan.group_size = group_size;
  plan.head_dim = head_dim;
  plan.retrieve_capacity = retrieve_capacity;
  plan.slot_tokens = slot_tokens;
  plan.part_capacity = part_capacity > 0 ? part_capacity : 4 * retrieve_capacity;
  // Misses are bound by host bandwidth, which wants many loads in flight: one wave of resident
  // CTAs over the groups, but no more warps per group than clusters it can retrieve.
  const int64_t resident = int64_t(num_sms) * ctas_per_sm;
  const int64_t want = (resident + num_groups - 1) / num_groups;
  const int64_t most = (retrieve_capacity + kRetrieveWarps - 1) / kRetrieveWarps;
  plan.num_splits = static_cast<int>(std::clamp<int64_t>(want, 1, most));
  plan.workspace_bytes = wave_retrieve_workspace(plan, nullptr).bytes;
  return plan;
}

void run_wave_retrieve(const WaveRetrieveParams& p, const WaveRetrievePlan& plan, void* workspace,
                       cudaStream_t stream) {
  RETRO_CHECK(plan.num_splits >= 1 && plan.workspace_bytes > 0, "wave retrieve: run without a plan");
  RETRO_CHECK(workspace != nullptr && reinterpret_cast<uintptr_t>(workspace) % 256 == 0,
              "wave retrieve: plan needs {} bytes of workspace, 256-byte aligned", plan.workspace_bytes);
  const WaveIndexView& ix = p.index;
  RETRO_CHECK(ix.num_groups == plan.num_groups && ix.group_size == plan.group_size && ix.head_dim == plan.head_dim,
              "wave retrieve: index of {} groups x {} heads x d {}, plan for {} x {} x {}", ix.num_groups,
              ix.group_size, ix.head_dim, plan.num_groups, plan.group_size, plan.head_dim);
  RETRO_CHECK(ix.cluster_capacity > 0 && ix.sizes != nullptr && ix.cluster_begin != nullptr,
              "wave retrieve: index without cluster sizes or list offsets");
  const bool fp8 = ix.k_scales != nullptr;
  RETRO_CHECK(fp8 == (ix.v_scales != nullptr), "wave retrieve: index with K scales but no V scales, or back");
  const HostStoreView& hs = p.store;
  RETRO_CHECK(hs.k_pages != nullptr && hs.v_pages != nullptr && hs.max_pages > 0 && hs.page_rows > 0,
              "wave retrieve: host store without pages ({} pages of {} rows)", hs.max_pages, hs.page_rows);
  RETRO_CHECK(hs.elem_bytes == (fp8 ? 1 : 2),
              "wave retrieve: host store of {}-byte elements for an index {} scales (fp8 rows need them, bf16 "
              "rows have none)",
              hs.elem_bytes, fp8 ? "with" : "without");
  const WaveSelection& sel = p.selection;
  RETRO_CHECK(sel.retrieve_capacity == plan.retrieve_capacity, "wave retrieve: selection of {} clusters, plan for {}",
              sel.retrieve_capacity, plan.retrieve_capacity);
  const bool slices = sel.estimate_partials.partials != nullptr;
  RETRO_CHECK(sel.retrieve_ids != nullptr && sel.retrieve_count != nullptr &&
                  (slices ? sel.estimate_partials.count != nullptr && sel.estimate_partials.slices >= 0
                          : sel.estimate_o != nullptr && sel.estimate_lse != nullptr),
              "wave retrieve: selection without ids, counts or estimation state");
  RETRO_CHECK(p.q != nullptr && aligned16(p.q), "wave retrieve: q must be 16-byte aligned device memory");
  RETRO_CHECK(p.steady_splits >= 1, "wave retrieve: {} steady-zone splits", p.steady_splits);
  RETRO_CHECK(p.steady_splits > 1 ? p.steady_o_part != nullptr && p.steady_lse_part != nullptr
                                  : p.steady_o != nullptr && p.steady_lse != nullptr,
              "wave retrieve: steady zone state missing");
  RETRO_CHECK(p.out != nullptr, "wave retrieve: no output");
  RETRO_CHECK(std::isfinite(p.sm_scale) && p.sm_scale > 0.0f, "wave retrieve: sm_scale {}", p.sm_scale);
  const WaveCacheView& c = p.cache;
  if (c.num_sets > 0) {
    RETRO_CHECK(c.ways > 0 && c.k_slots != nullptr && c.v_slots != nullptr && c.tags != nullptr &&
                    c.stamps != nullptr && c.step != nullptr && c.counters != nullptr,
                "wave retrieve: cache not initialised (init_wave_cache)");
    RETRO_CHECK(c.head_dim == plan.head_dim && c.slot_tokens == plan.slot_tokens,
                "wave retrieve: cache of d {} x {} rows per slot, plan for d {} x {}", c.head_dim, c.slot_tokens,
                plan.head_dim, plan.slot_tokens);
    RETRO_CHECK(p.group_uids != nullptr, "wave retrieve: a cache needs group uids");
    const DType rows = fp8 ? DType::kFP8E4M3 : DType::kBF16;
    RETRO_CHECK(c.kv_dtype == rows, "wave retrieve: cache slots of {}, host store rows of {}",
                dtype_name(c.kv_dtype), dtype_name(rows));
  }
  RETRO_CUDA_CHECK(launch_wave_retrieve(p, plan, workspace, stream));
}

}  // namespace retro::attention::cuda
