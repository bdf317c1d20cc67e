"""The one training loop every stage shares: AdamW with Llama 2's settings, linear warmup then cosine decay to
10% of the peak, gradient clipping, gradient accumulation, bf16 autocast where the device computes in bf16 natively
(CUDA, and CPUs with AVX512-BF16, AMX or ARM's BF16 extension; fp32 elsewhere), DistributedDataParallel under
torchrun, a progress bar, metrics as JSON lines, atomic checkpoints and exact resume.

A stage gives the loop a model, a `batches(step, micro, rank, world_size)` function that returns the micro-batch
of a step deterministically (so resuming at step k sees exactly the data an uninterrupted run would), and a
`loss_fn(model, batch) -> (loss, n_items)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checkpoint import atomic_directory
from ..profiles import PRECISIONS


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    warmup: int = 0
    min_lr_ratio: float = 0.1  # cosine decay to 10% of the peak (§2.2)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimiser step
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    seed: int = 0
    schedule: str = "cosine"  # or "constant" (PPO, §3.2.3)
    # "bf16" (autocast: matrix products in bf16, weights and optimiser state in fp32), "fp32", or "auto" (bf16 where
    # the device computes it natively). The profiles' stages pass their profile's (auto but for ci); a direct call
    # trains in fp32 unless it asks, so that its arithmetic is the one a learner writes by hand (lesson 06).
    precision: str = "fp32"


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (x86: AVX512-BF16 or AMX-BF16; ARM: the BF16 extension), read from
    /proc/cpuinfo (or the text given) or, on macOS, sysctl. Elsewhere PyTorch still runs bf16 by converting to fp32,
    which is slower than fp32 itself."""
    if cpuinfo is None and sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
            return out.stdout.strip() == "1"
        except OSError:
            return False
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"bf16" or "fp32": `precision` itself unless it is "auto", which is bf16 where `device` computes it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        try:  # a GPU that only emulates bf16 (before Ampere) is slower in it, as a CPU is
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3: no such argument, and emulation not counted
            native = torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp32"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


def autocast_context(precision: str, device: torch.device | str):
    """The autocast context of a resolved precision on `device` (a disabled one for fp32)."""
    device = torch.device(device)
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warmup from lr/warmup to lr, then cosine
    decay to min_lr_ratio * lr at the last step."""
    if config.schedule == "constant":
        return config.lr
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup - 1)
    progress = min(1.0, (step - config.warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (beta1 0.9, beta2 0.95, eps 1e-5); weight decay on the matrices only, not on the norm weights. A
    parameter with an `lr_scale` attribute gets its own group, at that multiple of the schedule's rate and without
    weight decay (a reward model's few evidence weights: train/reward.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    scaled = [p for p in params if hasattr(p, "lr_scale")]
    plain = [p for p in params if not hasattr(p, "lr_scale")]
    decay = [p for p in plain if p.dim() >= 2]
    other = [p for p in plain if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    for scale in sorted({p.lr_scale for p in scaled}):
        groups.append({"params": [p for p in scaled if p.lr_scale == scale], "weight_decay": 0.0, "lr_scale": scale})
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def next_token_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the next token; targets of -100 are ignored (padding, masked prompts)."""
    logits = model(batch["inputs"])
    targets = batch["targets"]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, int((targets != -100).sum())


def distributed() -> tuple[int, int]:
    """(rank, world_size): (0, 1) unless running under torchrun with an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return distributed()


CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"


def _save(out_dir: Path, model, optimizer, step: int, tokens: int, config: TrainConfig) -> None:
    with atomic_directory(out_dir / CHECKPOINT, overwrite=True) as tmp:
        torch.save(model.state_dict(), tmp / "model.pth")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pth")
        torch.save(torch.get_rng_state(), tmp / "rng.pth")
        state = {"step": step, "tokens": tokens, "config": asdict(config)}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def _load(out_dir: Path, model, optimizer) -> tuple[int, int]:
    folder = out_dir / CHECKPOINT
    model.load_state_dict(torch.load(folder / "model.pth", weights_only=True, map_location="cpu"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pth", weights_only=True, map_location="cpu"))
    torch.set_rng_state(torch.load(folder / "rng.pth", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    return state["step"], state["tokens"]


def train(
    model: torch.nn.Module,
    batches: Callable[[int, int, int, int], dict],
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    loss_fn: Callable = next_token_loss,
    desc: str = "train",
    stop_after: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train `model` for config.steps optimiser steps and return the logged metrics.

    With out_dir, metrics go to out_dir/metrics.jsonl and checkpoints to out_dir/checkpoint (every
    checkpoint_every steps and at the end); a run that finds a checkpoint there resumes from it exactly.
    stop_after=k stops after k steps (as an interruption would), leaving a checkpoint to resume from.
    """
    from tqdm.auto import tqdm

    rank, world_size = distributed()
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    out = Path(out_dir) if out_dir is not None else None
    start, tokens = 0, 0
    if out is not None and (out / CHECKPOINT / "state.json").is_file():
        start, tokens = _load(out, model, optimizer)
    else:
        torch.manual_seed(config.seed)
    history: list[dict] = []
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        metrics = out / METRICS
        if metrics.is_file():  # keep the log of the steps the checkpoint holds, drop any after it
            kept = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            history = [m for m in kept if m["step"] < start]
            metrics.write_text("".join(json.dumps(m) + "\n" for m in history))
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = autocast_context(config.precision, device)
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(range(start, end), desc=desc, initial=start, total=config.steps, disable=not progress or rank != 0,
               dynamic_ncols=True)  # fmt: skip
    began = time.perf_counter()
    net.train()
    for step in bar:
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        total = torch.zeros((), device=device)
        counted = 0
        for micro in range(config.grad_accum):
            batch = {
                k: v.to(device) if torch.is_tensor(v) else v for k, v in batches(step, micro, rank, world_size).items()
            }
            sync = micro == config.grad_accum - 1 or world_size == 1
            context = net.no_sync() if not sync else contextlib.nullcontext()
            with context:
                with autocast:
                    loss, n = loss_fn(net, batch)
                (loss / config.grad_accum).backward()
            total += loss.detach() / config.grad_accum
            counted += n
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world_size > 1:  # the logged loss and token count are the global batch's (SUM: gloo has no AVG in old torch)
            stats = torch.stack([total, torch.tensor(float(counted), device=device)])
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            total, counted = stats[0] / world_size, int(stats[1].item())
        tokens += counted
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = {"step": step, "loss": total.item(), "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": tokens, "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
            if out is not None and rank == 0:
                with open(out / METRICS, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if (
            out is not None
            and rank == 0
            and (done == end or (config.checkpoint_every and done % config.checkpoint_every == 0))
        ):
            _save(out, model, optimizer, done, tokens, config)
    bar.close()
    return history
