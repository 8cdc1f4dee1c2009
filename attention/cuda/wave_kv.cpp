// WaveLayerKv: one layer's wave-mode KV for a batch of slots on the GPU (wave_kv.h).

#include "attention/cuda/wave_kv.h"

#include <algorithm>

#include "attention/cuda/wave_kv_ops.h"
#include "attention/kmeans.h"
#include "attention/wave_growth.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/cuda/swap.h"
#include "runtime/core/env.h"
#include "runtime/core/error.h"

namespace retro::attention::cuda {

namespace {

Buffer alloc(Allocator& a, size_t bytes, MemoryPurpose purpose) { return a.allocate(std::max<size_t>(bytes, 1), purpose); }

template <typename T>
T* ptr(const Buffer& b) {
  return static_cast<T*>(b.data());
}

// The most K and V bytes an index build stages on the device on their way to the host store.
constexpr size_t kHostStagingBytes = size_t(256) << 20;

bool host_store_write_staged() {
  static const bool staged = !env_is("RETRO_HOST_STORE_WRITE", "kernel");
  return staged;
}

}  // namespace

int64_t wave_growth_stagger(const WaveIndexParams& params, int layer) {
  return std::max<int64_t>(0, std::min<int64_t>(layer, int64_t(params.update_segment_tokens) - params.window_tokens));
}

WaveLayerKvSizes plan_wave_layer_kv(const WaveKvShape& shape, const WaveIndexParams& params,
                                    const WaveBufferParams& buffer, size_t page_bytes, int num_layers) {
  params.validate();
  RETRO_CHECK(shape.max_batch > 0 && shape.num_q_heads > 0 && shape.num_kv_heads > 0 && shape.max_tokens > 0,
              "wave KV: max_batch {}, {} q heads, {} kv heads, max_tokens {}", shape.max_batch, shape.num_q_heads,
              shape.num_kv_heads, shape.max_tokens);
  RETRO_CHECK(shape.num_q_heads % shape.num_kv_heads == 0, "wave KV: {} q heads do not split over {} kv heads",
              shape.num_q_heads, shape.num_kv_heads);
  RETRO_CHECK(shape.head_dim == 64 || shape.head_dim == 128, "wave KV: head_dim {} (built for 64 and 128)",
              shape.head_dim);
  const int elem_bytes = wave_kv_elem_bytes(buffer.kv_dtype);
  RETRO_CHECK(elem_bytes > 0, "wave KV: kv_dtype {} (bf16 or fp8_e4m3)", dtype_name(buffer.kv_dtype));
  const size_t row_bytes = size_t(shape.head_dim) * size_t(elem_bytes);
  RETRO_CHECK(page_bytes > 0 && page_bytes % row_bytes == 0, "wave KV: pages of {} bytes do not hold whole rows of {}",
              page_bytes, row_bytes);
  const int d = shape.head_dim, hk = shape.num_kv_heads, group = shape.num_q_heads / hk;
  const size_t batch = size_t(shape.max_batch), groups = batch * size_t(hk);
  WaveLayerKvSizes z;
  RETRO_CHECK(num_layers > 0, "wave KV: {} layers", num_layers);
  // Room for a due update segment to wait its slack (wave_growth.h) past the largest stagger.
  z.steady_capacity = int64_t(params.sink_tokens) + params.window_tokens + params.update_segment_tokens +
                      wave_growth_stagger(params, num_layers - 1) + kWaveGrowthSlackTokens;
  // Every prefill segment adds at most one cluster over tokens / tokens_per_cluster, and every update
  // segment exactly update_clusters().
  const int64_t min_segment = std::min<int64_t>(params.segment_tokens, params.update_segment_tokens);
  z.cluster_capacity = shape.max_tokens / params.tokens_per_cluster + shape.max_tokens / min_segment + 2;
  z.steady = batch * size_t(z.steady_capacity) * size_t(hk) * size_t(d) * 2;
  z.steady_len = batch * 4;
  const size_t entries = groups * size_t(z.cluster_capacity);
  z.centroids = entries * size_t(d) * 2;
  z.value_sums = entries * size_t(d) * 4;
  z.sizes = entries * 4;
  z.begins = entries * 8;
  z.num_clusters = groups * 4;
  z.uids = groups * 8;
  z.scales = buffer.kv_dtype == DType::kFP8E4M3 ? entries * 4 : 0;
  // Plans for every batch size, workspaces for the largest of them: attend() never allocates.
  const WaveSelectBudgets budgets{params.retrieval_budget, params.estimation_budget, params.min_retrieve_clusters};
  for (int b = 1; b <= shape.max_batch; ++b) {
    const WaveSelectPlan sp = plan_wave_select(WaveSelectShape{b * hk, group, d}, budgets, z.cluster_capacity);
    const WaveRetrievePlan rp = plan_wave_retrieve(b * hk, group, d, sp.retrieve_capacity, buffer.slot_tokens);
    const DecodeAttentionPlan dp = plan_decode_attention(b, shape.num_q_heads, hk, d, z.steady_capacity);
    z.select_ws = std::max(z.select_ws, sp.workspace_bytes);
    z.retrieve_ws = std::max(z.retrieve_ws, rp.workspace_bytes);
    z.steady_ws = std::max(z.steady_ws, dp.workspace_bytes);
    z.retrieve_capacity = sp.retrieve_capacity;
  }
  z.retrieve_ids = groups * size_t(z.retrieve_capacity) * 4;
  z.retrieve_count = groups * 4;
  z.stats = groups * size_t(kWaveSelectStatCount) * 8;
  z.steady_o = batch * size_t(shape.num_q_heads) * size_t(d) * 2;
  z.steady_lse = batch * size_t(shape.num_q_heads) * 4;
  // The host store's page tables: a device pointer per page of every group, K and V.
  const int64_t page_rows = int64_t(page_bytes / row_bytes);
  const int64_t max_pages = std::max<int64_t>(1, (shape.max_tokens + page_rows - 1) / page_rows);
  z.page_tables = 2 * groups * size_t(max_pages) * sizeof(void*);
  // Build: the whole clustered part of a max_tokens prompt, or one update segment.
  const int64_t build_tokens =
      std::max<int64_t>(shape.max_tokens - params.sink_tokens - params.window_tokens, params.update_segment_tokens);
  size_t build_ws = 0;
  for (int64_t n : {build_tokens, int64_t(params.update_segment_tokens)}) {
    const WaveBuildShape bs{hk, n, d, params.tokens_per_cluster, params.segment_tokens, params.kmeans_iterations};
    build_ws = std::max(build_ws, plan_wave_build(bs).workspace_bytes);
  }
  z.build = build_ws + size_t(hk) * size_t(build_tokens) * 4 + size_t(hk) * size_t(d) * 4;
  return z;
}

size_t WaveLayerKvSizes::total() const {
  size_t t = 0;
  for (size_t b : {steady, steady, steady_len, centroids, value_sums, sizes, begins, num_clusters, uids, select_ws,
                   retrieve_ws, steady_ws, retrieve_ids, retrieve_count, stats, steady_o, steady_lse})
    t += std::max<size_t>(b, 1);
  if (scales > 0) t += 2 * scales;
  return t + page_tables + build;
}

namespace {

// The growth buffers of the scratch, in bytes, and its slot count.
struct GrowthScratchSizes {
  int max_slots = 0;
  size_t k = 0, centroids = 0, value_sums = 0, sizes = 0, begins = 0, order = 0, mean = 0, workspace = 0;
  size_t total() const { return 2 * k + centroids + value_sums + sizes + begins + order + mean + workspace; }
};

GrowthScratchSizes growth_scratch_sizes(const WaveKvShape& shape, const WaveIndexParams& params) {
  params.validate();
  GrowthScratchSizes z;
  z.max_slots = std::max(1, std::min(shape.max_batch, kMaxGrowthSlots));
  const int64_t groups = int64_t(z.max_slots) * shape.num_kv_heads, n = params.update_segment_tokens;
  const int d = shape.head_dim;
  const WaveBuildPlan plan = plan_wave_build(WaveBuildShape{int(groups), n, d, params.tokens_per_cluster,
                                                            params.segment_tokens, params.kmeans_iterations});
  const size_t entries = size_t(groups) * size_t(plan.num_clusters);
  z.k = size_t(groups) * size_t(n) * size_t(d) * 2;
  z.centroids = entries * size_t(d) * 2;
  z.value_sums = entries * size_t(d) * 4;
  z.sizes = entries * 4;
  z.begins = entries * 8;
  z.order = size_t(groups) * size_t(n) * 4;
  z.mean = size_t(groups) * size_t(d) * 4;
  z.workspace = plan.workspace_bytes;
  return z;
}

}  // namespace

size_t wave_growth_scratch_bytes(const WaveKvShape& shape, const WaveIndexParams& params) {
  return growth_scratch_sizes(shape, params).total();
}

size_t WaveKvScratch::bytes() const {
  size_t total = 0;
  for (const Buffer* b : {&build_workspace, &build_order, &build_mean, &host_staging, &k, &v, &centroids, &value_sums,
                          &sizes, &begins, &order, &mean, &workspace})
    total += b->size();
  return total;
}

void WaveLayerKv::allocate_growth_scratch() {
  const GrowthScratchSizes z = growth_scratch_sizes(shape_, params_);
  WaveKvScratch& s = *scratch_;
  auto a = [&](size_t bytes) { return alloc(*device_, bytes, MemoryPurpose::kWorkspace); };
  s.k = a(z.k);
  s.v = a(z.k);
  s.centroids = a(z.centroids);
  s.value_sums = a(z.value_sums);
  s.sizes = a(z.sizes);
  s.begins = a(z.begins);
  s.order = a(z.order);
  s.mean = a(z.mean);
  s.workspace = a(z.workspace);
  s.growth_slots = z.max_slots;
}

WaveLayerKv::WaveLayerKv(const WaveKvShape& shape, const WaveIndexParams& params, const WaveBufferParams& buffer,
                         HostPagePool& pool, Allocator& device_allocator, int layer, int num_layers,
                         WaveKvScratch* scratch)
    : shape_(shape), params_(params), buffer_(buffer), device_(&device_allocator), layer_(layer),
      num_layers_(num_layers), scratch_(scratch) {
  if (scratch_ == nullptr) {
    own_scratch_ = std::make_unique<WaveKvScratch>();
    scratch_ = own_scratch_.get();
  }
  RETRO_CHECK(num_layers > 0 && layer >= 0 && layer < num_layers, "wave KV: layer {} of {}", layer, num_layers);
  layout_ = plan_wave_layer_kv(shape, params_, buffer, pool.page_bytes(), num_layers);
  const WaveLayerKvSizes& z = layout_;
  group_size_ = shape.num_q_heads / shape.num_kv_heads;
  const int d = shape.head_dim, hk = shape.num_kv_heads, groups = shape.max_batch * hk;
  steady_capacity_ = z.steady_capacity;
  growth_at_ = int64_t(params_.sink_tokens) + params_.window_tokens + params_.update_segment_tokens +
               wave_growth_stagger(params_, layer);
  cluster_capacity_ = z.cluster_capacity;
  slots_.resize(size_t(shape.max_batch));

  store_ = std::make_unique<HostKvStore>(groups, d, size_t(wave_kv_elem_bytes(buffer.kv_dtype)), shape.max_tokens, pool,
                                         device_allocator);
  k_steady_ = alloc(device_allocator, z.steady, MemoryPurpose::kKvCache);
  v_steady_ = alloc(device_allocator, z.steady, MemoryPurpose::kKvCache);
  steady_len_ = alloc(device_allocator, z.steady_len, MemoryPurpose::kIndex);
  centroids_ = alloc(device_allocator, z.centroids, MemoryPurpose::kIndex);
  value_sums_ = alloc(device_allocator, z.value_sums, MemoryPurpose::kIndex);
  sizes_ = alloc(device_allocator, z.sizes, MemoryPurpose::kIndex);
  begins_ = alloc(device_allocator, z.begins, MemoryPurpose::kIndex);
  num_clusters_ = alloc(device_allocator, z.num_clusters, MemoryPurpose::kIndex);
  uids_ = alloc(device_allocator, z.uids, MemoryPurpose::kIndex);
  if (z.scales > 0) {
    k_scales_ = alloc(device_allocator, z.scales, MemoryPurpose::kIndex);
    v_scales_ = alloc(device_allocator, z.scales, MemoryPurpose::kIndex);
  }
  RETRO_CUDA_CHECK(cudaMemset(steady_len_.data(), 0, steady_len_.size()));
  RETRO_CUDA_CHECK(cudaMemset(num_clusters_.data(), 0, num_clusters_.size()));
  RETRO_CUDA_CHECK(cudaMemset(sizes_.data(), 0, sizes_.size()));

  // Plans for every batch size (the workspaces are sized for the largest, plan_wave_layer_kv).
  const WaveSelectBudgets budgets{params_.retrieval_budget, params_.estimation_budget, params_.min_retrieve_clusters};
  for (int b = 1; b <= shape.max_batch; ++b) {
    select_plans_.push_back(std::make_unique<WaveSelectPlan>(
        plan_wave_select(WaveSelectShape{b * hk, group_size_, d}, budgets, cluster_capacity_)));
    retrieve_plans_.push_back(std::make_unique<WaveRetrievePlan>(
        plan_wave_retrieve(b * hk, group_size_, d, select_plans_.back()->retrieve_capacity, buffer_.slot_tokens)));
    steady_plans_.push_back(std::make_unique<DecodeAttentionPlan>(
        plan_decode_attention(b, shape.num_q_heads, hk, d, steady_capacity_)));
  }
  select_ws_ = alloc(device_allocator, z.select_ws, MemoryPurpose::kWorkspace);
  retrieve_ws_ = alloc(device_allocator, z.retrieve_ws, MemoryPurpose::kWorkspace);
  steady_ws_ = alloc(device_allocator, z.steady_ws, MemoryPurpose::kWorkspace);
  retrieve_ids_ = alloc(device_allocator, z.retrieve_ids, MemoryPurpose::kActivations);
  retrieve_count_ = alloc(device_allocator, z.retrieve_count, MemoryPurpose::kActivations);
  stats_ = alloc(device_allocator, z.stats, MemoryPurpose::kActivations);
  steady_o_ = alloc(device_allocator, z.steady_o, MemoryPurpose::kActivations);
  steady_lse_ = alloc(device_allocator, z.steady_lse, MemoryPurpose::kActivations);
}

WaveLayerKv::~WaveLayerKv() = default;

void WaveLayerKv::set_slot_counts(int slot, cudaStream_t stream) {
  const Slot& s = slots_[size_t(slot)];
  const int hk = shape_.num_kv_heads;
  RETRO_CUDA_CHECK(fill_i32(ptr<int32_t>(steady_len_) + slot, 1, int32_t(s.steady), stream));
  RETRO_CUDA_CHECK(fill_i32(ptr<int32_t>(num_clusters_) + int64_t(slot) * hk, hk, int32_t(s.clusters), stream));
}

void WaveLayerKv::add_segment(int slot, const void* k, const void* v, int64_t n, int64_t stride_token,
                              cudaStream_t stream) {
  Slot& s = slots_[size_t(slot)];
  const int hk = shape_.num_kv_heads, d = shape_.head_dim;
  WaveBuildShape bs{hk, n, d, params_.tokens_per_cluster, params_.segment_tokens, params_.kmeans_iterations};
  const WaveBuildPlan plan = plan_wave_build(bs);
  RETRO_CHECK_KIND(s.clusters + plan.num_clusters <= cluster_capacity_, ErrorKind::kOutOfMemory,
                   "wave KV: slot {} needs {} clusters per head, past the {} its index was sized for", slot,
                   s.clusters + plan.num_clusters, cluster_capacity_);
  // Grown to this build's size (a larger buffer's allocation waits for the device: between steps).
  WaveKvScratch& w = *scratch_;
  auto fit = [&](Buffer& b, size_t bytes) {
    if (b.size() >= bytes) return;
    b.reset();
    b = alloc(*device_, bytes, MemoryPurpose::kWorkspace);
  };
  fit(w.build_workspace, plan.workspace_bytes);
  fit(w.build_order, size_t(hk) * n * 4);
  fit(w.build_mean, size_t(hk) * d * 4);

  const size_t first = size_t(slot) * hk * cluster_capacity_ + size_t(s.clusters);
  WaveBuildInputs in{k, v, d, stride_token};
  WaveBuildOutputs out;
  out.centroids = static_cast<char*>(centroids_.data()) + first * d * 2;
  out.value_sums = ptr<float>(value_sums_) + first * d;
  out.sizes = ptr<int32_t>(sizes_) + first;
  out.cluster_begin = ptr<int64_t>(begins_) + first;
  out.order = ptr<int32_t>(w.build_order);
  out.mean_key = ptr<float>(w.build_mean);
  out.cluster_capacity = cluster_capacity_;
  run_wave_build(in, out, plan, w.build_workspace.data(), stream);
  RETRO_CUDA_CHECK(offset_cluster_begins(out.cluster_begin, hk, cluster_capacity_, plan.num_clusters, s.clustered, stream));
  for (int h = 0; h < hk; ++h) store_->reserve(slot * hk + h, s.clustered + n, stream);
  // The rows reach the host store through a device staging buffer and the copy engines
  // (RowStaging), up to kHostStagingBytes of K and V at a time; RETRO_HOST_STORE_WRITE=kernel has
  // the store kernels write the mapped host pages themselves.
  const size_t elem = k_scales_ ? 1 : 2, group_bytes = size_t(n) * size_t(d) * elem;
  const bool staged = host_store_write_staged();
  const int batch_groups =
      staged ? int(std::clamp<size_t>(kHostStagingBytes / (2 * group_bytes), 1, size_t(hk))) : hk;
  if (staged) fit(w.host_staging, 2 * group_bytes * size_t(batch_groups));
  for (int g0 = 0; g0 < hk; g0 += batch_groups) {
    const int gn = std::min(batch_groups, hk - g0);
    const int64_t entry = int64_t(g0) * cluster_capacity_;
    const char* kg = static_cast<const char*>(k) + size_t(g0) * d * 2;
    const char* vg = static_cast<const char*>(v) + size_t(g0) * d * 2;
    RowStaging staging;
    if (staged) {
      staging.k = w.host_staging.data();
      staging.v = static_cast<char*>(staging.k) + group_bytes * size_t(gn);
    }
    if (k_scales_) {
      // The scale of a cluster needs its rows, known once the build has ordered them.
      RETRO_CUDA_CHECK(store_clustered_rows_fp8(
          kg, vg, d, stride_token, out.order + int64_t(g0) * n, gn, n, d, out.sizes + entry, out.cluster_begin + entry,
          cluster_capacity_, plan.num_clusters, ptr<float>(k_scales_) + first + entry,
          ptr<float>(v_scales_) + first + entry, store_->view(), slot * hk + g0, s.clustered, stream, staging));
    } else {
      RETRO_CUDA_CHECK(store_clustered_rows(kg, vg, d, stride_token, out.order + int64_t(g0) * n, gn, n, d,
                                            store_->view(), slot * hk + g0, s.clustered, stream, staging));
    }
    for (int g = 0; staged && g < gn; ++g)
      store_->upload_rows(slot * hk + g0 + g, s.clustered, n, static_cast<char*>(staging.k) + size_t(g) * group_bytes,
                          static_cast<char*>(staging.v) + size_t(g) * group_bytes, stream);
  }
  s.clustered += n;
  s.clusters += plan.num_clusters;
}

void WaveLayerKv::build(int slot, const void* k, const void* v, int64_t n, int64_t stride_token, cudaStream_t stream) {
  RETRO_CHECK(slot >= 0 && slot < shape_.max_batch, "wave KV: slot {} of {}", slot, shape_.max_batch);
  Slot& s = slots_[size_t(slot)];
  RETRO_CHECK(s.clustered == 0 && s.steady == 0, "wave KV: slot {} already holds {} tokens (release it first)", slot,
              s.clustered + s.steady);
  RETRO_CHECK(n >= 0 && n <= shape_.max_tokens, "wave KV: a prompt of {} tokens in a slot of {}", n, shape_.max_tokens);
  const int hk = shape_.num_kv_heads, d = shape_.head_dim;
  const int64_t row = int64_t(hk) * d;  // elements of one token's K (all heads) in the steady zone
  ++s.sequence;
  const int64_t uid0 = ((s.sequence * shape_.max_batch + slot) * num_layers_ + layer_) * int64_t(hk);
  RETRO_CHECK(uid0 + hk <= kWaveCacheMaxUid, "wave KV: cache uids exhausted after {} sequences in slot {}", s.sequence,
              slot);
  RETRO_CUDA_CHECK(iota_i64(ptr<int64_t>(uids_) + int64_t(slot) * hk, hk, uid0, stream));

  const int64_t sink = params_.sink_tokens, window = params_.window_tokens;
  const int64_t clustered = n - sink - window;
  char* ks = static_cast<char*>(k_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  char* vs = static_cast<char*>(v_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  auto copy_rows = [&](char* dst, const void* src, int64_t first, int64_t count) {
    if (count <= 0) return;
    RETRO_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(row) * 2, static_cast<const char*>(src) + first * stride_token * 2,
                                       size_t(stride_token) * 2, size_t(row) * 2, size_t(count),
                                       cudaMemcpyDeviceToDevice, stream));
  };
  if (clustered < params_.tokens_per_cluster) {
    // Too short to cluster: the whole prompt is the steady zone (it must fit there).
    RETRO_CHECK(n <= steady_capacity_, "wave KV: internal: a {}-token prompt left unclustered", n);
    copy_rows(ks, k, 0, n);
    copy_rows(vs, v, 0, n);
    s.steady = n;
  } else {
    copy_rows(ks, k, 0, sink);
    copy_rows(vs, v, 0, sink);
    copy_rows(ks + sink * row * 2, k, n - window, window);
    copy_rows(vs + sink * row * 2, v, n - window, window);
    s.steady = sink + window;
    add_segment(slot, static_cast<const char*>(k) + sink * stride_token * 2,
                static_cast<const char*>(v) + sink * stride_token * 2, clustered, stride_token, stream);
  }
  set_slot_counts(slot, stream);
}

bool WaveLayerKv::growth_due(int slot) const {
  RETRO_CHECK(slot >= 0 && slot < shape_.max_batch, "wave KV: slot {} of {}", slot, shape_.max_batch);
  return slots_[size_t(slot)].steady >= growth_at_;
}

int64_t WaveLayerKv::growth_steps_left(int slot) const {
  RETRO_CHECK(growth_due(slot), "wave KV: slot {} has no update segment due", slot);
  return growth_at_ + kWaveGrowthSlackTokens - slots_[size_t(slot)].steady;
}

void WaveLayerKv::grow(int slot, cudaStream_t stream) {
  RETRO_CHECK(growth_due(slot), "wave KV: slot {} has no full update segment ({} of {} steady rows)", slot,
              slots_[size_t(slot)].steady, growth_at_);
  const int64_t row = int64_t(shape_.num_kv_heads) * shape_.head_dim;
  const int64_t sink = params_.sink_tokens, update = params_.update_segment_tokens;
  char* ks = static_cast<char*>(k_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  char* vs = static_cast<char*>(v_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  // The oldest `update` recent tokens become one index segment, then the window moves down.
  add_segment(slot, ks + sink * row * 2, vs + sink * row * 2, update, row, stream);
  shift_steady(slot, stream);
}

void WaveLayerKv::shift_steady(int slot, cudaStream_t stream) {
  Slot& s = slots_[size_t(slot)];
  const int64_t row = int64_t(shape_.num_kv_heads) * shape_.head_dim;
  const int64_t sink = params_.sink_tokens, window = params_.window_tokens, update = params_.update_segment_tokens;
  char* ks = static_cast<char*>(k_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  char* vs = static_cast<char*>(v_steady_.data()) + size_t(slot) * steady_capacity_ * row * 2;
  const int64_t keep = s.steady - sink - update;
  RETRO_CHECK(keep >= 0 && keep <= window + wave_growth_stagger(params_, layer_) + kWaveGrowthSlackTokens,
              "wave KV: internal: {} rows left after an update segment", keep);
  // The kept rows move down by `update` rows; in pieces of at most `update` rows no copy's source
  // overlaps its destination (the window may be longer than an update segment).
  for (int64_t done = 0; done < keep; done += update) {
    const size_t bytes = size_t(std::min(update, keep - done)) * row * 2;
    for (char* base : {ks, vs})
      RETRO_CUDA_CHECK(cudaMemcpyAsync(base + (sink + done) * row * 2, base + (sink + update + done) * row * 2, bytes,
                                       cudaMemcpyDeviceToDevice, stream));
  }
  s.steady = sink + keep;
  set_slot_counts(slot, stream);
}

void WaveLayerKv::grow(std::span<const int> slots, cudaStream_t stream) {
  std::vector<bool> listed(size_t(shape_.max_batch), false);
  for (int slot : slots) {
    RETRO_CHECK(slot >= 0 && slot < shape_.max_batch, "wave KV: slot {} of {}", slot, shape_.max_batch);
    RETRO_CHECK(!listed[size_t(slot)], "wave KV: slot {} listed twice for growth", slot);
    listed[size_t(slot)] = true;
    RETRO_CHECK(growth_due(slot), "wave KV: slot {} has no full update segment ({} of {} steady rows)", slot,
                slots_[size_t(slot)].steady, growth_at_);
  }
  if (slots.size() == 1) {
    grow(slots[0], stream);
    return;
  }
  if (slots.empty()) return;
  if (scratch_->growth_slots == 0) allocate_growth_scratch();
  const size_t per_call = size_t(scratch_->growth_slots);
  for (size_t at = 0; at < slots.size(); at += per_call) {
    const std::span<const int> part = slots.subspan(at, std::min(per_call, slots.size() - at));
    if (part.size() == 1) {
      grow(part[0], stream);
    } else {
      grow_batch(part, stream);
    }
  }
}

void WaveLayerKv::grow_batch(std::span<const int> slots, cudaStream_t stream) {
  const int hk = shape_.num_kv_heads, d = shape_.head_dim, m = int(slots.size());
  const int64_t row = int64_t(hk) * d, sink = params_.sink_tokens, update = params_.update_segment_tokens;
  WaveKvScratch& g = *scratch_;
  RETRO_CHECK(m >= 1 && m <= g.growth_slots && m <= kMaxGrowthSlots, "wave KV: internal: {} slots in one growth",
              m);
  const WaveBuildPlan plan = plan_wave_build(WaveBuildShape{m * hk, update, d, params_.tokens_per_cluster,
                                                            params_.segment_tokens, params_.kmeans_iterations});
  RETRO_CHECK(plan.workspace_bytes <= g.workspace.size(), "wave KV: internal: growth scratch of {} bytes, the "
              "build of {} slots needs {}", g.workspace.size(), m, plan.workspace_bytes);
  GrowthSlots gs;
  gs.count = m;
  for (int j = 0; j < m; ++j) {
    const Slot& s = slots_[size_t(slots[size_t(j)])];
    RETRO_CHECK_KIND(s.clusters + plan.num_clusters <= cluster_capacity_, ErrorKind::kOutOfMemory,
                     "wave KV: slot {} needs {} clusters per head, past the {} its index was sized for",
                     slots[size_t(j)], s.clusters + plan.num_clusters, cluster_capacity_);
    gs.slot[j] = slots[size_t(j)];
    gs.first_cluster[j] = s.clusters;
    gs.row_base[j] = s.clustered;
  }
  // Update segment of slot j, head h -> build group j * hk + h: [update, head_dim] rows.
  RETRO_CUDA_CHECK(gather_growth_rows(k_steady_.data(), v_steady_.data(), steady_capacity_ * row, sink, update, hk, d,
                                      gs, g.k.data(), g.v.data(), stream));
  const WaveBuildInputs in{g.k.data(), g.v.data(), update * d, d};
  WaveBuildOutputs out;
  out.centroids = g.centroids.data();
  out.value_sums = ptr<float>(g.value_sums);
  out.sizes = ptr<int32_t>(g.sizes);
  out.cluster_begin = ptr<int64_t>(g.begins);
  out.order = ptr<int32_t>(g.order);
  out.mean_key = ptr<float>(g.mean);
  out.cluster_capacity = plan.num_clusters;
  run_wave_build(in, out, plan, g.workspace.data(), stream);
  RETRO_CUDA_CHECK(scatter_growth_index(gs, hk, d, plan.num_clusters, out.centroids, out.value_sums, out.sizes,
                                        out.cluster_begin, plan.num_clusters, centroids_.data(), ptr<float>(value_sums_),
                                        ptr<int32_t>(sizes_), ptr<int64_t>(begins_), cluster_capacity_, stream));
  for (int j = 0; j < m; ++j) {
    const int slot = gs.slot[j];
    Slot& s = slots_[size_t(slot)];
    for (int h = 0; h < hk; ++h) store_->reserve(slot * hk + h, s.clustered + update, stream);
    // Slot j's groups in the batch: its gathered rows and their cluster order.
    const char* kj = static_cast<const char*>(g.k.data()) + size_t(j) * hk * update * d * 2;
    const char* vj = static_cast<const char*>(g.v.data()) + size_t(j) * hk * update * d * 2;
    const int32_t* order = out.order + size_t(j) * hk * update;
    if (k_scales_) {
      // Scales from the rows of each cluster, which the scattered index entries now locate.
      const size_t first = size_t(slot) * hk * cluster_capacity_ + size_t(s.clusters);
      RETRO_CUDA_CHECK(store_clustered_rows_fp8(kj, vj, update * d, d, order, hk, update, d, ptr<int32_t>(sizes_) + first,
                                                ptr<int64_t>(begins_) + first, cluster_capacity_, plan.num_clusters,
                                                ptr<float>(k_scales_) + first, ptr<float>(v_scales_) + first,
                                                store_->view(), slot * hk, s.clustered, stream));
    } else {
      RETRO_CUDA_CHECK(store_clustered_rows(kj, vj, update * d, d, order, hk, update, d, store_->view(), slot * hk,
                                            s.clustered, stream));
    }
    s.clustered += update;
    s.clusters += plan.num_clusters;
    shift_steady(slot, stream);
  }
}

void WaveLayerKv::check_append(int batch) const {
  RETRO_CHECK(batch > 0 && batch <= shape_.max_batch, "wave KV: batch {} of {} slots", batch, shape_.max_batch);
  for (int b = 0; b < batch; ++b) {
    const Slot& s = slots_[size_t(b)];
    RETRO_CHECK(s.steady < growth_at_ + kWaveGrowthSlackTokens,
                "wave KV: slot {} needs grow() before its next token (its update segment waited {} steps)", b,
                kWaveGrowthSlackTokens);
    RETRO_CHECK_KIND(s.clustered + s.steady < shape_.max_tokens, ErrorKind::kOutOfMemory,
                     "wave KV: slot {} is full ({} tokens)", b, shape_.max_tokens);
  }
}

void WaveLayerKv::append(const void* k_new, const void* v_new, int batch, cudaStream_t stream) {
  check_append(batch);
  const int64_t row = int64_t(shape_.num_kv_heads) * shape_.head_dim;
  RETRO_CUDA_CHECK(steady_append(k_new, v_new, k_steady_.data(), v_steady_.data(), ptr<int32_t>(steady_len_), batch,
                                 row, steady_capacity_ * row, stream));
  for (int b = 0; b < batch; ++b) ++slots_[size_t(b)].steady;
}

void WaveLayerKv::advance(int batch) {
  check_append(batch);
  for (int b = 0; b < batch; ++b) ++slots_[size_t(b)].steady;
}

void WaveLayerKv::attend(const void* q, void* out, float* lse, int batch, float sm_scale, const WaveCacheView& cache,
                         cudaStream_t stream) {
  RETRO_CHECK(batch > 0 && batch <= shape_.max_batch, "wave KV: batch {} of {} slots", batch, shape_.max_batch);
  const int hk = shape_.num_kv_heads, hq = shape_.num_q_heads, d = shape_.head_dim;
  const int64_t row = int64_t(hk) * d;

  DecodeAttentionParams dp;
  dp.q = q;
  dp.q_stride_batch = int64_t(hq) * d;
  dp.k = k_steady_.data();
  dp.v = v_steady_.data();
  dp.kv_stride_batch = steady_capacity_ * row;
  dp.kv_stride_head = d;
  dp.kv_stride_token = row;
  dp.seq_lens = ptr<int32_t>(steady_len_);
  dp.out = steady_o_.data();
  dp.lse = ptr<float>(steady_lse_);
  dp.batch = batch;
  dp.num_q_heads = hq;
  dp.num_kv_heads = hk;
  dp.head_dim = d;
  dp.sm_scale = sm_scale;
  dp.keep_partials = true;  // merged with the other zones below, one kernel fewer
  const DecodeAttentionPlan& steady_plan = *steady_plans_[size_t(batch - 1)];
  run_decode_attention(dp, steady_plan, steady_ws_.data(), stream);
  const DecodeAttentionPartials steady_parts = decode_attention_partials(dp, steady_plan, steady_ws_.data());

  WaveIndexView index;
  index.num_groups = batch * hk;
  index.group_size = group_size_;
  index.head_dim = d;
  index.cluster_capacity = cluster_capacity_;
  index.num_clusters = ptr<int32_t>(num_clusters_);
  index.centroids = centroids_.data();
  index.value_sums = ptr<float>(value_sums_);
  index.sizes = ptr<int32_t>(sizes_);
  index.cluster_begin = ptr<int64_t>(begins_);
  if (k_scales_) {
    index.k_scales = ptr<float>(k_scales_);
    index.v_scales = ptr<float>(v_scales_);
  }

  const WaveSelectPlan& sp = *select_plans_[size_t(batch - 1)];
  WaveSelection sel;
  sel.retrieve_capacity = sp.retrieve_capacity;
  sel.retrieve_ids = ptr<int32_t>(retrieve_ids_);
  sel.retrieve_count = ptr<int32_t>(retrieve_count_);
  WaveSelectParams sparams;
  sparams.q = q;
  sparams.index = index;
  sparams.sm_scale = sm_scale;
  sparams.out = sel;
  sparams.stats = ptr<int64_t>(stats_);
  sparams.keep_estimate_partials = true;  // merged with the other zones below, one kernel fewer
  run_wave_select(sparams, sp, select_ws_.data(), stream);
  sel.estimate_partials = wave_estimate_partials(sparams, sp, select_ws_.data());
  if (select_event_ != nullptr) RETRO_CUDA_CHECK(cudaEventRecord(select_event_, stream));

  WaveRetrieveParams rp;
  rp.index = index;
  rp.store = store_->view();
  rp.selection = sel;
  rp.cache = cache;
  rp.group_uids = ptr<int64_t>(uids_);
  rp.q = q;
  rp.steady_o = steady_o_.data();
  rp.steady_lse = ptr<float>(steady_lse_);
  rp.steady_o_part = steady_parts.o;
  rp.steady_lse_part = steady_parts.lse;
  rp.steady_splits = steady_parts.num_splits;
  rp.out = out;
  rp.lse = lse;
  rp.sm_scale = sm_scale;
  run_wave_retrieve(rp, *retrieve_plans_[size_t(batch - 1)], retrieve_ws_.data(), stream);
}

void WaveLayerKv::release(int slot, cudaStream_t stream) {
  RETRO_CHECK(slot >= 0 && slot < shape_.max_batch, "wave KV: slot {} of {}", slot, shape_.max_batch);
  RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (int h = 0; h < shape_.num_kv_heads; ++h) store_->release(slot * shape_.num_kv_heads + h, stream);
  Slot& s = slots_[size_t(slot)];
  s.clustered = s.clusters = s.steady = 0;
  set_slot_counts(slot, stream);
}

void WaveLayerKv::swap_slots(int a, int b, cudaStream_t stream) {
  RETRO_CHECK(a >= 0 && a < shape_.max_batch && b >= 0 && b < shape_.max_batch, "wave KV: slots {} and {} of {}", a, b,
              shape_.max_batch);
  if (a == b) return;
  const int hk = shape_.num_kv_heads, d = shape_.head_dim;
  // Bytes of one slot's part of a [slots, ...] array with `per_slot` elements of `elem` bytes.
  auto swap = [&](const Buffer& buffer, size_t per_slot, size_t elem) {
    if (buffer.size() == 0 || per_slot == 0) return;
    char* base = static_cast<char*>(buffer.data());
    const size_t bytes = per_slot * elem;
    RETRO_CUDA_CHECK(retro::cuda::swap_device_bytes(base + size_t(a) * bytes, base + size_t(b) * bytes, bytes, stream));
  };
  const size_t entries = size_t(hk) * size_t(cluster_capacity_);  // meta entries of one slot
  swap(k_steady_, size_t(steady_capacity_) * hk * d, 2);
  swap(v_steady_, size_t(steady_capacity_) * hk * d, 2);
  swap(centroids_, entries * d, 2);
  swap(value_sums_, entries * d, 4);
  swap(sizes_, entries, 4);
  swap(begins_, entries, 8);
  swap(uids_, size_t(hk), 8);
  if (buffer_.kv_dtype == DType::kFP8E4M3) {
    swap(k_scales_, entries, 4);
    swap(v_scales_, entries, 4);
  }
  for (int h = 0; h < hk; ++h) store_->swap_groups(a * hk + h, b * hk + h, stream);
  Slot& sa = slots_[size_t(a)];
  Slot& sb = slots_[size_t(b)];
  std::swap(sa.clustered, sb.clustered);
  std::swap(sa.clusters, sb.clusters);
  std::swap(sa.steady, sb.steady);
  set_slot_counts(a, stream);
  set_slot_counts(b, stream);
}

int64_t WaveLayerKv::length(int slot) const { return clustered_tokens(slot) + steady_tokens(slot); }
int64_t WaveLayerKv::clustered_tokens(int slot) const { return slots_.at(size_t(slot)).clustered; }
int64_t WaveLayerKv::num_clusters(int slot) const { return slots_.at(size_t(slot)).clusters; }
int64_t WaveLayerKv::steady_tokens(int slot) const { return slots_.at(size_t(slot)).steady; }

WaveKvStats WaveLayerKv::stats(int batch, cudaStream_t stream) const {
  const int groups = batch * shape_.num_kv_heads;
  std::vector<int64_t> h(size_t(groups) * kWaveSelectStatCount);
  RETRO_CUDA_CHECK(cudaMemcpyAsync(h.data(), stats_.data(), h.size() * 8, cudaMemcpyDeviceToHost, stream));
  RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
  WaveKvStats s;
  s.groups = groups;
  for (int g = 0; g < groups; ++g) {
    const int64_t* r = h.data() + size_t(g) * kWaveSelectStatCount;
    s.clusters += r[kWaveStatClusters];
    s.non_empty_clusters += r[kWaveStatNonEmptyClusters];
    s.retrieved_clusters += r[kWaveStatRetrievedClusters];
    s.estimated_clusters += r[kWaveStatEstimatedClusters];
    s.retrieved_tokens += r[kWaveStatRetrievedTokens];
    s.estimated_tokens += r[kWaveStatEstimatedTokens];
    s.clustered_tokens += r[kWaveStatClusteredTokens];
  }
  return s;
}

std::vector<float> WaveLayerKv::cluster_scales(int slot, bool value, cudaStream_t stream) const {
  RETRO_CHECK(slot >= 0 && slot < shape_.max_batch, "wave KV: slot {} of {}", slot, shape_.max_batch);
  if (!k_scales_) return {};
  const int hk = shape_.num_kv_heads;
  const int64_t clusters = slots_[size_t(slot)].clusters;
  std::vector<float> out(size_t(hk) * size_t(clusters));
  if (clusters == 0) return out;
  const Buffer& src = value ? v_scales_ : k_scales_;
  // [hk, clusters] out of the slot's [hk, cluster_capacity] entries.
  RETRO_CUDA_CHECK(cudaMemcpy2DAsync(out.data(), size_t(clusters) * 4,
                                     ptr<float>(src) + size_t(slot) * hk * cluster_capacity_,
                                     size_t(cluster_capacity_) * 4, size_t(clusters) * 4, size_t(hk),
                                     cudaMemcpyDeviceToHost, stream));
  RETRO_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

size_t WaveLayerKv::device_bytes() const {
  size_t total = 0;
  for (const Buffer* b : {&k_steady_, &v_steady_, &steady_len_, &centroids_, &value_sums_, &sizes_, &begins_,
                          &num_clusters_, &uids_, &k_scales_, &v_scales_, &retrieve_ids_, &retrieve_count_, &stats_,
                          &steady_o_, &steady_lse_, &select_ws_, &retrieve_ws_, &steady_ws_})
    total += b->size();
  return total + (own_scratch_ ? own_scratch_->bytes() : 0);
}

}  // namespace retro::attention::cuda
