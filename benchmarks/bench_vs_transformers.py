"""llama2_minimal against Hugging Face transformers on the same weights, on this machine, in one run.

    python benchmarks/bench_vs_transformers.py [--config tiny|small] [--device cpu|cuda] [--dtype float32|bfloat16]

For each implementation it measures, each task in a fresh subprocess so that one cannot warm or fragment
the memory of the other:
  train      forward + backward of a batch of 16 x 256 tokens (cross-entropy on the logits), tokens/s
  gen_b1     greedy decoding with the KV cache, batch 1, new tokens/s
  gen_b16    the same with 16 prompts at once, new tokens/s (all 16 sequences counted)
and the peak memory of each task above what the process held before it (CPU: resident set sampled every
millisecond; CUDA: torch.cuda.max_memory_allocated). Ratios are ours / transformers' (>1: we are faster; for
memory <1: we use less). Both models are built from one random state dict and checked to give the same logits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time

CONFIGS = {
    # About the size of transformers' tiny test Llama (3.3M parameters).
    "tiny": dict(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=4096, multiple_of=32, max_seq_len=512),
    # The course's laptop-scale model.
    "small": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=4096, multiple_of=32, max_seq_len=512),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block above the level at its start (CPU RSS sampled by a thread, or CUDA allocator)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_bytes()
            self.high = self.base
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.high = max(self.high, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.high, _rss_bytes()) - self.base


def build_models(config: str, device: str, dtype_name: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama2_minimal.checkpoint import args_to_hf_config, meta_to_hf_state_dict
    from llama2_minimal.model import ModelArgs, Transformer

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    args = ModelArgs(**CONFIGS[config])
    ours = Transformer(args).to(device=device, dtype=dtype)
    hf_config = LlamaConfig(**{k: v for k, v in args_to_hf_config(args).items() if k != "torch_dtype"})
    hf = LlamaForCausalLM(hf_config).to(device=device, dtype=dtype)
    hf.load_state_dict(meta_to_hf_state_dict(ours.state_dict(), args), strict=True)
    hf.config._attn_implementation = "sdpa"
    return args, ours, hf


def _logits(impl: str, model, tokens):
    return model(tokens) if impl == "ours" else model(tokens).logits


def run_task(
    impl: str, task: str, config: str, device: str, dtype_name: str, steps: int, new_tokens: int, repeats: int, queue
) -> None:
    import torch
    import torch.nn.functional as F

    from llama2_minimal.generation import generate

    args, ours, hf = build_models(config, device, dtype_name)
    model = ours if impl == "ours" else hf
    del ours, hf  # keep only the measured model resident
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(1)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )

    if task == "train":
        model.train()
        x = torch.randint(0, args.vocab_size, (16, 257), generator=gen).to(device)
        inputs, targets = x[:, :-1], x[:, 1:]

        def step():
            with autocast:
                logits = _logits(impl, model, inputs)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
            model.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        sync()
        value = 0.0
        for _ in range(repeats):  # the best of a few runs: other processes only ever slow a run down
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            value = max(value, steps * inputs.numel() / (time.perf_counter() - t0))
        with PeakMemory(device) as mem:  # measured apart: the sampling thread would slow the timed runs
            step()
            sync()
    else:
        model.eval()
        batch = 1 if task == "gen_b1" else 16
        prompts = torch.randint(3, args.vocab_size, (batch, 16), generator=gen)

        def decode(n):
            if impl == "ours":
                out = generate(model, prompts.tolist(), max_new_tokens=n, temperature=0, eos_id=None)
                return sum(len(o) for o in out)
            with torch.inference_mode():
                out = model.generate(
                    prompts.to(device),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            return (out.shape[1] - prompts.shape[1]) * batch

        decode(8)
        sync()
        value = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            produced = decode(new_tokens)
            sync()
            value = max(value, produced / (time.perf_counter() - t0))
        with PeakMemory(device) as mem:
            decode(new_tokens)
            sync()
    queue.put({"value": value, "peak_mb": mem.peak / 2**20})


def measure(impl, task, opts):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=run_task,
        args=(impl, task, opts.config, opts.device, opts.dtype, opts.steps, opts.new_tokens, opts.repeats, queue),
    )
    proc.start()
    result = queue.get()
    proc.join()
    return result


def check_parity(opts) -> float:
    import torch

    args, ours, hf = build_models(opts.config, opts.device, "float32")
    x = torch.randint(0, args.vocab_size, (2, 64)).to(opts.device)
    with torch.no_grad():
        return (ours(x) - hf(x).logits).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per task; the best is reported")
    parser.add_argument("--new-tokens", type=int, default=200, help="new tokens per sequence when decoding")
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args()

    import torch
    import transformers

    from llama2_minimal.model import ModelArgs, count_parameters

    n_params = count_parameters(ModelArgs(**CONFIGS[opts.config]))
    print(
        f"config {opts.config}: {n_params / 1e6:.2f}M parameters; device {opts.device}, {opts.dtype}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"max |logit difference| (float32): {check_parity(opts):.2e}")
    rows = {}
    units = {
        "train": "tokens/s (16x256 fwd+bwd)",
        "gen_b1": "new tokens/s (greedy, batch 1)",
        "gen_b16": "new tokens/s (greedy, batch 16)",
    }
    print(f"\n{'task':<34}{'ours':>12}{'transformers':>14}{'ratio':>8}   peak MB ours / transformers")
    for task, unit in units.items():
        a, b = measure("ours", task, opts), measure("hf", task, opts)
        rows[task] = {"ours": a, "transformers": b, "speed_ratio": a["value"] / b["value"]}
        print(
            f"{unit:<34}{a['value']:>12.0f}{b['value']:>14.0f}{a['value'] / b['value']:>7.2f}x"
            f"   {a['peak_mb']:.0f} / {b['peak_mb']:.0f}"
        )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"config": opts.config, "device": opts.device, "dtype": opts.dtype, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
