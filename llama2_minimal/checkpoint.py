"""Checkpoints in Meta's layout and in Hugging Face's, and conversion between them.

Meta's folder:  params.json, consolidated.00.pth .. consolidated.NN.pth (one per model-parallel rank),
                tokenizer.model. Read with torch.load(weights_only=True): a course never unpickles a stranger's
                code.
Hugging Face's: config.json, model.safetensors (or model-0000i-of-0000n.safetensors with an index),
                tokenizer.model when we have one, with tokenizer.json, tokenizer_config.json and
                special_tokens_map.json beside it (hf_tokenizer.py). Loadable by AutoModelForCausalLM and
                AutoTokenizer.from_pretrained.

Inside the package every state dict uses Meta's names and Meta's rotary layout; the two functions
`meta_to_hf_state_dict` / `hf_to_meta_state_dict` are the only place that knows Hugging Face's names and the
q/k row permutation between the two rotary layouts. Every write goes to a temporary folder that is renamed into
place at the end, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .model import ModelArgs, Transformer, ffn_hidden_dim, precompute_freqs_cis

META_PARAMS = "params.json"
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"
_SHARD = re.compile(r"consolidated\.(\d+)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as a Llama 2 checkpoint."""


# --- the two rotary layouts -------------------------------------------------------------------------------


def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of wq or wk (n_heads * D, E) so that Hugging Face's rotate-half RoPE, which pairs
    feature j with j + D/2, rotates what Meta's interleaved RoPE rotates as the pair (2j, 2j+1)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of permute_meta_to_hf."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_LAYER_NAMES = {  # Meta's name inside layers.i -> Hugging Face's inside model.layers.i
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _rename(state: dict[str, torch.Tensor], args: ModelArgs, to_hf: bool) -> dict[str, torch.Tensor]:
    top = _TOP_NAMES if to_hf else {hf: meta for meta, hf in _TOP_NAMES.items()}
    layer = _LAYER_NAMES if to_hf else {hf: meta for meta, hf in _LAYER_NAMES.items()}
    source, target = ("layers", "model.layers") if to_hf else ("model.layers", "layers")
    permute = permute_meta_to_hf if to_hf else permute_hf_to_meta
    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.kv_heads}
    out = {}
    for key, tensor in state.items():
        if not to_hf and key.endswith("rotary_emb.inv_freq"):  # a rotary cache old exports carry
            continue
        match = re.fullmatch(rf"{re.escape(source)}\.(\d+)\.(.+)", key)
        if key in top:
            out[top[key]] = tensor
        elif match and match.group(2) in layer:
            meta_name = match.group(2) if to_hf else layer[match.group(2)]
            if meta_name in heads:
                tensor = permute(tensor, heads[meta_name])
            out[f"{target}.{match.group(1)}.{layer[match.group(2)]}"] = tensor
        else:
            layout = "a Llama 2 state dict (Meta's names)" if to_hf else "a Hugging Face Llama checkpoint"
            raise CheckpointError(f"unexpected tensor {key!r} in {layout}")
    return out


def meta_to_hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Meta's names and rotary layout -> Hugging Face's."""
    return _rename(state, args, to_hf=True)


def hf_to_meta_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Hugging Face's names and rotary layout -> Meta's."""
    return _rename(state, args, to_hf=False)


# --- configurations ---------------------------------------------------------------------------------------


def ffn_rule_for(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's FFN rule gives `intermediate_size` exactly.

    Prefers Meta's multiple_of=256 with no multiplier (7B, 13B), then other powers of two, then the shortest
    decimal multiplier with the largest power of two (70B: 4096 and 1.3)."""
    if not isinstance(intermediate_size, int) or isinstance(intermediate_size, bool) or intermediate_size < 1:
        raise CheckpointError(f"intermediate_size={intermediate_size!r} must be a positive integer.")
    powers = [m for m in (2**k for k in range(16, -1, -1)) if intermediate_size % m == 0]
    for m in sorted(powers, key=lambda m: (m != 256, -m)):
        if ffn_hidden_dim(dim, m, None) == intermediate_size:
            return m, None
    base = int(2 * (4 * dim) / 3)
    for decimals in range(1, 9):
        scale = 10**decimals
        for m in powers:
            # int(mult * base) must land in (intermediate_size - m, intermediate_size].
            high = (intermediate_size + 1) / base
            mult = math.floor(high * scale) / scale
            for candidate in (mult, mult - 1 / scale, mult + 1 / scale):
                candidate = round(candidate, decimals)
                if candidate > 0 and ffn_hidden_dim(dim, m, candidate) == intermediate_size:
                    return m, candidate
    raise CheckpointError(
        f"No multiple_of / ffn_dim_multiplier reproduces intermediate_size={intermediate_size} for dim={dim} "
        "with Meta's FFN rule; this checkpoint cannot be written as a Meta params.json."
    )


def args_to_hf_config(args: ModelArgs, dtype: torch.dtype = torch.float32) -> dict:
    args.require_vocab()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,  # transformers 4 reads this one, 5 the next
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "initializer_range": 0.02,
        "rope_scaling": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_config_to_args(config: dict) -> ModelArgs:
    if config.get("model_type", "llama") != "llama":
        raise CheckpointError(f"config.json is for model_type={config.get('model_type')!r}, not 'llama'.")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in config:
            raise CheckpointError(f"config.json lacks {key!r}: not a Llama configuration.")
    rope = config.get("rope_parameters") or {}  # transformers 5 nests rope_theta here
    if config.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise CheckpointError("config.json scales RoPE (rope_scaling / rope_type), which Llama 2 does not do.")
    rope_theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        raise CheckpointError("config.json describes biases or an activation other than SiLU: not Llama 2.")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // n_heads):
        raise CheckpointError(f"head_dim={config['head_dim']} differs from hidden_size / heads: unsupported.")
    n_kv = config.get("num_key_value_heads") or n_heads
    multiple_of, multiplier = ffn_rule_for(dim, config["intermediate_size"])
    return ModelArgs(
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else n_kv,
        vocab_size=config["vocab_size"],
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=rope_theta,
        max_seq_len=config.get("max_position_embeddings", 2048),
    )


# --- Meta's model-parallel shards -------------------------------------------------------------------------


def shard_dim(key: str) -> int | None:
    """The axis along which Meta's model parallelism (fairscale) splits a weight; None = replicated.
    ParallelEmbedding splits the embedding width; ColumnParallelLinear (wq, wk, wv, w1, w3, output) its
    output rows; RowParallelLinear (wo, w2) its input columns; norms are copied on every rank."""
    if key == "tok_embeddings.weight":
        return 1
    if key == "output.weight" or key.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")):
        return 0
    if key.endswith(("wo.weight", "w2.weight")):
        return 1
    if key.endswith("norm.weight"):
        return None
    raise CheckpointError(f"unexpected tensor {key!r} in a Meta Llama checkpoint")


def merge_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = [k for k in shards[0] if k != "rope.freqs"]  # Meta saves the rotary table; we recompute it
    for i, shard in enumerate(shards[1:], start=1):
        if sorted(k for k in shard if k != "rope.freqs") != sorted(keys):
            raise CheckpointError(f"shard {i} holds other tensors than shard 0: not one model's shards.")
    merged = {}
    for key in keys:
        dim = shard_dim(key)
        merged[key] = shards[0][key] if dim is None else torch.cat([s[key] for s in shards], dim=dim)
    return merged


def split_shards(state: dict[str, torch.Tensor], args: ModelArgs, num_shards: int) -> list[dict]:
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1.")
    for what, size in (
        ("dim", args.dim),
        ("n_heads", args.n_heads),
        ("n_kv_heads", args.kv_heads),
        ("FFN hidden size", args.hidden_dim),
        ("vocab_size", args.vocab_size),
    ):
        if size % num_shards:
            raise ValueError(f"cannot split into {num_shards} shards: {what}={size} is not divisible by it.")
    shards: list[dict] = [{} for _ in range(num_shards)]
    for key, tensor in state.items():
        dim = shard_dim(key)
        parts = [tensor] * num_shards if dim is None else tensor.chunk(num_shards, dim=dim)
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()  # a view would save the whole storage
    return shards


# --- reading files safely ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors; it is not loaded (weights_only=True) because "
            "unpickling a stranger's file can run arbitrary code."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or foreign): {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors.")
    return state


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or foreign): {err}") from err


def detect_layout(path: str | os.PathLike) -> str:
    """'meta' or 'hf' for a checkpoint folder; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: a checkpoint is a folder (Meta's or Hugging Face's).")
    if (path / META_PARAMS).is_file():
        return "meta"
    if (path / HF_CONFIG).is_file():
        return "hf"
    raise CheckpointError(
        f"{path} is neither a Meta checkpoint (params.json + consolidated.00.pth) nor a Hugging Face one "
        "(config.json + model.safetensors)."
    )


def load_meta_state(path: str | os.PathLike) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    path = Path(path)
    files = sorted(path.glob("consolidated.*.pth"), key=lambda p: int(_SHARD.search(p.name).group(1)))
    if not files:
        raise CheckpointError(f"{path} has params.json but no consolidated.00.pth.")
    numbers = [int(_SHARD.search(p.name).group(1)) for p in files]
    if numbers != list(range(len(files))):
        raise CheckpointError(f"{path} has shards {numbers}; expected consecutive 0..{len(files) - 1}.")
    params = _read_json(path / META_PARAMS)
    state = merge_shards([_torch_load(f) for f in files])
    if "tok_embeddings.weight" not in state:
        raise CheckpointError(f"{path}: the shards have no tok_embeddings.weight: not a Llama checkpoint.")
    if params.get("vocab_size", -1) == -1:  # Meta leaves it to the tokenizer; the embedding knows it
        params["vocab_size"] = state["tok_embeddings.weight"].shape[0]
    return ModelArgs.from_params(params), state


def load_hf_state(path: str | os.PathLike) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    path = Path(path)
    config = _read_json(path / HF_CONFIG)
    args = hf_config_to_args(config)
    if (path / HF_WEIGHTS).is_file():
        state = _safetensors_load(path / HF_WEIGHTS)
    elif (path / HF_INDEX).is_file():
        files = sorted(set(_read_json(path / HF_INDEX).get("weight_map", {}).values()))
        state = {}
        for name in files:
            state.update(_safetensors_load(path / name))
    elif list(path.glob("*.bin")):
        raise CheckpointError(
            f"{path} stores pickled .bin weights; convert them to model.safetensors first (for example with "
            "transformers: model.save_pretrained(dst, safe_serialization=True))."
        )
    else:
        raise CheckpointError(f"{path} has config.json but no model.safetensors.")
    if config.get("tie_word_embeddings") and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return args, hf_to_meta_state_dict(state, args)


def load_state(path: str | os.PathLike) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """(ModelArgs, state dict in Meta's names and rotary layout) from either layout, as stored."""
    return load_meta_state(path) if detect_layout(path) == "meta" else load_hf_state(path)


def model_from_state(
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Transformer:
    """A Transformer holding `state`, built on the meta device so the weights are never allocated twice."""
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            "the weights do not match the configuration: "
            + "; ".join(
                filter(
                    None,
                    [
                        f"missing {missing[:5]}" if missing else "",
                        f"unexpected {unexpected[:5]}" if unexpected else "",
                        f"wrong shapes {wrong[:5]}" if wrong else "",
                    ],
                )
            )
        )
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta).to(device)
    return model


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """A Meta or Hugging Face checkpoint folder -> Transformer (dtype None keeps the stored one)."""
    args, state = load_state(path)
    return model_from_state(args, state, device=device, dtype=dtype)


# --- writing atomically -----------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside dst; on success it replaces dst in one rename, on failure it is
    removed. An existing dst is replaced only with overwrite=True (and kept until the new one is in place)."""
    dst = Path(dst)
    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} already exists and is not empty: choose another folder or overwrite it.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        yield tmp
        backup = None
        if dst.exists():
            backup = dst.parent / f".{dst.name}.old-{os.getpid()}"
            os.replace(dst, backup)
        os.replace(tmp, dst)
        if backup is not None:
            shutil.rmtree(backup) if backup.is_dir() else backup.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_state(
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    dst: str | os.PathLike,
    layout: str = "meta",
    num_shards: int = 1,
    tokenizer_model: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write (args, Meta-named state) as a Meta ('meta') or Hugging Face ('hf') checkpoint folder."""
    if layout not in ("meta", "hf"):
        raise ValueError(f"layout={layout!r}: choose 'meta' or 'hf'.")
    args.require_vocab()
    state = _contiguous({k: v for k, v in state.items() if k != "rope.freqs"})
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        if layout == "meta":
            (tmp / META_PARAMS).write_text(json.dumps(args.to_params(), indent=2) + "\n")
            for rank, shard in enumerate(split_shards(state, args, num_shards)):
                torch.save(shard, tmp / f"consolidated.{rank:02d}.pth")
        else:
            if num_shards != 1:
                raise ValueError("num_shards applies to Meta's layout only.")
            from safetensors.torch import save_file

            dtype = next(iter(state.values())).dtype
            (tmp / HF_CONFIG).write_text(json.dumps(args_to_hf_config(args, dtype), indent=2) + "\n")
            save_file(meta_to_hf_state_dict(state, args), str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        if tokenizer_model is not None:
            shutil.copyfile(tokenizer_model, tmp / TOKENIZER_FILE)
            if layout == "hf":
                _write_hf_tokenizer(tokenizer_model, tmp, args.max_seq_len)
    return Path(dst)


def _write_hf_tokenizer(tokenizer_model: str | os.PathLike, folder: Path, max_seq_len: int) -> None:
    """transformers reads tokenizer.json, not tokenizer.model (which it can mistake for a tiktoken file): a
    Hugging Face folder carries the tokenizer in that format too (hf_tokenizer.py)."""
    from .hf_tokenizer import write_hf_tokenizer

    try:
        write_hf_tokenizer(tokenizer_model, folder, max_seq_len)
    except ValueError as err:
        raise CheckpointError(
            f"cannot write the tokenizer for transformers: {err} A Hugging Face folder needs the SentencePiece "
            "tokenizer.model the model was trained with (or leave the tokenizer out)."
        ) from err


def save_checkpoint(
    model: Transformer,
    dst: str | os.PathLike,
    layout: str = "meta",
    num_shards: int = 1,
    tokenizer_model: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    return save_state(model.params, model.state_dict(), dst, layout, num_shards, tokenizer_model, overwrite)


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, overwrite: bool = False
) -> tuple[str, Path]:
    """Convert a checkpoint folder of either layout to `to` ('meta' or 'hf'); returns (source layout, dst).
    The tokenizer.model, when there is one, is copied along."""
    layout = detect_layout(src)
    args, state = load_state(src)
    tokenizer = Path(src) / TOKENIZER_FILE
    save_state(
        args, state, dst, layout=to, tokenizer_model=tokenizer if tokenizer.is_file() else None, overwrite=overwrite
    )
    return layout, Path(dst)
