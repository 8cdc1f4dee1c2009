// `retroinfer bench wave`: one layer of wave attention on the GPU against dense decode attention on
// the same K/V and the same queries, per decode step: the prompt's K/V come from the synthetic
// workload generator (clustered keys, needles, queries that drift step to step), are built into the
// wave index and offloaded to pinned host memory (bf16, or fp8-e4m3 with per-cluster scales:
// --host-kv); every step appends one token and attends. Reports per-layer time of both, their ratio,
// the time of the retrieval part of a wave step (cache lookup, miss reads, retrieval attention and
// the zone merge; the rest is append, steady zone and cluster selection), the error of wave against
// dense (with --retrieval-budget 1 --estimation-budget 0 wave attention is exact, and the error is
// what the host KV format costs), the cluster-cache hit ratio and the bytes read over PCIe. The
// cache is --cache-fraction of the bf16 bytes of the offloaded KV whatever the host KV format: fp8
// slots are half the bytes, so the same memory holds twice the parts.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "attention/synthetic.h"
#include "attention/wave_index.h"
#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "runtime/core/allocator.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/decode_attention.h"
#include "attention/cuda/wave_kv.h"
#include "launcher/device_buffer.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/system_info.h"
#endif

namespace retro::launcher {

namespace {

struct WaveBenchOptions {
  std::string contexts = "32k,128k";
  std::string batches = "1,8";
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int steps = 48;
  int warmup_steps = 16;
  double cache_fraction = 0.05;
  std::string host_kv = "bf16";
  double retrieval_budget = attention::WaveIndexParams{}.retrieval_budget;
  double estimation_budget = attention::WaveIndexParams{}.estimation_budget;
  uint64_t seed = 1;
  std::string json_out;
};

#ifdef RETRO_WITH_CUDA

std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = float_to_bf16(x[i]);
  return y;
}

void run_wave_bench(const WaveBenchOptions& o) {
  using namespace attention;
  using namespace attention::cuda;
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench wave needs a GPU: {}", query_cuda_runtime().error);
  RETRO_CHECK(o.steps > 0 && o.warmup_steps >= 0, "bench wave: --steps {} / --warmup-steps {}", o.steps, o.warmup_steps);
  const std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  const std::vector<int64_t> batches = parse_size_list(o.batches, "--batch");
  const int hq = o.heads, hk = o.kv_heads, d = o.head_dim;
  std::vector<DType> kv_dtypes;
  for (size_t at = 0; at <= o.host_kv.size();) {
    const size_t end = std::min(o.host_kv.find(',', at), o.host_kv.size());
    const DType t = parse_dtype(o.host_kv.substr(at, end - at));
    RETRO_CHECK(wave_kv_elem_bytes(t) > 0, "bench wave: --host-kv {} (bf16 or fp8)", dtype_name(t));
    kv_dtypes.push_back(t);
    at = end + 1;
  }
  const int64_t row = int64_t(hk) * d;
  const float scale = 1.0f / std::sqrt(float(d));
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);

  WaveIndexParams params;
  params.retrieval_budget = o.retrieval_budget;
  params.estimation_budget = o.estimation_budget;
  params.validate();
  auto pinned = make_pinned_host_allocator();
  auto device = make_device_allocator(0);

  fmt::print("wave attention, one layer, {} q / {} kv heads, head_dim {}, on {}; retrieval {:.3f}, estimation {:.3f}, "
             "cache {:.0f}% of the offloaded KV in bf16 bytes; {} timed steps after {} warm-up steps\n\n",
             hq, hk, d, gpus[0].name, params.retrieval_budget, params.estimation_budget, o.cache_fraction * 100,
             o.steps, o.warmup_steps);
  fmt::print("| context | batch | host KV | build ms/seq | dense ms/layer | wave ms/layer | retrieval ms/layer | "
             "speedup | rel. error (mean / max) | hit ratio | PCIe GB/s (wave / retrieval) | "
             "retrieved / estimated clusters per group | host MiB |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t ctx : contexts) {
    // The prompt: the same synthetic sequence in every slot (queries differ per slot and step).
    SyntheticParams sp;
    sp.shape = AttentionShape{hq, hk, d};
    sp.context_tokens = ctx;
    sp.seed = o.seed;
    SyntheticWorkload workload(sp);
    std::vector<float> kf(size_t(ctx * row)), vf(size_t(ctx * row));
    workload.next_kv(ctx, kf.data(), vf.data());
    const std::vector<bf16> kp = to_bf16(kf), vp = to_bf16(vf);
    kf.clear();
    vf.clear();
    kf.shrink_to_fit();
    vf.shrink_to_fit();
    const int64_t total_steps = o.warmup_steps + o.steps;
    for (int64_t bs : batches) {
      const int B = int(bs);
      const int64_t cap = ctx + total_steps;
      size_t free_b = 0, total_b = 0;
      RETRO_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      const size_t dense_bytes = size_t(B) * cap * row * 2 * 2;
      if (dense_bytes + (size_t(4) << 30) > free_b) {
        fmt::print("| {} | {} | dense KV of {} does not fit |\n", ctx, B, format_bytes(dense_bytes));
        continue;
      }
      // Dense baseline KV [B, cap, hk, d] and the prompt on the device.
      DeviceBuffer dk(dense_bytes / 2), dv(dense_bytes / 2), pk(kp.size() * 2), pv(vp.size() * 2);
      RETRO_CUDA_CHECK(cudaMemcpy(pk.ptr, kp.data(), kp.size() * 2, cudaMemcpyHostToDevice));
      RETRO_CUDA_CHECK(cudaMemcpy(pv.ptr, vp.data(), vp.size() * 2, cudaMemcpyHostToDevice));
      for (int b = 0; b < B; ++b) {
        RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dk.ptr) + size_t(b) * cap * row * 2, pk.ptr, kp.size() * 2,
                                    cudaMemcpyDeviceToDevice));
        RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dv.ptr) + size_t(b) * cap * row * 2, pv.ptr, vp.size() * 2,
                                    cudaMemcpyDeviceToDevice));
      }
      const DecodeAttentionPlan dplan = plan_decode_attention(B, hq, hk, d, cap);
      DeviceBuffer dws(dplan.workspace_bytes), lens(size_t(B) * 4), q(size_t(B) * hq * d * 2), kn(size_t(B) * row * 2),
          vn(size_t(B) * row * 2), out_dense(size_t(B) * hq * d * 2), out_wave(size_t(B) * hq * d * 2);
      DecodeAttentionParams dp;
      dp.q = q.ptr;
      dp.q_stride_batch = int64_t(hq) * d;
      dp.k = dk.ptr;
      dp.v = dv.ptr;
      dp.kv_stride_batch = cap * row;
      dp.kv_stride_head = d;
      dp.kv_stride_token = row;
      dp.seq_lens = static_cast<const int32_t*>(lens.ptr);
      dp.out = out_dense.ptr;
      dp.batch = B;
      dp.num_q_heads = hq;
      dp.num_kv_heads = hk;
      dp.head_dim = d;
      dp.sm_scale = scale;

      // Every host KV format sees the same steps: the workload restarts from here for each.
      const SyntheticWorkload start = workload;
      for (const DType kv_dtype : kv_dtypes) {
        workload = start;
        // One query stream per slot, so each slot's queries drift step to step at the generator's
        // correlation (drawing the slots' queries in turn from one stream would space a slot's
        // consecutive queries `batch` AR steps apart); streams start at different points.
        std::vector<SyntheticWorkload> queries(size_t(B), start);
        {
          std::vector<float> skip(static_cast<size_t>(hq) * d);
          for (int b = 0; b < B; ++b)
            for (int i = 0; i < 31 * b; ++i) queries[size_t(b)].next_query(skip.data());
        }
        WaveBufferParams buffer;
        buffer.kv_dtype = kv_dtype;
        // The cache gets cache_fraction of the bf16 bytes of the offloaded KV (fp8: twice the slots).
        buffer.cache_bytes = std::max<size_t>(size_t(o.cache_fraction * double(size_t(B) * ctx * row * 2 * 2)), 1);
        // Pages of the same bytes in both formats (fp8 pages hold twice the rows).
        HostPagePool pool(size_t(4096) * d * 2, size_t(256) << 20, *pinned);
        WaveLayerKv kv(WaveKvShape{B, hq, hk, d, cap}, params, buffer, pool, *device);
        const auto t0 = std::chrono::steady_clock::now();
        for (int b = 0; b < B; ++b) kv.build(b, pk.ptr, pv.ptr, ctx, row, nullptr);
        RETRO_CUDA_CHECK(cudaDeviceSynchronize());
        const double build_ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / B;
        const WaveCacheLayout layout = plan_wave_cache(buffer, d);
        DeviceBuffer cache_mem(layout.bytes);
        const WaveCacheView cache = init_wave_cache(layout, cache_mem.ptr, nullptr);

        cudaEvent_t e0, e1, e2, e_select;
        RETRO_CUDA_CHECK(cudaEventCreate(&e0));
        RETRO_CUDA_CHECK(cudaEventCreate(&e1));
        RETRO_CUDA_CHECK(cudaEventCreate(&e2));
        RETRO_CUDA_CHECK(cudaEventCreate(&e_select));
        kv.set_select_event(e_select);  // between cluster selection and retrieval
        std::vector<double> dense_ms, wave_ms, retrieve_ms, errors;
        std::vector<float> qf(static_cast<size_t>(hq) * d), knf(static_cast<size_t>(row)),
            vnf(static_cast<size_t>(row));
        std::vector<bf16> qh(size_t(B) * hq * d), knh(size_t(B) * row), vnh(size_t(B) * row), od(qh.size()),
            ow(qh.size());
        WaveCacheCounters before{};
        for (int64_t step = 0; step < total_steps; ++step) {
          for (int b = 0; b < B; ++b)
            if (kv.growth_due(b)) kv.grow(b, nullptr);
          workload.next_kv(1, knf.data(), vnf.data());
          for (int b = 0; b < B; ++b) {
            queries[size_t(b)].next_query(qf.data());
            for (size_t i = 0; i < qf.size(); ++i) qh[size_t(b) * qf.size() + i] = float_to_bf16(qf[i]);
            for (size_t i = 0; i < knf.size(); ++i) {
              knh[size_t(b) * row + i] = float_to_bf16(knf[i]);
              vnh[size_t(b) * row + i] = float_to_bf16(vnf[i]);
            }
          }
          RETRO_CUDA_CHECK(cudaMemcpy(q.ptr, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice));
          RETRO_CUDA_CHECK(cudaMemcpy(kn.ptr, knh.data(), knh.size() * 2, cudaMemcpyHostToDevice));
          RETRO_CUDA_CHECK(cudaMemcpy(vn.ptr, vnh.data(), vnh.size() * 2, cudaMemcpyHostToDevice));
          const int64_t len = ctx + step + 1;
          std::vector<int32_t> hl(static_cast<size_t>(B), static_cast<int32_t>(len));
          RETRO_CUDA_CHECK(cudaMemcpy(lens.ptr, hl.data(), hl.size() * 4, cudaMemcpyHostToDevice));
          for (int b = 0; b < B; ++b) {
            RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dk.ptr) + (size_t(b) * cap + len - 1) * row * 2,
                                        knh.data() + size_t(b) * row, size_t(row) * 2, cudaMemcpyHostToDevice));
            RETRO_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dv.ptr) + (size_t(b) * cap + len - 1) * row * 2,
                                        vnh.data() + size_t(b) * row, size_t(row) * 2, cudaMemcpyHostToDevice));
          }
          if (step == o.warmup_steps) before = read_wave_cache_counters(cache, nullptr);
          RETRO_CUDA_CHECK(cudaEventRecord(e0));
          run_decode_attention(dp, dplan, dws.ptr, nullptr);
          RETRO_CUDA_CHECK(cudaEventRecord(e1));
          kv.append(kn.ptr, vn.ptr, B, nullptr);
          kv.attend(q.ptr, out_wave.ptr, nullptr, B, scale, cache, nullptr);
          RETRO_CUDA_CHECK(cudaEventRecord(e2));
          RETRO_CUDA_CHECK(cudaEventSynchronize(e2));
          float t_dense = 0, t_wave = 0, t_retrieve = 0;
          RETRO_CUDA_CHECK(cudaEventElapsedTime(&t_dense, e0, e1));
          RETRO_CUDA_CHECK(cudaEventElapsedTime(&t_wave, e1, e2));
          RETRO_CUDA_CHECK(cudaEventElapsedTime(&t_retrieve, e_select, e2));
          if (step < o.warmup_steps) continue;
          dense_ms.push_back(t_dense);
          wave_ms.push_back(t_wave);
          retrieve_ms.push_back(t_retrieve);
          RETRO_CUDA_CHECK(cudaMemcpy(od.data(), out_dense.ptr, od.size() * 2, cudaMemcpyDeviceToHost));
          RETRO_CUDA_CHECK(cudaMemcpy(ow.data(), out_wave.ptr, ow.size() * 2, cudaMemcpyDeviceToHost));
          double num = 0, den = 0;
          for (size_t i = 0; i < od.size(); ++i) {
            const double a = bf16_to_float(od[i]), w = bf16_to_float(ow[i]);
            num += (w - a) * (w - a);
            den += a * a;
          }
          errors.push_back(std::sqrt(num / std::max(den, 1e-30)));
        }
        const WaveCacheCounters after = read_wave_cache_counters(cache, nullptr);
        const WaveKvStats st = kv.stats(B, nullptr);
        kv.set_select_event(nullptr);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        cudaEventDestroy(e2);
        cudaEventDestroy(e_select);
        const double dense = median(dense_ms), wave = median(wave_ms), retrieve = median(retrieve_ms);
        const double hits = double(after.hit_parts - before.hit_parts);
        const double misses = double(after.miss_parts - before.miss_parts);
        const double hit_ratio = hits + misses > 0 ? hits / (hits + misses) : 0.0;
        double wave_total_ms = 0, retrieve_total_ms = 0;
        for (double t : wave_ms) wave_total_ms += t;
        for (double t : retrieve_ms) retrieve_total_ms += t;
        const double host_bytes = double(after.host_bytes - before.host_bytes);
        const double pcie_gbs = host_bytes / (wave_total_ms * 1e-3) / 1e9;
        const double retrieve_pcie_gbs = host_bytes / (retrieve_total_ms * 1e-3) / 1e9;
        double err_mean = 0, err_max = 0;
        for (double e : errors) {
          err_mean += e / double(errors.size());
          err_max = std::max(err_max, e);
        }
        const double groups = double(st.groups);
        fmt::print("| {} | {} | {} | {:.1f} | {:.4f} | {:.4f} | {:.4f} | {:.2f} | {:.4f} / {:.4f} | {:.3f} | "
                   "{:.1f} / {:.1f} | {:.0f} / {:.0f} of {:.0f} | {:.0f} |\n",
                   ctx, B, dtype_name(kv_dtype), build_ms, dense, wave, retrieve, dense / wave, err_mean, err_max,
                   hit_ratio, pcie_gbs, retrieve_pcie_gbs, st.retrieved_clusters / groups,
                   st.estimated_clusters / groups, st.clusters / groups, double(kv.host_bytes()) / double(1 << 20));
        std::fflush(stdout);
        if (json) {
          nlohmann::ordered_json r = {{"bench", "wave"},
                                      {"device", gpus[0].name},
                                      {"heads", hq},
                                      {"kv_heads", hk},
                                      {"head_dim", d},
                                      {"context", ctx},
                                      {"batch", B},
                                      {"retrieval_budget", params.retrieval_budget},
                                      {"estimation_budget", params.estimation_budget},
                                      {"cache_fraction", o.cache_fraction},
                                      {"host_kv", dtype_name(kv_dtype)},
                                      {"cache_slots", layout.num_slots()},
                                      {"build_ms_per_sequence", build_ms},
                                      {"dense_ms_per_layer", dense},
                                      {"wave_ms_per_layer", wave},
                                      {"retrieval_ms_per_layer", retrieve},
                                      {"speedup", dense / wave},
                                      {"rel_error_mean", err_mean},
                                      {"rel_error_max", err_max},
                                      {"hit_ratio", hit_ratio},
                                      {"pcie_gb_per_s", pcie_gbs},
                                      {"retrieval_pcie_gb_per_s", retrieve_pcie_gbs},
                                      {"retrieved_clusters_per_group", st.retrieved_clusters / groups},
                                      {"estimated_clusters_per_group", st.estimated_clusters / groups},
                                      {"clusters_per_group", st.clusters / groups},
                                      {"host_bytes", kv.host_bytes()}};
          *json << r.dump() << "\n";
        }
      }
    }
  }
}
#endif

}  // namespace

void register_gpu_wave_bench(CLI::App& bench) {
  auto o = std::make_shared<WaveBenchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "wave", "One layer of GPU wave attention (index, host store, cluster cache) against dense decode attention");
  cmd->add_option("--context", o->contexts, "Context lengths, e.g. 32k,128k")->capture_default_str();
  cmd->add_option("--batch", o->batches, "Batch sizes, e.g. 1,8")->capture_default_str();
  cmd->add_option("--heads", o->heads, "Query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("--head-dim", o->head_dim, "Head dimension (64 or 128)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed decode steps")->capture_default_str();
  cmd->add_option("--warmup-steps", o->warmup_steps, "Untimed decode steps first (they fill the cache)")
      ->capture_default_str();
  cmd->add_option("--cache-fraction", o->cache_fraction,
                  "GPU cluster cache as a fraction of the offloaded KV's bytes in bf16 (fp8 fits twice the slots)")
      ->capture_default_str();
  cmd->add_option("--host-kv", o->host_kv,
                  "Host KV formats, each run on the same steps: bf16, fp8 (e4m3, per-cluster scales) or bf16,fp8")
      ->capture_default_str();
  cmd->add_option("--retrieval-budget", o->retrieval_budget, "Fraction of clusters attended exactly")
      ->capture_default_str();
  cmd->add_option("--estimation-budget", o->estimation_budget, "Fraction of clusters estimated (>= 1: all others)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Synthetic workload seed")->capture_default_str();
  cmd->add_option("--json-out", o->json_out, "Append one JSON line per row to this file");
  cmd->callback([o] {
#ifdef RETRO_WITH_CUDA
    run_wave_bench(*o);
#else
    RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench wave needs a CUDA build (configure with -DRETRO_CUDA=ON)");
#endif
  });
}

}  // namespace retro::launcher
