#!/usr/bin/env python3
"""Prefill baseline on the GPU machine: Hugging Face transformers (LlamaForCausalLM, bf16, SDPA, random
weights) running a whole prompt through the model, the counterpart of the prefill columns of
`retroinfer bench model --backend cuda`. Model shapes come from this project's presets
(configs/models/NAME.json), so both sides run the same architecture.

  python3 tools/hf_prefill.py --preset llama3-8b --context 8192,32768 --batch 1 [--chunk 0]

Only the last position's logits are computed (`logits_to_keep=1`), as the runtime does; --chunk N runs
the prompt in chunks of N tokens through a DynamicCache (0: one forward pass). One JSON line per row on
stdout: prefill seconds and tokens/s, median of --reps after one warm-up.
"""
import argparse, json, os, statistics, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sizes(text):
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        out.append(int(float(x[:-1]) * 1024) if x.endswith("k") else int(x))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama3-8b")
    ap.add_argument("--context", default="8k,32k")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--layers", type=int, default=0, help="override the preset's layer count")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    with open(os.path.join(ROOT, "configs", "models", a.preset + ".json")) as f:
        cfg = json.load(f)
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "rope_theta", "rms_norm_eps")
    p = {k: cfg[k] for k in keep if k in cfg}
    if a.layers:
        p["num_hidden_layers"] = a.layers
    config = LlamaConfig(max_position_embeddings=1 << 21, tie_word_embeddings=False, **p)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.config._attn_implementation = "sdpa"
    for ctx in sizes(a.context):
        for bs in sizes(a.batch):
            row = dict(bench="hf-prefill", preset=a.preset, layers=p["num_hidden_layers"], context=ctx, batch=bs,
                       chunk=a.chunk, device=torch.cuda.get_device_name())
            try:
                ids = torch.randint(0, p["vocab_size"], (bs, ctx), device="cuda")

                def run():
                    with torch.no_grad():
                        if a.chunk <= 0:
                            model(input_ids=ids, use_cache=False, logits_to_keep=1)
                            return
                        cache = DynamicCache()
                        for s in range(0, ctx, a.chunk):
                            model(input_ids=ids[:, s:s + a.chunk], past_key_values=cache, use_cache=True,
                                  logits_to_keep=1)

                run()
                torch.cuda.synchronize()
                ts = []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    run()
                    torch.cuda.synchronize()
                    ts.append(time.perf_counter() - t0)
                sec = statistics.median(ts)
                row.update(prefill_s=round(sec, 4), tokens_per_s=round(bs * ctx / sec, 1))
            except torch.OutOfMemoryError:
                row.update(error="out of memory")
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
