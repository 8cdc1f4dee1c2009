#include "attention/kv_store.h"

#include "attention/impl/group_rows.h"

#include <algorithm>
#include <cmath>

#include "attention/impl/paged_rows.h"
#include "attention/impl/thread_pool.h"
#include "runtime/core/error.h"

namespace retro::attention {

const char* attention_mode_name(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kDense: return "dense";
    case AttentionMode::kWave: return "wave";
  }
  return "unknown";
}

struct SequenceKv::Head {
  Head(Allocator& allocator, int head_dim, const WaveIndexParams& params)
      : sink_k(allocator, MemoryPurpose::kKvHost, head_dim, std::max(params.sink_tokens, 1)),
        sink_v(allocator, MemoryPurpose::kKvHost, head_dim, std::max(params.sink_tokens, 1)),
        tail_k(allocator, MemoryPurpose::kKvHost, head_dim, params.host_page_tokens),
        tail_v(allocator, MemoryPurpose::kKvHost, head_dim, params.host_page_tokens) {}

  impl::PagedRows<float> sink_k, sink_v;  // positions [0, sink rows)
  impl::PagedRows<float> tail_k, tail_v;  // positions [tail_begin, size)
  std::unique_ptr<WaveIndex> index;       // after build_index()
};

SequenceKv::SequenceKv(AttentionShape shape, AttentionMode mode, const WaveIndexParams& params, Allocator& host_allocator)
    : shape_(shape), mode_(mode), params_(params), allocator_(&host_allocator) {
  shape_.validate();
  params_.validate();
  tail_begin_ = params_.sink_tokens;
  for (int g = 0; g < shape_.num_kv_heads; ++g)
    heads_.push_back(std::make_unique<Head>(host_allocator, shape_.head_dim, params_));
}

SequenceKv::~SequenceKv() = default;
SequenceKv::SequenceKv(SequenceKv&&) noexcept = default;
SequenceKv& SequenceKv::operator=(SequenceKv&&) noexcept = default;

const WaveIndex* SequenceKv::index(int kv_head) const {
  RETRO_CHECK(kv_head >= 0 && kv_head < shape_.num_kv_heads, "kv head {} out of range [0, {})", kv_head,
              shape_.num_kv_heads);
  return heads_[static_cast<size_t>(kv_head)]->index.get();
}

int64_t SequenceKv::steady_tokens() const { return heads_[0]->sink_k.size() + heads_[0]->tail_k.size(); }

size_t SequenceKv::host_bytes() const {
  size_t b = 0;
  for (const auto& h : heads_) {
    b += h->sink_k.bytes() + h->sink_v.bytes() + h->tail_k.bytes() + h->tail_v.bytes();
    if (h->index) b += h->index->host_bytes() + h->index->index_bytes();
  }
  return b;
}

void SequenceKv::set_budgets(double retrieval_budget, double estimation_budget) {
  WaveIndexParams p = params_;
  p.retrieval_budget = retrieval_budget;
  p.estimation_budget = estimation_budget;
  p.validate();
  params_ = p;
  for (auto& h : heads_)
    if (h->index) h->index->set_budgets(retrieval_budget, estimation_budget);
}

void SequenceKv::append(const float* k, const float* v, int64_t n_tokens) {
  RETRO_CHECK(n_tokens >= 0, "SequenceKv::append: negative token count {}", n_tokens);
  if (n_tokens == 0) return;
  RETRO_CHECK(k != nullptr && v != nullptr, "SequenceKv::append: null K or V for {} tokens", n_tokens);
  const int d = shape_.head_dim;
  const int64_t stride = static_cast<int64_t>(shape_.num_kv_heads) * d;
  const int64_t to_sink = std::clamp<int64_t>(params_.sink_tokens - size_, 0, n_tokens);
  for (int g = 0; g < shape_.num_kv_heads; ++g) {
    Head& h = *heads_[static_cast<size_t>(g)];
    h.sink_k.append(k + g * d, to_sink, stride);
    h.sink_v.append(v + g * d, to_sink, stride);
    h.tail_k.append(k + to_sink * stride + g * d, n_tokens - to_sink, stride);
    h.tail_v.append(v + to_sink * stride + g * d, n_tokens - to_sink, stride);
  }
  size_ += n_tokens;
  if (built_) grow();
}

void SequenceKv::grow() {
  const int64_t update = params_.update_segment_tokens;
  const int d = shape_.head_dim;
  while (heads_[0]->tail_k.size() - params_.window_tokens >= update) {
    impl::parallel_for(shape_.num_kv_heads, [&](int64_t g) {
      Head& h = *heads_[static_cast<size_t>(g)];
      std::vector<float> keys(static_cast<size_t>(update * d)), values(static_cast<size_t>(update * d));
      h.tail_k.copy_rows(0, update, keys.data());
      h.tail_v.copy_rows(0, update, values.data());
      h.index->append_segment(keys.data(), values.data(), update, tail_begin_);
      h.tail_k.pop_front(update);
      h.tail_v.pop_front(update);
    });
    tail_begin_ += update;
  }
}

void SequenceKv::build_index() {
  if (mode_ != AttentionMode::kWave || built_) return;
  const int d = shape_.head_dim;
  const int64_t n = std::max<int64_t>(0, heads_[0]->tail_k.size() - params_.window_tokens);
  for (auto& h : heads_) h->index = std::make_unique<WaveIndex>(d, params_, *allocator_);
  // Heads build in batches of the pool's width: parallel, without copying every head at once.
  const int64_t batch = impl::num_threads();
  for (int64_t g0 = 0; g0 < shape_.num_kv_heads; g0 += batch) {
    const int64_t nb = std::min<int64_t>(batch, shape_.num_kv_heads - g0);
    std::vector<std::vector<float>> keys(static_cast<size_t>(nb)), values(static_cast<size_t>(nb));
    std::vector<WaveIndexBuild> tasks;
    for (int64_t i = 0; i < nb; ++i) {
      Head& h = *heads_[static_cast<size_t>(g0 + i)];
      keys[static_cast<size_t>(i)].resize(static_cast<size_t>(n * d));
      values[static_cast<size_t>(i)].resize(static_cast<size_t>(n * d));
      h.tail_k.copy_rows(0, n, keys[static_cast<size_t>(i)].data());
      h.tail_v.copy_rows(0, n, values[static_cast<size_t>(i)].data());
      tasks.push_back(WaveIndexBuild{h.index.get(), keys[static_cast<size_t>(i)].data(),
                                     values[static_cast<size_t>(i)].data(), n, tail_begin_});
    }
    build_wave_indexes(tasks);
    for (int64_t i = 0; i < nb; ++i) {
      Head& h = *heads_[static_cast<size_t>(g0 + i)];
      h.tail_k.pop_front(n);
      h.tail_v.pop_front(n);
    }
  }
  tail_begin_ += n;
  built_ = true;
  grow();
}

void SequenceKv::steady_runs(const Head& h, std::vector<KvRun>& runs) const {
  h.sink_k.for_each_run(0, h.sink_k.size(), [&](const float* k, int64_t first, int64_t count) {
    runs.push_back(KvRun{k, h.sink_v.row(first), count, first});
  });
  h.tail_k.for_each_run(0, h.tail_k.size(), [&](const float* k, int64_t first, int64_t count) {
    runs.push_back(KvRun{k, h.tail_v.row(first), count, tail_begin_ + first});
  });
}

void SequenceKv::attend_causal_dense(const float* q, int64_t n, float* out, float* lse) const {
  RETRO_CHECK(n >= 0 && n <= size_, "attend_causal_dense: {} query tokens but {} tokens stored (append the queries' "
              "K/V first)", n, size_);
  if (n == 0) return;
  RETRO_CHECK(q != nullptr && out != nullptr, "attend_causal_dense: null query or output");
  RETRO_CHECK(!built_ || n <= heads_[0]->tail_k.size(),
              "attend_causal_dense: {} query tokens reach past the {} steady-zone tokens into the clustered index",
              n, heads_[0]->tail_k.size());
  const int d = shape_.head_dim;
  const int gs = shape_.group_size();
  const int hq = shape_.num_q_heads;
  const int64_t rows = n * gs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto one_group = [&](int64_t g) {
    const Head& h = *heads_[static_cast<size_t>(g)];
    impl::GroupRows gr;
    impl::gather_group_rows(q, n, hq, static_cast<int>(g), gs, d, size_ - n, gr);
    std::vector<KvRun> runs;
    if (h.index) h.index->host_runs(runs);
    steady_runs(h, runs);
    attend_exact(gr.q.data(), rows, d, scale, gr.pos.data(), runs, gr.o.data(), gr.lse.data());
    impl::scatter_group_rows(gr, n, hq, static_cast<int>(g), gs, d, out, lse);
  };
  // Few rows per group (decode-like): groups in parallel; many rows: one group at a time, each on BLAS.
  if (rows < 16) {
    impl::parallel_for(shape_.num_kv_heads, one_group);
  } else {
    for (int64_t g = 0; g < shape_.num_kv_heads; ++g) one_group(g);
  }
}

void SequenceKv::attend_decode_dense(const float* q, float* out, float* lse) const {
  RETRO_CHECK(size_ > 0, "attend_decode: no tokens stored");
  RETRO_CHECK(q != nullptr && out != nullptr, "attend_decode: null query or output");
  const int d = shape_.head_dim;
  const int gs = shape_.group_size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  impl::parallel_for(shape_.num_kv_heads, [&](int64_t g) {
    const Head& h = *heads_[static_cast<size_t>(g)];
    std::vector<KvRun> runs;
    if (h.index) h.index->host_runs(runs);
    steady_runs(h, runs);
    std::vector<float> l(static_cast<size_t>(gs));
    float* o = out + g * gs * d;
    init_states(o, l.data(), gs, d);
    attend_exact(q + g * gs * d, gs, d, scale, nullptr, runs, o, l.data());
    if (lse != nullptr) std::copy(l.begin(), l.end(), lse + g * gs);
  });
}

void SequenceKv::attend_decode(const float* q, float* out, float* lse) {
  const int hkv = shape_.num_kv_heads;
  if (!(mode_ == AttentionMode::kWave && built_)) {
    attend_decode_dense(q, out, lse);
    WaveStepStats s;
    s.groups = hkv;
    s.steady_tokens = size_ * hkv;
    last_stats_ = s;
    last_zones_.clear();
    if (record_zones_) {
      last_zones_.resize(static_cast<size_t>(hkv));
      for (auto& z : last_zones_) {
        z.steady.resize(static_cast<size_t>(size_));
        for (int64_t p = 0; p < size_; ++p) z.steady[static_cast<size_t>(p)] = p;
      }
    }
    return;
  }
  RETRO_CHECK(q != nullptr && out != nullptr, "attend_decode: null query or output");
  const int d = shape_.head_dim;
  const int gs = shape_.group_size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<WaveStepStats> stats(static_cast<size_t>(hkv));
  last_zones_.assign(record_zones_ ? static_cast<size_t>(hkv) : 0, DecodeZones{});
  impl::parallel_for(hkv, [&](int64_t g) {
    const Head& h = *heads_[static_cast<size_t>(g)];
    std::vector<KvRun> runs;
    steady_runs(h, runs);
    std::vector<float> l(static_cast<size_t>(gs));
    wave_attention_group(*h.index, q + g * gs * d, gs, scale, runs, out + g * gs * d, l.data(),
                         &stats[static_cast<size_t>(g)], record_zones_ ? &last_zones_[static_cast<size_t>(g)] : nullptr);
    if (lse != nullptr) std::copy(l.begin(), l.end(), lse + g * gs);
  });
  last_stats_ = WaveStepStats{};
  for (const WaveStepStats& s : stats) last_stats_ += s;
}

}  // namespace retro::attention
