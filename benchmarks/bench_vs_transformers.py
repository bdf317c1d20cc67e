"""llama2_minimal against Hugging Face transformers on the same weights, on this machine, in one run.

    python benchmarks/bench_vs_transformers.py [--config tiny|small|laptop] [--device cpu|cuda]
                                               [--dtype float32|bfloat16] [--autocast] [--tasks ...] [--json F]

Tasks, each run in a fresh subprocess per implementation, so that one cannot warm or fragment the other's memory:
  train       forward + backward of 16 x 256 tokens (cross-entropy on the logits), tokens/s
  gen_b1      greedy decoding with the KV cache, batch 1, 200 new tokens: new tokens/s
  gen_b16     the same with 16 prompts at once (all 16 sequences counted)
  sample_b16  sampling at Meta's chat settings (temperature 0.6, top-p 0.9), 16 prompts
  sample_k    rejection sampling's path: 32 prompts x 16 samples = 512 sequences at temperature 1.0, top-p 1.0,
              80 new tokens (train/rejection.py sample_answers)
With --autocast, training runs under bf16 autocast in both (weights and gradients stay float32) and transformers'
float32 training is measured too, for the ratio against it; decoding stays in --dtype.

Memory, measured apart from the timed runs (which it would slow), in the same fresh process:
  tensor peak  the most tensor memory alive at once during one more run of the task, above what was alive before
               it: every allocation and free the PyTorch profiler records, summed in order. Exact, and the same on
               every run (CUDA: torch.cuda.max_memory_allocated, also exact).
  RSS peak     the process's resident-set high-water mark (Linux VmHWM, reset before the run through
               /proc/self/clear_refs) above the resident set at the start of that run: what the operating system
               saw, allocator caches included. It varies from run to run; the tensor peak does not.
Model FLOP utilisation (MFU) is the model's FLOPs per second against this machine's measured matrix-product peak
(the best of a few large square products in that dtype): FLOPs per token 6N + 12 L d T for training, 2N + 4 L d T
for decoding (N: the parameters of the matrix products; L layers, d the width, T the tokens attended; PaLM's
convention, Chowdhery et al. 2022, App. B). Speed ratios are ours / transformers' (> 1: we are faster); memory
ratios the same (< 1: we use less). Both models are built from one random state dict and checked to give the
same logits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

CONFIGS = {
    # About the size of transformers' tiny test Llama (3.3M parameters).
    "tiny": dict(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=4096, multiple_of=32, max_seq_len=512),
    # Six layers at the laptop profile's width.
    "small": dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=4096, multiple_of=32, max_seq_len=512),
    # The laptop profile's model itself (profiles.py).
    "laptop": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=2048, multiple_of=64, max_seq_len=512),
}
TASKS = {
    "train": "training tokens/s (16 x 256, fwd + bwd)",
    "gen_b1": "greedy decoding, batch 1, new tokens/s",
    "gen_b16": "greedy decoding, batch 16",
    "sample_b16": "sampling T 0.6 top-p 0.9, batch 16",
    "sample_k": "rejection sampling: 32 prompts x 16 samples",
}
# (batch, prompt length, new tokens, temperature, top-p) of the decoding tasks
DECODING = {
    "gen_b1": (1, 16, 200, 0.0, 1.0),
    "gen_b16": (16, 16, 200, 0.0, 1.0),
    "sample_b16": (16, 16, 200, 0.6, 0.9),
    "sample_k": (512, 24, 80, 1.0, 1.0),
}
TRAIN_BATCH, TRAIN_LEN = 16, 256


def matmul_parameters(args) -> int:
    """N of the FLOP count: every weight a token is multiplied by (attention, feed-forward, output head), not the
    embedding (a lookup) nor the norms."""
    attention = args.dim * args.head_dim * (2 * args.n_heads + 2 * args.kv_heads)
    return args.n_layers * (attention + 3 * args.dim * args.hidden_dim) + args.vocab_size * args.dim


def flops_per_token(args, task: str) -> float:
    n, depth = matmul_parameters(args), args.n_layers * args.dim
    if task == "train":
        return 6 * n + 12 * depth * TRAIN_LEN
    _batch, prompt, new, _t, _p = DECODING[task]
    return 2 * n + 4 * depth * (prompt + new / 2)  # the average context a new token attends to


def matmul_peak(device: str, dtype_name: str) -> float:
    """This machine's best matrix-product rate in FLOP/s, over square products of 1024 and 2048 (CUDA: 2048 and
    4096) by torch.mm and, on CPU, by oneDNN with a prepacked weight (on this project's AMD machine oneDNN's float32
    is twice torch.mm's, whose BLAS is not tuned for the CPU: the peak is the faster one)."""
    import torch

    from llama2_minimal.generation import _onednn_linear, _onednn_pack, onednn_linear_available

    dtype = getattr(torch, dtype_name)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    for n in (1024, 2048) if device == "cpu" else (2048, 4096):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        products = [lambda a=a, b=b: a @ b]
        if device == "cpu" and dtype == torch.float32 and onednn_linear_available():
            packed = _onednn_pack(b)
            products.append(lambda a=a, packed=packed: _onednn_linear(a, packed))
        for product in products:
            product()
            sync()
            reps = max(3, int(2e10 / (2 * n**3))) if device == "cpu" else 50
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(reps):
                    product()
                sync()
                best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return best


# --- memory -----------------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def tensor_peak_bytes(fn) -> int:
    """The most tensor memory alive at once while fn() runs, above what was alive when it began (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())  # fmt: skip
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def rss_peak_bytes(fn) -> int | None:
    """The resident-set high-water mark during fn() above the resident set when it began (Linux), else None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        start = _rss_kib("VmRSS")
    except OSError:
        return None
    fn()
    return (_rss_kib("VmHWM") - start) * 1024


def memory(device: str, fn) -> dict:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"tensor_peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20, "rss_peak_mb": None}
    rss = rss_peak_bytes(fn)
    gc.collect()
    return {"tensor_peak_mb": tensor_peak_bytes(fn) / 2**20, "rss_peak_mb": None if rss is None else rss / 2**20}


# --- the tasks --------------------------------------------------------------------------------------------------


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


def run_task(impl: str, task: str, opts: dict, autocast_on: bool, queue) -> None:
    import torch
    import torch.nn.functional as F

    from llama2_minimal.generation import generate

    device = opts["device"]
    args, ours, hf = build_models(opts["config"], device, opts["dtype"])
    model = ours if impl == "ours" else hf
    del ours, hf  # keep only the measured model resident
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(1)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_on)

    if task == "train":
        model.train()
        x = torch.randint(0, args.vocab_size, (TRAIN_BATCH, TRAIN_LEN + 1), generator=gen).to(device)
        inputs, targets = x[:, :-1], x[:, 1:]

        def loss_of():  # as the training loop's loss function: the logits are freed once the loss is computed
            with autocast:
                logits = _logits(impl, model, inputs)
                return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

        def run():
            loss_of().backward()
            model.zero_grad(set_to_none=True)

        produced = inputs.numel() * opts["steps"]
        timed = lambda: [run() for _ in range(opts["steps"])]  # noqa: E731
        for _ in range(2):
            run()
    else:
        model.eval()
        batch, prompt_len, new, temperature, top_p = DECODING[task]
        prompts = torch.randint(3, args.vocab_size, (batch, prompt_len), generator=gen)

        def run(n=new):
            if impl == "ours":
                out = generate(model, prompts.tolist(), max_new_tokens=n, temperature=temperature, top_p=top_p,
                               eos_id=None, seed=0)  # fmt: skip
                return sum(len(o) for o in out)
            sampling = {"do_sample": False} if temperature == 0 else {
                "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}  # as ours: no top-k
            with torch.inference_mode():
                out = model.generate(prompts.to(device), max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                     pad_token_id=0, **sampling)  # fmt: skip
            return (out.shape[1] - prompts.shape[1]) * batch

        produced = batch * new
        timed = run
        run(8)
    sync()
    value = 0.0
    for _ in range(opts["repeats"]):  # the best of a few runs: other processes only ever slow a run down
        t0 = time.perf_counter()
        timed()
        sync()
        value = max(value, produced / (time.perf_counter() - t0))
    queue.put({"value": value, **memory(device, run)})


def measure(impl: str, task: str, opts: dict, autocast_on: bool) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_task, args=(impl, task, opts, autocast_on, queue))
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
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--autocast", action="store_true", help="train under bf16 autocast (both implementations)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per task; the best is reported")
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args()

    import torch
    import transformers

    from llama2_minimal.model import ModelArgs, count_parameters

    args = ModelArgs(**CONFIGS[opts.config])
    print(f"config {opts.config}: {count_parameters(args) / 1e6:.2f}M parameters; device {opts.device}, {opts.dtype}"
          f"{', training under bf16 autocast' if opts.autocast else ''}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"max |logit difference| (float32): {check_parity(opts):.2e}")
    peaks = {"float32": matmul_peak(opts.device, "float32")}
    if opts.autocast or opts.dtype == "bfloat16":
        peaks["bfloat16"] = matmul_peak(opts.device, "bfloat16")
    print("matrix-product peak here: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    task_opts = {k: getattr(opts, k) for k in ("config", "device", "dtype", "steps", "repeats")}
    rows = {}
    print(f"\n{'task':<46}{'ours':>9}{'transformers':>14}{'ratio':>7}   MFU ours / theirs   "
          "tensor peak MiB (ratio)   RSS peak MiB")
    for task in opts.tasks:
        bf16 = opts.autocast and task == "train"
        a, b = measure("ours", task, task_opts, bf16), measure("hf", task, task_opts, bf16)
        peak = peaks["bfloat16" if bf16 or opts.dtype == "bfloat16" else "float32"]
        flops = flops_per_token(args, task)
        row = {"ours": a, "transformers": b, "speed_ratio": a["value"] / b["value"],
               "memory_ratio": a["tensor_peak_mb"] / b["tensor_peak_mb"],
               "mfu": {"ours": a["value"] * flops / peak, "transformers": b["value"] * flops / peak}}  # fmt: skip
        rss = "" if a["rss_peak_mb"] is None else f"{a['rss_peak_mb']:.0f} / {b['rss_peak_mb']:.0f}"
        label = TASKS[task] + (" (bf16 autocast)" if bf16 else "")
        print(f"{label:<46}{a['value']:>9.0f}{b['value']:>14.0f}{row['speed_ratio']:>6.2f}x"
              f"   {row['mfu']['ours']:>6.1%} / {row['mfu']['transformers']:<6.1%}"
              f"   {a['tensor_peak_mb']:>6.0f} / {b['tensor_peak_mb']:<6.0f} ({row['memory_ratio']:.2f})   {rss}")
        if bf16:
            c = measure("hf", task, task_opts, False)
            row["transformers_float32"] = c
            row["speed_ratio_vs_float32"] = a["value"] / c["value"]
            c_mfu = c["value"] * flops / peaks["float32"]
            print(f"{'  transformers in float32, for comparison':<46}{'':>9}{c['value']:>14.0f}"
                  f"{row['speed_ratio_vs_float32']:>6.2f}x   {'':>6}   {c_mfu:<6.1%}   {'':>6}   "
                  f"{c['tensor_peak_mb']:<6.0f}")
        rows[task] = row
    if opts.json:
        out = {"config": opts.config, "device": opts.device, "dtype": opts.dtype, "autocast": opts.autocast,
               "threads": torch.get_num_threads(), "matmul_peak_flops": peaks, "results": rows}  # fmt: skip
        tmp = opts.json + ".partial"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, opts.json)


if __name__ == "__main__":
    main()
