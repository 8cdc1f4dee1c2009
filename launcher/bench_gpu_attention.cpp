// `retroinfer bench dense-decode`: the GPU decode-attention kernel alone, per layer, on random bf16
// K/V of the requested shapes. Prints a markdown table and (with --json-out) one JSON line per row.

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "launcher/bench_util.h"
#include "launcher/commands.h"
#include "runtime/core/allocator.h"
#include "runtime/core/error.h"

#ifdef RETRO_WITH_CUDA
#include <cuda_runtime.h>

#include "attention/cuda/decode_attention.h"
#include "attention/cuda/prefill_attention.h"
#include "launcher/device_buffer.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/cuda/fill.h"
#include "runtime/core/system_info.h"
#endif

namespace retro::launcher {

namespace {

// Shape and timing options shared by the kernel benches.
struct KernelBenchOptions {
  std::string contexts;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  int warmup = 5;
  int reps = 50;
  std::string json_out;
};

struct DenseDecodeOptions : KernelBenchOptions {
  DenseDecodeOptions() { contexts = "32k,128k"; }
  std::string batches = "1,4";
  std::string kernels = "auto";  // comma list of auto, registers, async
};

// --kernel names of dense-prefill, in the order of attention::cuda::PrefillKernel.
const std::vector<std::string> kPrefillKernelNames = {"auto", "mma", "wgmma", "wgmma-pipelined", "wgmma-tma",
                                                      "wgmma-ws"};

struct DensePrefillOptions : KernelBenchOptions {
  DensePrefillOptions() {
    contexts = "16k,64k";
    warmup = 2;
    reps = 5;
  }
  std::string kernels = "auto";  // comma list of kPrefillKernelNames
};

void add_kernel_bench_options(CLI::App& cmd, KernelBenchOptions& o) {
  cmd.add_option("--context", o.contexts, "Context lengths, e.g. 16k,128k,1m")->capture_default_str();
  cmd.add_option("--heads", o.heads, "Query heads")->capture_default_str();
  cmd.add_option("--kv-heads", o.kv_heads, "KV heads")->capture_default_str();
  cmd.add_option("--head-dim", o.head_dim, "Head dimension (64 or 128)")->capture_default_str();
  cmd.add_option("--warmup", o.warmup, "Untimed runs first")->capture_default_str();
  cmd.add_option("--reps", o.reps, "Timed runs (median reported)")->capture_default_str();
  cmd.add_option("--json-out", o.json_out, "Append one JSON line per row to this file");
}

[[maybe_unused]] [[noreturn]] void needs_cuda(const char* bench) {
  RETRO_THROW_KIND(ErrorKind::kUnsupported, "bench {} needs a CUDA build (configure with -DRETRO_CUDA=ON)", bench);
}

#ifdef RETRO_WITH_CUDA
// Median of `reps` timings of fn (CUDA events), after `warmup` untimed runs.
template <typename Fn>
double median_ms(Fn&& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  RETRO_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  RETRO_CUDA_CHECK(cudaEventCreate(&a));
  RETRO_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    RETRO_CUDA_CHECK(cudaEventRecord(a));
    fn();
    RETRO_CUDA_CHECK(cudaEventRecord(b));
    RETRO_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    RETRO_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void run_dense_decode(const DenseDecodeOptions& o) {
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench dense-decode needs a GPU: {}",
                   query_cuda_runtime().error);
  std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  std::vector<int64_t> batches = parse_size_list(o.batches, "--batch");
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
  const std::vector<std::string> names = parse_name_list(o.kernels, "--kernel");  // checked by the option
  std::vector<attention::cuda::DecodeKernel> kernels;
  for (const std::string& name : names) {
    using attention::cuda::DecodeKernel;
    const DecodeKernel asked = name == "async"       ? DecodeKernel::kAsync
                               : name == "registers" ? DecodeKernel::kRegisters
                                                     : DecodeKernel::kAuto;
    kernels.push_back(attention::cuda::resolve_decode_kernel(asked));
  }
  fmt::print("| context | batch | kernel | heads (q/kv) | head_dim | splits | ms/layer | KV GB | GB/s |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t ctx : contexts) {
    for (int64_t bs : batches) {
      const size_t kv_elems = size_t(bs) * o.kv_heads * size_t(ctx) * o.head_dim;
      const size_t kv_bytes = 2 * kv_elems * 2;
      size_t free_b = 0, total_b = 0;
      RETRO_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      if (kv_bytes + (size_t(1) << 30) > free_b) {
        fmt::print("| {} | {} | - | {}/{} | {} | - | out of memory ({} needed) | | |\n", ctx, bs, o.heads, o.kv_heads,
                   o.head_dim, format_bytes(kv_bytes));
        continue;
      }
      DeviceBuffer k(kv_elems * 2), v(kv_elems * 2), q(size_t(bs) * o.heads * o.head_dim * 2),
          out(size_t(bs) * o.heads * o.head_dim * 2), lse(size_t(bs) * o.heads * 4), lens(size_t(bs) * 4);
      RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(k.ptr, kv_elems, 1, 1.0f, nullptr));
      RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(v.ptr, kv_elems, 2, 1.0f, nullptr));
      RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(q.ptr, size_t(bs) * o.heads * o.head_dim, 3, 1.0f, nullptr));
      std::vector<int32_t> host_lens(static_cast<size_t>(bs), static_cast<int32_t>(ctx));
      RETRO_CUDA_CHECK(cudaMemcpy(lens.ptr, host_lens.data(), host_lens.size() * 4, cudaMemcpyHostToDevice));
      auto plan = attention::cuda::plan_decode_attention(int(bs), o.heads, o.kv_heads, o.head_dim, ctx);
      DeviceBuffer ws(plan.workspace_bytes);
      attention::cuda::DecodeAttentionParams p;
      p.q = q.ptr;
      p.q_stride_batch = int64_t(o.heads) * o.head_dim;
      p.k = k.ptr;
      p.v = v.ptr;
      p.kv_stride_batch = int64_t(o.kv_heads) * ctx * o.head_dim;
      p.kv_stride_head = ctx * o.head_dim;
      p.kv_stride_token = o.head_dim;
      p.seq_lens = static_cast<const int32_t*>(lens.ptr);
      p.out = out.ptr;
      p.lse = static_cast<float*>(lse.ptr);
      p.batch = int(bs);
      p.num_q_heads = o.heads;
      p.num_kv_heads = o.kv_heads;
      p.head_dim = o.head_dim;
      p.sm_scale = 1.0f / std::sqrt(float(o.head_dim));
      for (attention::cuda::DecodeKernel kernel : kernels) {
        p.kernel = kernel;
        const char* name = kernel == attention::cuda::DecodeKernel::kAsync ? "async" : "registers";
        double ms = median_ms([&] { attention::cuda::run_decode_attention(p, plan, ws.ptr, nullptr); }, o.warmup,
                              o.reps);
        double gb = double(kv_bytes) / 1e9;
        fmt::print("| {} | {} | {} | {}/{} | {} | {} | {:.4f} | {:.3f} | {:.0f} |\n", ctx, bs, name, o.heads,
                   o.kv_heads, o.head_dim, plan.num_splits, ms, gb, gb / ms * 1e3);
        if (json) {
          nlohmann::ordered_json row = {{"bench", "dense-decode"}, {"device", gpus[0].name}, {"kernel", name},
                                        {"heads", o.heads},        {"kv_heads", o.kv_heads}, {"head_dim", o.head_dim},
                                        {"context", ctx},          {"batch", bs},            {"splits", plan.num_splits},
                                        {"ms_per_layer", ms},      {"kv_gb", gb},            {"gb_per_s", gb / ms * 1e3}};
          *json << row.dump() << "\n";
        }
      }
    }
  }
}


void run_dense_prefill(const DensePrefillOptions& o) {
  const std::vector<int64_t> contexts = parse_size_list(o.contexts, "--context");
  const std::vector<std::string> names = parse_name_list(o.kernels, "--kernel");  // checked by the option
  auto gpus = query_gpus();
  RETRO_CHECK_KIND(!gpus.empty(), ErrorKind::kUnsupported, "bench dense-prefill needs a GPU: {}",
                   query_cuda_runtime().error);
  std::unique_ptr<std::ofstream> json;
  if (!o.json_out.empty()) json = std::make_unique<std::ofstream>(o.json_out, std::ios::app);
  // The kernels to time, auto resolved to the one it picks on this GPU.
  using attention::cuda::PrefillKernel;
  static_assert(int(PrefillKernel::kWgmmaWs) == 5, "kPrefillKernelNames follows PrefillKernel");
  std::vector<PrefillKernel> kernels;
  for (const std::string& name : names) {
    const auto at = std::find(kPrefillKernelNames.begin(), kPrefillKernelNames.end(), name);
    kernels.push_back(attention::cuda::resolve_prefill_kernel(PrefillKernel(at - kPrefillKernelNames.begin())));
  }
  fmt::print("| context | kernel | heads (q/kv) | head_dim | ms/layer | TFLOP/s (causal) |\n|---|---|---|---|---|---|\n");
  for (int64_t ctx : contexts) {
    const size_t q_elems = size_t(ctx) * o.heads * o.head_dim, kv_elems = size_t(ctx) * o.kv_heads * o.head_dim;
    DeviceBuffer q(q_elems * 2), k(kv_elems * 2), v(kv_elems * 2), out(q_elems * 2), lse(size_t(ctx) * o.heads * 4);
    RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(q.ptr, q_elems, 4, 1.0f, nullptr));
    RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(k.ptr, kv_elems, 5, 1.0f, nullptr));
    RETRO_CUDA_CHECK(retro::cuda::fill_normal_bf16(v.ptr, kv_elems, 6, 1.0f, nullptr));
    attention::cuda::PrefillAttentionParams p;
    p.q = q.ptr;
    p.q_stride_token = int64_t(o.heads) * o.head_dim;
    p.k = k.ptr;
    p.v = v.ptr;
    p.kv_stride_token = int64_t(o.kv_heads) * o.head_dim;
    p.kv_stride_head = o.head_dim;
    p.out = out.ptr;
    p.lse = static_cast<float*>(lse.ptr);
    p.n_q = ctx;
    p.n_kv = ctx;
    p.num_q_heads = o.heads;
    p.num_kv_heads = o.kv_heads;
    p.head_dim = o.head_dim;
    p.sm_scale = 1.0f / std::sqrt(float(o.head_dim));
    for (attention::cuda::PrefillKernel kernel : kernels) {
      p.kernel = kernel;
      const char* name = kPrefillKernelNames[size_t(kernel)].c_str();
      double ms = median_ms([&] { attention::cuda::run_prefill_attention(p, nullptr); }, o.warmup, o.reps);
      const double flops = 4.0 * o.heads * o.head_dim * double(ctx) * double(ctx) / 2.0;
      const double tflops = flops / ms / 1e9;
      fmt::print("| {} | {} | {}/{} | {} | {:.3f} | {:.1f} |\n", ctx, name, o.heads, o.kv_heads, o.head_dim, ms,
                 tflops);
      if (json) {
        nlohmann::ordered_json row = {{"bench", "dense-prefill"}, {"device", gpus[0].name}, {"kernel", name},
                                      {"heads", o.heads},         {"kv_heads", o.kv_heads}, {"head_dim", o.head_dim},
                                      {"context", ctx},           {"ms_per_layer", ms},     {"tflops", tflops}};
        *json << row.dump() << "\n";
      }
    }
  }
}
#endif

// Checks a --kernel comma list against the known names.
CLI::Validator kernel_list(std::vector<std::string> known) {
  return CLI::Validator(
      [known](std::string& text) -> std::string {
        try {
          for (const std::string& name : parse_name_list(text, "--kernel"))
            if (std::find(known.begin(), known.end(), name) == known.end())
              return fmt::format("'{}' is none of {}", name, fmt::join(known, ", "));
        } catch (const Error& e) {
          return e.what();
        }
        return "";
      },
      "KERNELS");
}

}  // namespace

void register_gpu_attention_benches(CLI::App& bench) {
  auto prefill = std::make_shared<DensePrefillOptions>();
  CLI::App* p = bench.add_subcommand("dense-prefill", "GPU causal prefill attention per layer (tensor cores) on random Q/K/V");
  add_kernel_bench_options(*p, *prefill);
  p->add_option("--kernel", prefill->kernels,
                "Kernels to time, comma list: auto (wgmma-ws on Hopper builds with sm_90a, else mma), mma, "
                "wgmma, wgmma-pipelined, wgmma-tma (the pipelined schedule with TMA loads), wgmma-ws (warp-specialised: "
                "a TMA producer warpgroup and two consumer warpgroups)")
      ->capture_default_str()
      ->check(kernel_list(kPrefillKernelNames));
  p->callback([prefill] {
#ifdef RETRO_WITH_CUDA
    run_dense_prefill(*prefill);
#else
    needs_cuda("dense-prefill");
#endif
  });

  auto decode = std::make_shared<DenseDecodeOptions>();
  CLI::App* d = bench.add_subcommand("dense-decode", "GPU dense decode attention per layer (split-KV, GQA) on random K/V");
  add_kernel_bench_options(*d, *decode);
  d->add_option("--batch", decode->batches, "Batch sizes, e.g. 1,4,8")->capture_default_str();
  d->add_option("--kernel", decode->kernels,
                "Kernels to time, comma list: auto (registers unless RETRO_DECODE_KERNEL=async), registers (K/V "
                "loaded into registers a block ahead), async (K/V streamed through shared memory by cp.async)")
      ->capture_default_str()
      ->check(kernel_list({"auto", "registers", "async"}));
  d->callback([decode] {
#ifdef RETRO_WITH_CUDA
    run_dense_decode(*decode);
#else
    needs_cuda("dense-decode");
#endif
  });
}

}  // namespace retro::launcher
