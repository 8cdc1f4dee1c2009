// Retrieval-zone attention through the GPU cluster cache, and the merge of the three zones, against
// an independent double-precision reference on fresh random inputs: a host store of mapped pinned
// pages scattered in random order (clusters straddle pages), random cluster sizes (empty clusters
// and clusters of more than three parts included), random selections, estimation and steady states
// (empty ones carrying NaN outputs that must be ignored). Outputs and workspace are poisoned with
// NaN before each run. The cache is checked step by step against a model of its policy built from
// its device state: hit / miss / admission counters, LRU victims, one set per tag, and every cached
// part equal to the host rows of its current owner (never a stale part). The same for fp8-e4m3 host
// rows with random per-cluster K and V scales (the reference dequantises them exactly). Label gpu.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/system_info.h"
#include "tests/attention/reference.h"
#include "tests/gpu_test_support.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/wave_cache.h"
#include "attention/cuda/wave_retrieve.h"
#include "attention/cuda/wave_select.h"
#endif

namespace retro::attention {
namespace {

#ifdef RETRO_WITH_CUDA

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- Planning and tags: host only, no device needed ----

TEST(WaveCacheTag, PacksDistinctFieldsAndRefusesWhatDoesNotFit) {
  std::set<uint64_t> tags;
  for (int64_t uid : {int64_t(0), int64_t(1), cuda::kWaveCacheMaxUid - 1})
    for (int64_t c : {0, 1, (1 << cuda::kWaveTagClusterBits) - 1})
      for (int64_t p : {0, 1, (1 << cuda::kWaveTagPartBits) - 1}) {
        const uint64_t t = cuda::wave_cache_tag(uid, c, p);
        EXPECT_NE(t, cuda::kWaveTagEmpty);
        EXPECT_EQ(cuda::wave_cache_tag_uid(t), uid);
        EXPECT_TRUE(tags.insert(t).second) << uid << " " << c << " " << p;
        const int64_t set = cuda::wave_cache_set(t, 7);
        EXPECT_TRUE(set >= 0 && set < 7);
      }
  EXPECT_EQ(cuda::wave_cache_tag(-1, 0, 0), cuda::kWaveTagEmpty);
  EXPECT_EQ(cuda::wave_cache_tag(cuda::kWaveCacheMaxUid, 0, 0), cuda::kWaveTagEmpty);
  EXPECT_EQ(cuda::wave_cache_tag(0, int64_t(1) << cuda::kWaveTagClusterBits, 0), cuda::kWaveTagEmpty);
  EXPECT_EQ(cuda::wave_cache_tag(0, 0, int64_t(1) << cuda::kWaveTagPartBits), cuda::kWaveTagEmpty);
  EXPECT_EQ(cuda::wave_cache_tag(0, -1, 0), cuda::kWaveTagEmpty);
}

TEST(WaveCachePlan, SizesThePoolInWholeSets) {
  cuda::WaveBufferParams p;  // 32 rows a slot, 16 ways, 5% of the offloaded KV
  const size_t slot_bytes = 2 * 32 * 128 * 2;
  const size_t kv = size_t(10) << 30;
  cuda::WaveCacheLayout L = cuda::plan_wave_cache(p, 128, kv);
  EXPECT_EQ(L.ways, 16);
  EXPECT_EQ(L.slot_tokens, 32);
  EXPECT_EQ(L.num_slots(), int64_t(0.05 * double(kv) / double(slot_bytes)) / 16 * 16);
  EXPECT_GE(L.bytes, size_t(L.num_slots()) * (slot_bytes + 16));
  p.num_slots = 100;
  EXPECT_EQ(cuda::plan_wave_cache(p, 64).num_sets, 6);
  p.num_slots = 0;
  p.cache_bytes = 40 * 2 * 32 * 64 * 2;
  EXPECT_EQ(cuda::plan_wave_cache(p, 64).num_slots(), 32);
  p.num_slots = 3;  // not one set of 16 ways
  EXPECT_THROW(cuda::plan_wave_cache(p, 64), Error);
  p.num_slots = 64;
  p.ways = 0;
  EXPECT_THROW(cuda::plan_wave_cache(p, 64), Error);
  p.ways = 16;
  EXPECT_THROW(cuda::plan_wave_cache(p, 96), Error);
}

TEST(WaveCachePlan, Fp8SlotsAreHalfTheBytes) {
  cuda::WaveBufferParams p;
  p.cache_bytes = size_t(64) * 2 * 32 * 128 * 2;  // 64 bf16 slots of 32 rows at d 128
  const cuda::WaveCacheLayout bf16_layout = cuda::plan_wave_cache(p, 128);
  p.kv_dtype = DType::kFP8E4M3;
  EXPECT_EQ(cuda::wave_cache_slot_bytes(p, 128), size_t(2) * 32 * 128);
  const cuda::WaveCacheLayout fp8_layout = cuda::plan_wave_cache(p, 128);
  EXPECT_EQ(bf16_layout.num_slots(), 64);
  EXPECT_EQ(fp8_layout.num_slots(), 128);
  EXPECT_EQ(fp8_layout.kv_dtype, DType::kFP8E4M3);
  EXPECT_EQ(bf16_layout.kv_dtype, DType::kBF16);
  EXPECT_GE(fp8_layout.bytes, size_t(128) * (2 * 32 * 128 + 16));
  p.kv_dtype = DType::kFP16;
  EXPECT_THROW(cuda::plan_wave_cache(p, 128), Error);
}

TEST(WaveRetrievePlan, SplitsGroupsOverOneWaveAndRejectsUnsupportedShapes) {
  // 132 SMs x 4 CTAs over 8 groups wants 66 CTAs a group; 150 clusters need at most 38 of 4 warps.
  cuda::WaveRetrievePlan p = cuda::plan_wave_retrieve(8, 4, 128, 150, 32, 0, 132, 4);
  EXPECT_EQ(p.num_splits, 38);
  EXPECT_EQ(p.part_capacity, 600);
  EXPECT_GE(p.workspace_bytes, size_t(8) * 38 * 4 * 129 * 4 + size_t(8) * 600 * 4 + size_t(8) * 150 * 16);
  EXPECT_EQ(cuda::plan_wave_retrieve(256, 4, 128, 150, 32, 0, 132, 4).num_splits, 3);
  EXPECT_EQ(cuda::plan_wave_retrieve(4096, 8, 64, 150, 32, 77, 132, 4).num_splits, 1);
  EXPECT_EQ(cuda::plan_wave_retrieve(4096, 8, 64, 150, 32, 77, 132, 4).part_capacity, 77);
  EXPECT_THROW(cuda::plan_wave_retrieve(8, 4, 96, 150, 32, 0, 132, 4), Error);
  EXPECT_THROW(cuda::plan_wave_retrieve(8, 3, 128, 150, 32, 0, 132, 4), Error);
  EXPECT_THROW(cuda::plan_wave_retrieve(8, 4, 128, 0, 32, 0, 132, 4), Error);
  EXPECT_THROW(cuda::plan_wave_retrieve(8, 4, 128, 9000, 32, 0, 132, 4), Error);
  EXPECT_THROW(cuda::plan_wave_retrieve(8, 4, 128, 150, 0, 0, 132, 4), Error);
  EXPECT_THROW(cuda::plan_wave_retrieve(0, 4, 128, 150, 32, 0, 132, 4), Error);
}

// ---- Device helpers ----

void check_cuda(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + " (line " + std::to_string(line) + "): " + cudaGetErrorString(e));
}
#define CUDA_OK(expr) check_cuda((expr), #expr, __LINE__)

class DeviceMem {
 public:
  DeviceMem() = default;
  explicit DeviceMem(size_t bytes) : bytes_(std::max<size_t>(bytes, 16)) { CUDA_OK(cudaMalloc(&ptr_, bytes_)); }
  DeviceMem(DeviceMem&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceMem& operator=(DeviceMem&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = o.bytes_;
    }
    return *this;
  }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  ~DeviceMem() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void poison() { CUDA_OK(cudaMemset(ptr_, 0xFF, bytes_)); }  // NaN in bf16 and fp32

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
void upload(DeviceMem& dst, const std::vector<T>& v) {
  if (!dst.get()) dst = DeviceMem(v.size() * sizeof(T));
  CUDA_OK(cudaMemcpy(dst.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
std::vector<T> download(const void* src, size_t n) {
  std::vector<T> v(n);
  CUDA_OK(cudaMemcpy(v.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

// Page-locked host memory mapped into the device address space.
class PinnedMem {
 public:
  explicit PinnedMem(size_t bytes) {
    CUDA_OK(cudaHostAlloc(&host_, bytes, cudaHostAllocMapped));
    CUDA_OK(cudaHostGetDevicePointer(&dev_, host_, 0));
  }
  PinnedMem(const PinnedMem&) = delete;
  PinnedMem& operator=(const PinnedMem&) = delete;
  ~PinnedMem() { cudaFreeHost(host_); }
  char* host() const { return static_cast<char*>(host_); }
  char* dev() const { return static_cast<char*>(dev_); }

 private:
  void* host_ = nullptr;
  void* dev_ = nullptr;
};

float bf(bf16 x) { return bf16_to_float(x); }

// ---- The world of one layer: meta index, host store, selection, zone states ----

struct Shape {
  int batch = 2, num_kv_heads = 2, group_size = 4, head_dim = 128;
  int slot_tokens = 32;
  int clusters = 40;  // cluster_capacity of every group
  int retrieve_capacity = 24;
  int64_t page_rows = 100;  // not a multiple of slot_tokens: parts straddle pages
  int part_capacity = 0;    // 0: the plan's default
  int num_sms = 0, ctas_per_sm = 0;  // 0: from the device
  bool fp8 = false;  // host rows and cache slots in fp8-e4m3 with per-cluster scales
  int groups() const { return batch * num_kv_heads; }
  int elem_bytes() const { return fp8 ? 1 : 2; }
  size_t row_bytes() const { return size_t(head_dim) * elem_bytes(); }
  int num_q_heads() const { return num_kv_heads * group_size; }
  int max_cluster_rows() const { return 3 * slot_tokens + slot_tokens / 2 + 1; }  // four parts
};

// One part retrieval walks: part `part` of cluster `cluster` of group g, index j in the group's list.
struct PartRef {
  int g, cluster, part, rows, j;
};

class World {
 public:
  static constexpr int kGap = 2;  // unused rows allowed between two clusters' lists

  World(const Shape& s, uint64_t seed) : s_(s), rng_(seed) {
    const int G = s.groups(), d = s.head_dim;
    const int64_t max_rows = int64_t(s.clusters) * (s.max_cluster_rows() + kGap) + kGap;
    max_pages_ = static_cast<int>((max_rows + s.page_rows - 1) / s.page_rows);
    page_bytes_ = s.page_rows * int64_t(s.row_bytes());
    const size_t pages = size_t(G) * max_pages_;
    k_pool_ = std::make_unique<PinnedMem>(pages * page_bytes_);
    v_pool_ = std::make_unique<PinnedMem>(pages * page_bytes_);
    // Pages of a group sit at random positions of the pools: consecutive pages are adjacent in
    // memory only by chance, so a row address computed across a page boundary reads a wrong row.
    std::vector<int64_t> pos(pages);
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), rng_);
    page_pos_.assign(pages, -1);
    std::vector<const void*> kpt(pages, nullptr), vpt(pages, nullptr);
    for (size_t i = 0; i < pages; ++i) {
      page_pos_[i] = pos[i];
      kpt[i] = k_pool_->dev() + pos[i] * page_bytes_;
      vpt[i] = v_pool_->dev() + pos[i] * page_bytes_;
    }
    upload(d_k_pages_, kpt);
    upload(d_v_pages_, vpt);
    sizes_.assign(size_t(G) * s.clusters, 0);
    begin_.assign(size_t(G) * s.clusters, 0);
    k_scale_.assign(size_t(G) * s.clusters, 1.0f);
    v_scale_.assign(size_t(G) * s.clusters, 1.0f);
    ids_.assign(size_t(G) * s.retrieve_capacity, -1);
    count_.assign(G, 0);
    uids_.assign(G, -1);
    rows_.assign(G, 0);
    q_.assign(size_t(G) * s.group_size * d, bf16{0});
    est_o_.assign(size_t(G) * s.group_size * d, 0.0f);
    est_lse_.assign(size_t(G) * s.group_size, 0.0f);
    steady_o_.assign(size_t(G) * s.group_size * d, bf16{0});
    steady_lse_.assign(size_t(G) * s.group_size, 0.0f);
    for (int g = 0; g < G; ++g) new_sequence(g);
    plan = cuda::plan_wave_retrieve(G, s.group_size, d, s.retrieve_capacity, s.slot_tokens, s.part_capacity,
                                    s.num_sms, s.ctas_per_sm);
    workspace = DeviceMem(plan.workspace_bytes);
    d_out_ = DeviceMem(q_.size() * sizeof(bf16));
    d_lse_ = DeviceMem(est_lse_.size() * sizeof(float));
  }

  const Shape& shape() const { return s_; }
  std::mt19937_64& rng() { return rng_; }
  int size(int g, int c) const { return sizes_[size_t(g) * s_.clusters + c]; }
  int64_t begin(int g, int c) const { return begin_[size_t(g) * s_.clusters + c]; }
  int64_t uid(int g) const { return uids_[g]; }
  const std::vector<int64_t>& uids() const { return uids_; }
  void set_uid(int g, int64_t uid) { uids_[g] = uid; }

  // Host bytes of a row: head_dim bf16, or head_dim e4m3 codes.
  char* k_row(int g, int64_t row) { return row_ptr(k_pool_.get(), g, row); }
  char* v_row(int g, int64_t row) { return row_ptr(v_pool_.get(), g, row); }
  const char* k_row(int g, int64_t row) const { return row_ptr(k_pool_.get(), g, row); }
  const char* v_row(int g, int64_t row) const { return row_ptr(v_pool_.get(), g, row); }
  // Element i of a row of cluster c as attention must see it: the bf16 value, or the e4m3 value
  // times the cluster's scale (exact in double).
  double k_at(int g, int c, int64_t row, int i) const { return element(k_row(g, row), i, k_scale_[index(g, c)]); }
  double v_at(int g, int c, int64_t row, int i) const { return element(v_row(g, row), i, v_scale_[index(g, c)]); }

  // Group g holds a new sequence: fresh cluster sizes, list layout and rows (give it a fresh uid).
  void new_sequence(int g) {
    const int T = s_.slot_tokens;
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, std::max(lo, hi))(rng_); };
    for (int c = 0; c < s_.clusters; ++c) {
      int n = 0;
      switch (pick(0, 9)) {
        case 0: n = 0; break;                                  // empty
        case 1: case 2: case 3: case 4: n = pick(1, T / 2); break;
        case 5: case 6: n = pick(T / 2 + 1, T); break;         // one whole part at most
        case 7: case 8: n = pick(T + 1, 3 * T); break;         // two or three parts
        default: n = pick(3 * T + 1, s_.max_cluster_rows());   // four parts
      }
      sizes_[size_t(g) * s_.clusters + c] = n;
      if (s_.fp8) {
        // Scales around 1/64 (the rows hold e4m3 codes of values around 64), different per cluster
        // and for K and V.
        std::uniform_real_distribution<float> e(-1.5f, 1.5f);
        k_scale_[index(g, c)] = std::exp2(e(rng_)) / 64.0f;
        v_scale_[index(g, c)] = std::exp2(e(rng_)) / 64.0f;
      }
    }
    // Cluster-contiguous lists in a random cluster order, with small gaps between them.
    std::vector<int> order(s_.clusters);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);
    int64_t at = pick(0, kGap);
    for (int c : order) {
      begin_[size_t(g) * s_.clusters + c] = at;
      at += size(g, c) + pick(0, kGap);
    }
    rows_[g] = at;
    rewrite_rows(g);
  }

  // New K/V values for every row of group g, layout kept.
  void rewrite_rows(int g) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t r = 0; r < rows_[g]; ++r) {
      if (s_.fp8) {
        auto* k = reinterpret_cast<fp8_e4m3*>(k_row(g, r));
        auto* v = reinterpret_cast<fp8_e4m3*>(v_row(g, r));
        for (int i = 0; i < s_.head_dim; ++i) {
          k[i] = float_to_fp8_e4m3(64.0f * normal(rng_));
          v[i] = float_to_fp8_e4m3(64.0f * normal(rng_));
        }
        continue;
      }
      auto* k = reinterpret_cast<bf16*>(k_row(g, r));
      auto* v = reinterpret_cast<bf16*>(v_row(g, r));
      for (int i = 0; i < s_.head_dim; ++i) {
        k[i] = float_to_bf16(normal(rng_));
        v[i] = float_to_bf16(normal(rng_));
      }
    }
  }

  void select(int g, const std::vector<int32_t>& ids) {
    ASSERT_LE(int(ids.size()), s_.retrieve_capacity);
    count_[g] = static_cast<int32_t>(ids.size());
    std::fill_n(ids_.begin() + size_t(g) * s_.retrieve_capacity, s_.retrieve_capacity, -1);
    std::copy(ids.begin(), ids.end(), ids_.begin() + size_t(g) * s_.retrieve_capacity);
  }
  // `count` distinct clusters among the first `among`.
  void select_random(int g, int count, int among) {
    std::vector<int32_t> ids(among);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    ids.resize(std::min(count, among));
    select(g, ids);
  }
  std::vector<int32_t> selection(int g) const {
    auto it = ids_.begin() + size_t(g) * s_.retrieve_capacity;
    return std::vector<int32_t>(it, it + count_[g]);
  }

  // Queries (per group a scale of 1, 4 or 40: the last gives logits past fp32's exp range), and the
  // estimation and steady states; an empty state (lse -inf) carries NaN in o, which must be ignored.
  void random_zones() {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    const int d = s_.head_dim, G = s_.group_size;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int g = 0; g < s_.groups(); ++g) {
      const float scale = std::array<float, 3>{1.0f, 4.0f, 40.0f}[std::uniform_int_distribution<int>(0, 2)(rng_)];
      for (int r = 0; r < G; ++r) {
        const size_t row = size_t(g) * G + r;
        for (int i = 0; i < d; ++i) q_[row * d + i] = float_to_bf16(normal(rng_) * scale);
        // Head 0 of group 1 has both zones empty: with nothing retrieved its output is 0, lse -inf.
        const bool est_empty = uni(rng_) < 0.25f || (g == 1 && r == 0);
        const bool steady_empty = uni(rng_) < 0.25f || (g == 1 && r == 0);
        est_lse_[row] = est_empty ? -std::numeric_limits<float>::infinity() : 2.0f + 7.0f * uni(rng_);
        steady_lse_[row] = steady_empty ? -std::numeric_limits<float>::infinity() : 2.0f + 7.0f * uni(rng_);
        for (int i = 0; i < d; ++i) {
          est_o_[row * d + i] = est_empty ? nan : 0.5f * normal(rng_);
          steady_o_[row * d + i] = steady_empty ? float_to_bf16(nan) : float_to_bf16(0.5f * normal(rng_));
        }
      }
    }
    if (steady_splits > 1) split_steady_zone();
    if (estimate_slices > 0) split_estimate_zone();
  }

  // The estimation zone as the partial states of estimate_slices slices instead (as wave select
  // with keep_estimate_partials leaves them: natural-log reference m, mass and numerator per row;
  // slices past a group's estimated count hold NaN and must not be read). est_o_ / est_lse_ become
  // their merge, in double precision, for the reference.
  void split_estimate_zone() {
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int d = s_.head_dim, G = s_.group_size, S = estimate_slices;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    est_part_.assign(size_t(s_.groups()) * S * G * (d + 2), nan);
    est_count_.assign(size_t(s_.groups()), 0);
    for (int g = 0; g < s_.groups(); ++g) {
      // Group 1 estimates nothing; the others from part of one slice up to all of them.
      const int count = g == 1 ? 0 : std::uniform_int_distribution<int>(1, S * cuda::kWaveEstimateTile)(rng_);
      est_count_[size_t(g)] = count;
      const int used = std::min((count + cuda::kWaveEstimateTile - 1) / cuda::kWaveEstimateTile, S);
      for (int r = 0; r < G; ++r) {
        const size_t row = size_t(g) * G + r;
        double m_max = -kInf;
        for (int sl = 0; sl < used; ++sl) {
          float* rec = &est_part_[((size_t(g) * S + sl) * G + r) * (d + 2)];
          rec[0] = 2.0f + 7.0f * uni(rng_);
          rec[1] = 0.5f + 4.0f * uni(rng_);
          for (int i = 0; i < d; ++i) rec[2 + i] = rec[1] * 0.5f * normal(rng_);
          m_max = std::max(m_max, double(rec[0]));
        }
        if (used == 0) {
          est_lse_[row] = -std::numeric_limits<float>::infinity();
          continue;
        }
        double mass = 0.0;
        std::vector<double> num(size_t(d), 0.0);
        for (int sl = 0; sl < used; ++sl) {
          const float* rec = &est_part_[((size_t(g) * S + sl) * G + r) * (d + 2)];
          const double w = std::exp(double(rec[0]) - m_max);
          mass += w * rec[1];
          for (int i = 0; i < d; ++i) num[size_t(i)] += w * rec[2 + i];
        }
        for (int i = 0; i < d; ++i) est_o_[row * d + i] = float(num[size_t(i)] / mass);
        est_lse_[row] = float(m_max + std::log(mass));
      }
    }
  }

  // The steady zone as steady_splits split states instead (as decode attention with keep_partials
  // leaves them: normalised fp32 outputs, base-2 LSEs, -inf for a split that saw nothing); the
  // reference merges them in double precision.
  void split_steady_zone() {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    const int d = s_.head_dim, S = steady_splits;
    const size_t rows = steady_lse_.size();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    steady_o_part_.assign(rows * S * d, 0.0f);
    steady_lse_part_.assign(rows * S, 0.0f);
    steady_ref_o_.assign(rows * d, 0.0);
    for (size_t row = 0; row < rows; ++row) {
      const bool empty = !std::isfinite(steady_lse_[row]);  // random_zones' choice, kept
      double m = -kInf, sum = 0.0;
      for (int s = 0; s < S; ++s) {
        const bool split_empty = empty || uni(rng_) < 0.3f;
        const float lse2 = split_empty ? -std::numeric_limits<float>::infinity() : 3.0f + 10.0f * uni(rng_);
        steady_lse_part_[row * S + s] = lse2;
        for (int i = 0; i < d; ++i) steady_o_part_[(row * S + s) * d + i] = split_empty ? nan : 0.5f * normal(rng_);
        m = std::max(m, double(lse2));
      }
      if (m == -kInf) {
        steady_lse_[row] = -std::numeric_limits<float>::infinity();
        continue;
      }
      for (int s = 0; s < S; ++s) {
        const double x = steady_lse_part_[row * S + s];
        if (x == -kInf) continue;
        const double w = std::exp2(x - m);
        sum += w;
        for (int i = 0; i < d; ++i) steady_ref_o_[row * d + i] += w * steady_o_part_[(row * S + s) * d + i];
      }
      for (int i = 0; i < d; ++i) steady_ref_o_[row * d + i] /= sum;
      steady_lse_[row] = float((m + std::log2(sum)) * std::log(2.0));  // natural log, for the reference
    }
  }

  cuda::WaveRetrieveParams params(const cuda::WaveCacheView& cache) const {
    cuda::WaveRetrieveParams p;
    p.index.num_groups = s_.groups();
    p.index.group_size = s_.group_size;
    p.index.head_dim = s_.head_dim;
    p.index.cluster_capacity = s_.clusters;
    p.index.num_clusters = d_num_clusters_.as<int32_t>();
    p.index.sizes = d_sizes_.as<int32_t>();
    p.index.cluster_begin = d_begin_.as<int64_t>();
    if (s_.fp8) {
      p.index.k_scales = d_k_scale_.as<float>();
      p.index.v_scales = d_v_scale_.as<float>();
    }
    p.store.k_pages = d_k_pages_.as<const void*>();
    p.store.v_pages = d_v_pages_.as<const void*>();
    p.store.max_pages = max_pages_;
    p.store.page_rows = s_.page_rows;
    p.store.elem_bytes = s_.elem_bytes();
    p.selection.retrieve_capacity = s_.retrieve_capacity;
    p.selection.retrieve_ids = d_ids_.as<int32_t>();
    p.selection.retrieve_count = d_count_.as<int32_t>();
    if (estimate_slices > 0) {
      p.selection.estimate_partials = {d_est_part_.as<float>(), d_est_count_.as<int32_t>(), estimate_slices};
    } else {
      p.selection.estimate_o = d_est_o_.as<float>();
      p.selection.estimate_lse = d_est_lse_.as<float>();
    }
    p.cache = cache;
    p.group_uids = d_uids_.as<int64_t>();
    p.q = d_q_.get();
    p.steady_o = d_steady_o_.get();
    p.steady_lse = d_steady_lse_.as<float>();
    if (steady_splits > 1) {
      p.steady_o_part = d_steady_o_part_.as<float>();
      p.steady_lse_part = d_steady_lse_part_.as<float>();
      p.steady_splits = steady_splits;
    }
    p.out = d_out_.get();
    p.lse = d_lse_.as<float>();
    p.sm_scale = 1.0f / std::sqrt(float(s_.head_dim));
    return p;
  }

  // Host state to the device (host store rows need nothing: the kernels read them in place).
  void upload_inputs() {
    upload(d_num_clusters_, std::vector<int32_t>(s_.groups(), s_.clusters));
    upload(d_sizes_, sizes_);
    upload(d_begin_, begin_);
    upload(d_k_scale_, k_scale_);
    upload(d_v_scale_, v_scale_);
    upload(d_ids_, ids_);
    upload(d_count_, count_);
    upload(d_uids_, uids_);
    upload(d_q_, q_);
    upload(d_est_o_, est_o_);
    upload(d_est_lse_, est_lse_);
    upload(d_steady_o_, steady_o_);
    upload(d_steady_lse_, steady_lse_);
    if (estimate_slices > 0) {
      upload(d_est_part_, est_part_);
      upload(d_est_count_, est_count_);
    }
    if (steady_splits > 1) {
      upload(d_steady_o_part_, steady_o_part_);
      upload(d_steady_lse_part_, steady_lse_part_);
    }
  }
  void poison_outputs() {
    d_out_.poison();
    d_lse_.poison();
    workspace.poison();
    CUDA_OK(cudaDeviceSynchronize());  // a run on another stream must not overtake the poison
  }
  void download_outputs() {
    out = download<bf16>(d_out_.get(), q_.size());
    lse = download<float>(d_lse_.get(), est_lse_.size());
  }
  void run(const cuda::WaveCacheView& cache, cudaStream_t stream = nullptr) {
    upload_inputs();
    poison_outputs();
    cuda::run_wave_retrieve(params(cache), plan, workspace.get(), stream);
    CUDA_OK(cudaStreamSynchronize(stream));
    download_outputs();
  }

  // The parts retrieval walks, in list order per group.
  std::vector<PartRef> parts() const {
    std::vector<PartRef> out_parts;
    const int T = s_.slot_tokens;
    for (int g = 0; g < s_.groups(); ++g) {
      int j = 0;
      for (int32_t c : selection(g)) {
        const int n = size(g, c);
        for (int p = 0; p * T < n; ++p) out_parts.push_back({g, c, p, std::min(T, n - p * T), j++});
      }
    }
    return out_parts;
  }

  // Final output and LSE of every query head against the double-precision merge of the zones.
  void expect_matches_reference(const std::string& what) const {
    SCOPED_TRACE(what);
    const int d = s_.head_dim, G = s_.group_size;
    const double scale = 1.0 / std::sqrt(double(d));
    for (int g = 0; g < s_.groups(); ++g) {
      std::vector<int64_t> rows;
      std::vector<int> row_cluster;
      for (int32_t c : selection(g))
        for (int t = 0; t < size(g, c); ++t) {
          rows.push_back(begin(g, c) + t);
          row_cluster.push_back(c);
        }
      for (int r = 0; r < G; ++r) {
        const size_t row = size_t(g) * G + r;
        // Retrieval zone.
        std::vector<double> o_ret(d, 0.0), logit(rows.size());
        double lse_ret = -kInf, mx = -kInf;
        for (size_t j = 0; j < rows.size(); ++j) {
          double dot = 0.0;
          for (int i = 0; i < d; ++i) dot += double(bf(q_[row * d + i])) * k_at(g, row_cluster[j], rows[j], i);
          logit[j] = dot * scale;
          mx = std::max(mx, logit[j]);
        }
        if (!rows.empty()) {
          double sum = 0.0;
          for (double x : logit) sum += std::exp(x - mx);
          for (size_t j = 0; j < rows.size(); ++j) {
            const double w = std::exp(logit[j] - mx) / sum;
            for (int i = 0; i < d; ++i) o_ret[i] += w * v_at(g, row_cluster[j], rows[j], i);
          }
          lse_ret = mx + std::log(sum);
        }
        // Merge with the estimation and steady zones, skipping empty ones.
        struct Zone {
          double lse;
          std::vector<double> o;
        };
        std::vector<Zone> zones;
        if (lse_ret > -kInf) zones.push_back({lse_ret, o_ret});
        if (std::isfinite(est_lse_[row])) {
          std::vector<double> o(d);
          for (int i = 0; i < d; ++i) o[i] = est_o_[row * d + i];
          zones.push_back({est_lse_[row], o});
        }
        if (std::isfinite(steady_lse_[row])) {
          std::vector<double> o(d);
          for (int i = 0; i < d; ++i) o[i] = steady_splits > 1 ? steady_ref_o_[row * d + i] : bf(steady_o_[row * d + i]);
          zones.push_back({steady_lse_[row], o});
        }
        double m = -kInf;
        for (const Zone& z : zones) m = std::max(m, z.lse);
        double sum = 0.0;
        std::vector<double> ref(d, 0.0);
        for (const Zone& z : zones) sum += std::exp(z.lse - m);
        for (const Zone& z : zones)
          for (int i = 0; i < d; ++i) ref[i] += std::exp(z.lse - m) / sum * z.o[i];
        const double ref_lse = zones.empty() ? -kInf : m + std::log(sum);

        double ref_max = 0.0;
        for (double x : ref) ref_max = std::max(ref_max, std::fabs(x));
        int bad = 0;
        for (int i = 0; i < d; ++i) {
          const float got = bf(out[row * d + i]);
          ASSERT_FALSE(std::isnan(got)) << "group " << g << " head " << r << " element " << i << " not written";
          if (std::fabs(got - ref[i]) > 8e-3 * std::fabs(ref[i]) + 2e-3 * ref_max + 1e-6) ++bad;
        }
        EXPECT_EQ(bad, 0) << "group " << g << " head " << r << ": " << bad << " elements off (" << rows.size()
                          << " retrieved rows, " << zones.size() << " zones)";
        if (zones.empty()) {
          EXPECT_TRUE(std::isinf(lse[row]) && lse[row] < 0) << "group " << g << " head " << r;
          EXPECT_EQ(ref_max, 0.0);
        } else {
          EXPECT_NEAR(lse[row], ref_lse, 1e-4 * std::fabs(ref_lse) + 1e-4)
              << "group " << g << " head " << r << " (" << rows.size() << " retrieved rows)";
        }
      }
    }
  }

  cuda::WaveRetrievePlan plan;
  DeviceMem workspace;
  std::vector<bf16> out;
  std::vector<float> lse;
  int steady_splits = 1;  // > 1: random_zones gives the steady zone as split states
  int estimate_slices = 0;  // > 0: random_zones gives the estimation zone as that many slices' states

 private:
  char* row_ptr(const PinnedMem* pool, int g, int64_t row) const {
    const int64_t page = row / s_.page_rows;
    const int64_t pos = page_pos_[size_t(g) * max_pages_ + page];
    return pool->host() + pos * page_bytes_ + (row % s_.page_rows) * int64_t(s_.row_bytes());
  }
  size_t index(int g, int c) const { return size_t(g) * s_.clusters + c; }
  double element(const char* row, int i, float scale) const {
    if (s_.fp8) return double(fp8_e4m3_to_float(reinterpret_cast<const fp8_e4m3*>(row)[i])) * double(scale);
    return bf(reinterpret_cast<const bf16*>(row)[i]);
  }

  Shape s_;
  std::mt19937_64 rng_;
  int max_pages_ = 0;
  int64_t page_bytes_ = 0;
  std::unique_ptr<PinnedMem> k_pool_, v_pool_;
  std::vector<int64_t> page_pos_;  // [groups, max_pages] page position in the pools
  std::vector<int64_t> rows_;      // [groups] rows (with gaps) of each group's lists
  std::vector<int32_t> sizes_;
  std::vector<int64_t> begin_;
  std::vector<float> k_scale_, v_scale_;  // [groups, clusters], used with fp8 rows
  std::vector<int32_t> ids_, count_;
  std::vector<int64_t> uids_;
  std::vector<bf16> q_, steady_o_;
  std::vector<float> est_o_, est_lse_, steady_lse_;
  std::vector<float> steady_o_part_, steady_lse_part_;  // steady_splits > 1
  std::vector<double> steady_ref_o_;                    // their merge, for the reference
  DeviceMem d_steady_o_part_, d_steady_lse_part_;
  std::vector<float> est_part_;      // estimate_slices > 0: [groups, slices, G, head_dim + 2]
  std::vector<int32_t> est_count_;   // [groups]
  DeviceMem d_est_part_, d_est_count_;
  DeviceMem d_k_pages_, d_v_pages_, d_num_clusters_, d_sizes_, d_begin_, d_k_scale_, d_v_scale_, d_ids_, d_count_,
      d_uids_, d_q_, d_est_o_, d_est_lse_, d_steady_o_, d_steady_lse_, d_out_, d_lse_;
};

// ---- A cache on the device and a model of its policy ----

class Cache {
 public:
  Cache(int head_dim, int slot_tokens, int ways, int64_t num_slots, DType kv_dtype = DType::kBF16) {
    cuda::WaveBufferParams p;
    p.slot_tokens = slot_tokens;
    p.ways = ways;
    p.num_slots = num_slots;
    p.kv_dtype = kv_dtype;
    layout = cuda::plan_wave_cache(p, head_dim);
    memory = DeviceMem(layout.bytes);
    memory.poison();  // slot rows start as NaN: a read before an admission cannot go unnoticed
    view = cuda::init_wave_cache(layout, memory.get(), nullptr);
    CUDA_OK(cudaDeviceSynchronize());
  }
  cuda::WaveCacheLayout layout;
  DeviceMem memory;
  cuda::WaveCacheView view;
};

struct CacheState {
  std::vector<uint64_t> tags;
  std::vector<unsigned long long> stamps;
  cuda::WaveCacheCounters counters;
};

CacheState read_state(const Cache& c) {
  CacheState s;
  const size_t n = size_t(c.layout.num_slots());
  s.tags = download<uint64_t>(c.view.tags, n);
  s.stamps = download<unsigned long long>(c.view.stamps, n);
  s.counters = cuda::read_wave_cache_counters(c.view, nullptr);
  return s;
}

// Checks one retrieval step against the cache policy, given the state before it: the counters,
// which ways hit, which ways were claimed (LRU among the ways not used this step), and that the
// claimed ways hold missed parts.
void check_step(const Cache& c, const CacheState& before, const CacheState& after, const World& w,
                const std::vector<PartRef>& parts) {
  const int ways = c.layout.ways;
  const int64_t sets = c.layout.num_sets;
  const unsigned long long step = after.counters.step;
  ASSERT_EQ(step, before.counters.step + 1) << "one lookup advances the step once";
  const int part_capacity = w.plan.part_capacity;
  const int d = w.shape().head_dim;

  auto find = [&](const std::vector<uint64_t>& tags, uint64_t tag) -> int64_t {
    const int64_t first = cuda::wave_cache_set(tag, sets) * ways;
    for (int i = 0; i < ways; ++i)
      if (tags[first + i] == tag) return first + i;
    return -1;
  };
  uint64_t hits = 0, misses = 0, host_rows = 0, admitted = 0;
  std::vector<std::set<int64_t>> hit_ways(sets);
  std::vector<std::set<uint64_t>> missed(sets);  // cacheable misses of each set
  for (const PartRef& p : parts) {
    const uint64_t tag = cuda::wave_cache_tag(w.uid(p.g), p.cluster, p.part);
    const bool looked_up = p.j < part_capacity && tag != cuda::kWaveTagEmpty;
    const int64_t way = looked_up ? find(before.tags, tag) : -1;
    if (way >= 0) {
      ++hits;
      hit_ways[way / ways].insert(way);
      EXPECT_EQ(after.tags[way], tag) << "a hit was evicted in its own step";
      EXPECT_EQ(after.stamps[way], step) << "a hit was not stamped";
    } else {
      ++misses;
      host_rows += p.rows;
      if (looked_up) missed[cuda::wave_cache_set(tag, sets)].insert(tag);
    }
  }
  for (int64_t s = 0; s < sets; ++s) {
    const int64_t eligible = ways - int64_t(hit_ways[s].size());
    const int64_t expect_claims = std::min<int64_t>(int64_t(missed[s].size()), eligible);
    admitted += uint64_t(expect_claims);
    std::vector<int64_t> claimed, kept;
    for (int i = 0; i < ways; ++i) {
      const int64_t way = s * ways + i;
      if (hit_ways[s].count(way)) continue;
      if (after.tags[way] != before.tags[way] || after.stamps[way] != before.stamps[way])
        claimed.push_back(way);
      else
        kept.push_back(way);
    }
    EXPECT_EQ(int64_t(claimed.size()), expect_claims) << "set " << s;
    std::set<uint64_t> claimed_tags;
    for (int64_t way : claimed) {
      EXPECT_EQ(after.stamps[way], step) << "set " << s;
      EXPECT_TRUE(missed[s].count(after.tags[way])) << "set " << s << " admitted a part nobody missed";
      EXPECT_TRUE(claimed_tags.insert(after.tags[way]).second) << "set " << s << " admitted a part twice";
      for (int64_t k : kept) EXPECT_LE(before.stamps[way], before.stamps[k]) << "set " << s << ": not the LRU way";
    }
  }
  EXPECT_EQ(after.counters.hit_parts - before.counters.hit_parts, hits);
  EXPECT_EQ(after.counters.miss_parts - before.counters.miss_parts, misses);
  EXPECT_EQ(after.counters.admitted_parts - before.counters.admitted_parts, admitted);
  EXPECT_EQ(after.counters.host_rows - before.counters.host_rows, host_rows);
  EXPECT_EQ(after.counters.host_bytes - before.counters.host_bytes,
            host_rows * uint64_t(d) * 2 * uint64_t(w.shape().elem_bytes()));
}

// Every entry sits in its tag's set, no tag twice, and every entry of a current uid holds exactly
// the host rows of that part (entries of retired uids are never read again and are not checked).
void check_contents(const Cache& c, const World& w) {
  const size_t n = size_t(c.layout.num_slots());
  const int T = c.layout.slot_tokens;
  const size_t row_bytes = w.shape().row_bytes();
  const std::vector<uint64_t> tags = download<uint64_t>(c.view.tags, n);
  const std::vector<char> ks = download<char>(c.view.k_slots, n * T * row_bytes);
  const std::vector<char> vs = download<char>(c.view.v_slots, n * T * row_bytes);
  std::map<int64_t, int> owner;
  for (int g = 0; g < w.shape().groups(); ++g) owner[w.uid(g)] = g;
  std::set<uint64_t> seen;
  for (size_t s = 0; s < n; ++s) {
    const uint64_t tag = tags[s];
    if (tag == cuda::kWaveTagEmpty) continue;
    EXPECT_TRUE(seen.insert(tag).second) << "tag in two slots";
    EXPECT_EQ(int64_t(s) / c.layout.ways, cuda::wave_cache_set(tag, c.layout.num_sets)) << "slot " << s;
    const auto it = owner.find(cuda::wave_cache_tag_uid(tag));
    if (it == owner.end()) continue;
    const int g = it->second;
    const int cluster = static_cast<int>((tag >> cuda::kWaveTagPartBits) & ((1u << cuda::kWaveTagClusterBits) - 1));
    const int part = static_cast<int>(tag & ((1u << cuda::kWaveTagPartBits) - 1));
    ASSERT_LT(cluster, w.shape().clusters);
    const int rows = std::min(T, w.size(g, cluster) - part * T);
    ASSERT_GT(rows, 0) << "slot " << s << " holds a part past its cluster";
    for (int t = 0; t < rows; ++t) {
      const int64_t row = w.begin(g, cluster) + int64_t(part) * T + t;
      const size_t at = (s * T + t) * row_bytes;
      ASSERT_EQ(std::memcmp(&ks[at], w.k_row(g, row), row_bytes), 0)
          << "slot " << s << " K row " << t << " of group " << g << " cluster " << cluster << " part " << part;
      ASSERT_EQ(std::memcmp(&vs[at], w.v_row(g, row), row_bytes), 0)
          << "slot " << s << " V row " << t << " of group " << g << " cluster " << cluster << " part " << part;
    }
  }
}

class WaveRetrieveGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    RETRO_SKIP_WITHOUT_GPU();
  }
};

struct Case {
  std::string name;
  Shape shape;
  bool cache;
};

class WaveRetrieveCases : public WaveRetrieveGpu, public ::testing::WithParamInterface<Case> {};

// Retrieval + merge against the reference; with a cache the same step runs again, all from the cache
// (the counters prove it) with a bit-identical output, then a new query over a partly new
// selection mixes hits and misses.
TEST_P(WaveRetrieveCases, MatchesTheDoublePrecisionReference) {
  const Case& c = GetParam();
  RETRO_SEEDED(seed);
  World w(c.shape, seed);
  const int groups = c.shape.groups();
  const int64_t uid_base = std::uniform_int_distribution<int64_t>(0, int64_t(1) << 33)(w.rng());
  for (int g = 0; g < groups; ++g) {
    w.set_uid(g, uid_base + g);
    // Group 1 retrieves nothing, group 0 a full selection, the others a random count.
    const int count = g == 1 ? 0 : g == 0 ? c.shape.retrieve_capacity
                                          : std::uniform_int_distribution<int>(1, c.shape.retrieve_capacity)(w.rng());
    w.select_random(g, count, c.shape.clusters);
  }
  w.random_zones();

  if (!c.cache) {
    w.run(cuda::WaveCacheView{});
    w.expect_matches_reference("no cache");
    return;
  }
  // Large enough that no set overflows at these sizes (the model checks it either way).
  Cache cache(c.shape.head_dim, c.shape.slot_tokens, 16, 4096, c.shape.fp8 ? DType::kFP8E4M3 : DType::kBF16);
  const std::vector<PartRef> parts = w.parts();
  int cacheable = 0;
  for (const PartRef& p : parts) cacheable += p.j < w.plan.part_capacity;

  CacheState s0 = read_state(cache);
  w.run(cache.view);
  w.expect_matches_reference("first run");
  CacheState s1 = read_state(cache);
  check_step(cache, s0, s1, w, parts);
  EXPECT_EQ(s1.counters.hit_parts, 0u);
  EXPECT_EQ(s1.counters.miss_parts, parts.size());
  EXPECT_EQ(s1.counters.admitted_parts, uint64_t(cacheable));
  check_contents(cache, w);
  const std::vector<bf16> out1 = w.out;
  const std::vector<float> lse1 = w.lse;

  w.run(cache.view);
  CacheState s2 = read_state(cache);
  check_step(cache, s1, s2, w, parts);
  EXPECT_EQ(s2.counters.hit_parts - s1.counters.hit_parts, uint64_t(cacheable)) << "second run: every part a hit";
  EXPECT_EQ(s2.counters.miss_parts - s1.counters.miss_parts, parts.size() - cacheable);
  EXPECT_EQ(s2.counters.admitted_parts, s1.counters.admitted_parts);
  if (cacheable == int(parts.size())) {
    EXPECT_EQ(s2.counters.host_rows, s1.counters.host_rows);
  }
  EXPECT_EQ(std::memcmp(w.out.data(), out1.data(), out1.size() * sizeof(bf16)), 0) << "hits changed the output";
  for (size_t i = 0; i < lse1.size(); ++i)
    EXPECT_TRUE(w.lse[i] == lse1[i] || (std::isinf(w.lse[i]) && std::isinf(lse1[i]))) << "lse " << i;

  // Half of each selection kept, half replaced, new queries and zone states.
  for (int g = 0; g < groups; ++g) {
    std::vector<int32_t> ids = w.selection(g);
    ids.resize(ids.size() / 2);
    std::vector<int32_t> others;
    for (int cl = 0; cl < c.shape.clusters; ++cl)
      if (std::find(ids.begin(), ids.end(), cl) == ids.end()) others.push_back(cl);
    std::shuffle(others.begin(), others.end(), w.rng());
    const size_t add = std::min<size_t>(others.size(), size_t(c.shape.retrieve_capacity) - ids.size());
    ids.insert(ids.end(), others.begin(), others.begin() + std::uniform_int_distribution<size_t>(0, add)(w.rng()));
    w.select(g, ids);
  }
  w.random_zones();
  const std::vector<PartRef> parts3 = w.parts();
  w.run(cache.view);
  w.expect_matches_reference("third run, hits and misses");
  check_step(cache, s2, read_state(cache), w, parts3);
  check_contents(cache, w);
}

Shape make_shape(int batch, int kv_heads, int group, int d, int slot_tokens, int clusters, int cap, int64_t page_rows,
                 int part_capacity = 0, int num_sms = 0, int ctas_per_sm = 0) {
  Shape s;
  s.batch = batch;
  s.num_kv_heads = kv_heads;
  s.group_size = group;
  s.head_dim = d;
  s.slot_tokens = slot_tokens;
  s.clusters = clusters;
  s.retrieve_capacity = cap;
  s.page_rows = page_rows;
  s.part_capacity = part_capacity;
  s.num_sms = num_sms;
  s.ctas_per_sm = ctas_per_sm;
  return s;
}

Shape with_fp8(Shape s) {
  s.fp8 = true;
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WaveRetrieveCases,
    ::testing::Values(Case{"g4_d128", make_shape(2, 2, 4, 128, 32, 40, 24, 100), true},
                    Case{"g8_d128_slot16", make_shape(1, 2, 8, 128, 16, 64, 48, 77), true},
                    Case{"g1_d64", make_shape(2, 1, 1, 64, 32, 30, 20, 50), true},
                    Case{"g2_d64_slot8_part_overflow", make_shape(1, 4, 2, 64, 8, 40, 24, 33, 10), true},
                    Case{"g4_d128_one_split", make_shape(2, 2, 4, 128, 32, 40, 24, 100, 0, 1, 1), true},
                    Case{"g5_d64_many_splits", make_shape(3, 2, 5, 64, 32, 40, 30, 64, 0, 1000, 8), true},
                    Case{"g7_d128_large", make_shape(1, 4, 7, 128, 32, 300, 150, 4096), true},
                    Case{"g6_d128_no_cache", make_shape(2, 2, 6, 128, 32, 40, 24, 100), false},
                    Case{"fp8_g4_d128", with_fp8(make_shape(2, 2, 4, 128, 32, 40, 24, 100)), true},
                    Case{"fp8_g8_d128_slot16", with_fp8(make_shape(1, 2, 8, 128, 16, 64, 48, 77)), true},
                    Case{"fp8_g2_d64_slot8_part_overflow", with_fp8(make_shape(1, 4, 2, 64, 8, 40, 24, 33, 10)),
                         true},
                    Case{"fp8_g5_d64_many_splits", with_fp8(make_shape(3, 2, 5, 64, 32, 40, 30, 64, 0, 1000, 8)),
                         true},
                    Case{"fp8_g7_d128_large", with_fp8(make_shape(1, 4, 7, 128, 32, 300, 150, 4096)), true},
                    Case{"fp8_g1_d128_no_cache", with_fp8(make_shape(2, 2, 1, 128, 32, 40, 24, 100)), false}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Zones handed over as partial states merge like one state each: the steady zone as the split
// states of its decode attention (keep_partials; some splits empty, some rows' whole steady zone
// empty), the estimation zone as its slices' states (keep_estimate_partials; a group that estimated
// nothing, groups using one slice up to all of them, the slices past a group's count unread).
void expect_partial_zones_merge(int steady_splits, int estimate_slices, uint64_t seed) {
  for (const Shape& shape : {make_shape(2, 2, 4, 128, 32, 40, 24, 100), make_shape(3, 2, 5, 64, 32, 40, 30, 64)}) {
    World w(shape, seed);
    for (int g = 0; g < shape.groups(); ++g) {
      w.set_uid(g, g + 1);
      w.select_random(g, g == 1 ? 0 : std::uniform_int_distribution<int>(1, shape.retrieve_capacity)(w.rng()),
                      shape.clusters);
    }
    w.steady_splits = steady_splits;
    w.estimate_slices = estimate_slices;
    w.random_zones();
    w.run(cuda::WaveCacheView{});
    w.expect_matches_reference("steady zone in " + std::to_string(steady_splits) + " states, estimation zone in " +
                               std::to_string(estimate_slices) + " slices, head_dim " + std::to_string(shape.head_dim));
  }
}

TEST_F(WaveRetrieveGpu, SteadyZoneAsSplitStatesMergesLikeOneState) {
  RETRO_SEEDED(seed);
  expect_partial_zones_merge(3, 0, seed);
}

TEST_F(WaveRetrieveGpu, EstimationZoneAsSlicesMergesLikeOneState) {
  RETRO_SEEDED(seed);
  expect_partial_zones_merge(2, 3, seed);
}

// A tiny cache (3 sets of 2 ways) under selections that force evictions and re-admissions over many
// steps; groups get new sequences (new rows, fresh uid), a group is invalidated and rewritten under
// the same uid, the cache is cleared once. Every step matches the reference computed from the host
// store and the policy model, and every cached part of a current uid equals its host rows.
TEST_F(WaveRetrieveGpu, TinyCacheNeverReturnsAStalePart) {
  RETRO_SEEDED(seed);
  const Shape shape = make_shape(1, 2, 4, 64, 8, 12, 6, 20);
  World w(shape, seed);
  Cache cache(shape.head_dim, shape.slot_tokens, 2, 6);
  ASSERT_EQ(cache.layout.num_sets, 3);
  int64_t next_uid = 1000;
  for (int g = 0; g < shape.groups(); ++g) w.set_uid(g, next_uid++);
  DeviceMem d_uid(sizeof(int64_t));
  uint64_t total_hits = 0, total_admitted = 0, evictions_seen = 0;
  for (int step = 0; step < 80; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    if (step % 10 == 5) {
      const int g = (step / 10) % 2;
      w.new_sequence(g);
      w.set_uid(g, next_uid++);
    }
    if (step == 33) {
      // Invalidate group 0, then rewrite its rows under the same uid: only a working invalidate
      // keeps the old rows from coming back.
      const int64_t uid = w.uid(0);
      CUDA_OK(cudaMemcpy(d_uid.get(), &uid, sizeof(uid), cudaMemcpyHostToDevice));
      cuda::invalidate_wave_cache(cache.view, d_uid.as<int64_t>(), 1, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      for (uint64_t tag : read_state(cache).tags)
        EXPECT_TRUE(tag == cuda::kWaveTagEmpty || cuda::wave_cache_tag_uid(tag) != uid) << "invalidate left an entry";
      w.rewrite_rows(0);
    }
    if (step == 61) {
      cuda::clear_wave_cache(cache.view, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      for (uint64_t tag : read_state(cache).tags) EXPECT_EQ(tag, cuda::kWaveTagEmpty);
    }
    // Repeat the previous selection every third step (hits), else a few of the first 6 clusters.
    if (step % 3 != 1) {
      for (int g = 0; g < shape.groups(); ++g)
        w.select_random(g, std::uniform_int_distribution<int>(1, 4)(w.rng()), 6);
    }
    w.random_zones();
    const std::vector<PartRef> parts = w.parts();
    const CacheState before = read_state(cache);
    w.run(cache.view);
    w.expect_matches_reference("tiny cache");
    const CacheState after = read_state(cache);
    check_step(cache, before, after, w, parts);
    check_contents(cache, w);
    total_hits += after.counters.hit_parts - before.counters.hit_parts;
    total_admitted += after.counters.admitted_parts - before.counters.admitted_parts;
    for (size_t i = 0; i < after.tags.size(); ++i)
      evictions_seen += before.tags[i] != cuda::kWaveTagEmpty && after.tags[i] != before.tags[i];
    if (HasFailure()) break;
  }
  // The selections are built to exercise the cache: it must have hit, admitted and evicted.
  EXPECT_GT(total_hits, 0u);
  EXPECT_GT(total_admitted, 0u);
  EXPECT_GT(evictions_seen, 0u);
}

// The whole run captured once in a CUDA graph: every replay advances the device step, the first
// replay admits, the second hits, both match the reference.
TEST_F(WaveRetrieveGpu, GraphReplaysAdvanceTheStep) {
  RETRO_SEEDED(seed);
  const Shape shape = make_shape(2, 2, 4, 128, 32, 40, 24, 100);
  World w(shape, seed);
  for (int g = 0; g < shape.groups(); ++g) {
    w.set_uid(g, 7 + g);
    w.select_random(g, shape.retrieve_capacity, shape.clusters);
  }
  w.random_zones();
  Cache cache(shape.head_dim, shape.slot_tokens, 16, 4096);
  const std::vector<PartRef> parts = w.parts();

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  w.upload_inputs();
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  cuda::run_wave_retrieve(w.params(cache.view), w.plan, w.workspace.get(), stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  CacheState before = read_state(cache);
  for (int replay = 0; replay < 3; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    w.poison_outputs();
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    w.download_outputs();
    w.expect_matches_reference("graph replay");
    const CacheState after = read_state(cache);
    EXPECT_EQ(after.counters.step, uint64_t(replay + 1));
    check_step(cache, before, after, w, parts);
    const uint64_t hits = after.counters.hit_parts - before.counters.hit_parts;
    EXPECT_EQ(hits, replay == 0 ? 0u : uint64_t(parts.size()));
    before = after;
  }
  check_contents(cache, w);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

#else
TEST(WaveRetrieveGpu, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif

}  // namespace
}  // namespace retro::attention
